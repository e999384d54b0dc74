#!/usr/bin/env bash
# Embedded domain-generalisation benchmark optdigits-DG (issue #17), leave-one-domain-out over four renderings of
# sklearn's digits (grey, inverted, photo, tint): LeNet-BN trained on the other three domains (batches 22 + 21 + 21,
# Adam 1e-3, 1000 iterations), scored on the held-out domain's second half; the oracle trains on that domain's
# first half. Methods: ERM, ERM+OCR, ERM+CrossNorm, ERM+Aug (cross-entropy on the augmented view), ERM+Aug+OCR,
# ERM+Aug+CrossNorm (configs/dg/). Then (ROBUSTNESS=1, the default) FGSM / PGD-10 accuracy of the ERM and ERM+OCR
# models (and the Aug pair) on their target test images (tools/robustness.py).
#   bash scripts/run_dg.sh                       # SEEDS="0 1 2": 7 methods x 4 targets x 3 seeds, runs/dg
#   METHODS="erm erm_ocr" TASKS=optdigits_dg_tint bash scripts/run_dg.sh
#   SMOKE=1 bash scripts/run_dg.sh               # 3 iterations per run: checks the pipeline, numbers meaningless
# PACS (the real-image DG benchmark, same configs shape): scripts/run_pacs.sh.
SUITE=dg
CONFIG_DIR=configs/dg
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"erm erm_ocr erm_cn erm_aug erm_aug_ocr erm_aug_cn oracle"}
TASKS=${TASKS:-"optdigits_dg_grey optdigits_dg_inverted optdigits_dg_photo optdigits_dg_tint"}
TABLE_SUITE=optdigits_dg
ROBUSTNESS=${ROBUSTNESS:-1}
ROBUST_METHODS=${ROBUST_METHODS:-"erm erm_ocr erm_aug erm_aug_ocr"}
ROBUST_OPTS=(--no-corruptions)
if [ "$SMOKE" = 1 ]; then
    OPTS="$OPTS ${SMOKE_ITERS[*]}"
    ROBUST_OPTS+=(--steps 2)
fi
failed=0
run_suite || failed=1
if [ "$ROBUSTNESS" = 1 ]; then
    for task in $TASKS; do for method in $ROBUST_METHODS; do
        [[ " $METHODS " == *" $method "* ]] || continue
        for seed in $SEEDS; do
            out="$RUNS/${method}_$task/seed$seed"
            [ -f "$out/results.json" ] || continue
            if [ -f "$out/robustness.json" ]; then echo "[skip] robustness $method $task seed $seed"; continue; fi
            echo "[robust] $method $task seed $seed -> $out/robustness.json"
            "$PYTHON" tools/robustness.py --config "$out/config.yaml" --ckpt "$out/last.ckpt" --device "$DEVICE" \
                "${ROBUST_OPTS[@]}" > /dev/null || failed=1
        done
    done; done
    tables=("$RUNS"/*/seed*/robustness.json)
    if [ -f "${tables[0]}" ]; then
        "$PYTHON" tools/robustness.py --table "${tables[@]}" --out "$RUNS/table_robustness.md" || failed=1
    fi
fi
exit $failed
