#!/usr/bin/env bash
# optdigits-C test-time adaptation suite (issue #17): train the LeNet-BN source model on grey perm[:899]
# (3 seeds), run source / Norm / Tent / Tent+OCR with tools/tta.py under both protocols, print two tables:
#   episodic   reset between the 20 sets (4 corruptions x 5 severities), as DequanWang/tent's cifar10c.py;
#   continual  the 20 sets as one stream without reset, 10 rounds (the benchmark that can rank Tent variants).
# Then (ROBUSTNESS=1, the default) it trains the same source model with OCR (source_only_ocr_optdigits_c) and
# prints tools/robustness.py's table for both: clean / FGSM / PGD-10 accuracy (eps 8/255) and corruption error.
#   bash scripts/run_tta.sh                 # SEEDS="0 1 2", runs under runs/tta
#   SMOKE=1 bash scripts/run_tta.sh         # 20 iterations, 2 sets, 1 round: checks the pipeline, numbers meaningless
# Finished runs and finished TTA evaluations are skipped (delete their tta_*.json to redo them).
SUITE=tta
CONFIG_DIR=configs/tta
source "$(dirname "$0")/suite_lib.sh"
METHOD=source_only
TASK=optdigits_c
ROUNDS=10
ROBUSTNESS=${ROBUSTNESS:-1}
TTA_OPTS=()
ROBUST_OPTS=()
if [ "$SMOKE" = 1 ]; then
    OPTS="$OPTS train.iters=20 train.log_every=10 train.eval_every=20 train.ckpt_every=20"
    ROUNDS=1
    TTA_OPTS=(--sets gaussian_noise-5 contrast-5)
    ROBUST_OPTS=(--sets contrast-5 --steps 2)
fi
failed=0
for seed in $SEEDS; do
    run_one "$METHOD" "$TASK" "$seed" || { failed=1; continue; }
    out="$RUNS/${METHOD}_$TASK/seed$seed"
    if [ -f "$out/tta_episodic.json" ] && [ -f "$out/tta_continual.json" ]; then
        echo "[skip] tta seed $seed: $out/tta_{episodic,continual}.json"; continue
    fi
    echo "[tta]  seed $seed -> $out/tta_{episodic,continual}.json"
    "$PYTHON" tools/tta.py --config "$out/config.yaml" --ckpt "$out/last.ckpt" --device "$DEVICE" \
        --protocol episodic continual --rounds "$ROUNDS" ${TTA_OPTS[@]+"${TTA_OPTS[@]}"} > /dev/null || failed=1
done
for protocol in episodic continual; do
    "$PYTHON" tools/tta.py --table "$RUNS"/"${METHOD}_$TASK"/seed*/"tta_$protocol.json" \
        --out "$RUNS/table_$protocol.md" || failed=1
done
if [ "$ROBUSTNESS" = 1 ]; then
    for seed in $SEEDS; do
        for method in source_only source_only_ocr; do
            run_one "$method" "$TASK" "$seed" || { failed=1; continue; }
            out="$RUNS/${method}_$TASK/seed$seed"
            if [ -f "$out/robustness.json" ]; then echo "[skip] robustness $method seed $seed"; continue; fi
            echo "[robust] $method seed $seed -> $out/robustness.json"
            "$PYTHON" tools/robustness.py --config "$out/config.yaml" --ckpt "$out/last.ckpt" --device "$DEVICE" \
                ${ROBUST_OPTS[@]+"${ROBUST_OPTS[@]}"} > /dev/null || failed=1
        done
    done
    "$PYTHON" tools/robustness.py --table "$RUNS"/*_"$TASK"/seed*/robustness.json --out "$RUNS/table_robustness.md" \
        || failed=1
fi
exit $failed
