# Shared by scripts/run_*.sh: run METHODS x TASKS x SEEDS, skip finished runs, resume half-done
# ones, then print a Markdown table. Expects SUITE, CONFIG_DIR, and defaults for METHODS/TASKS.
# Environment: SEEDS ("0 1 2"), METHODS, TASKS, RUNS (runs/<suite>), OPTS (extra --opt overrides),
# DEVICE (auto|Ascend|GPU|CPU), DISTRIBUTE (number of cards; >1 launches through msrun), PYTHON,
# ANALYZE (1: tools/analyze.py writes tsne/curves/confusion PNGs + analysis.json into every finished run dir),
# ANALYZE_OPTS (extra tools/analyze.py arguments, e.g. "--max-points 1000");
# image-file suites (image_suite below) also DATA_ROOT and SMOKE. Relative paths are from the repo root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then RUNS=${RUNS:-runs/${SUITE}_smoke}; else RUNS=${RUNS:-runs/$SUITE}; fi
DEVICE=${DEVICE:-auto}
DISTRIBUTE=${DISTRIBUTE:-1}
OPTS=${OPTS:-}
ANALYZE=${ANALYZE:-0}
ANALYZE_OPTS=${ANALYZE_OPTS:-}
EXTRA_OPTS=()  # overrides a suite script adds (image_suite); OPTS comes after them and wins

# Image-file suites (Office-31, ImageCLEF-DA) train the ImageNet-pretrained ResNet-50 of
# configs/_base_/models/resnet50_da.yaml on the tree at DATA_ROOT. SMOKE=1 trains instead a random-init
# ResNet-18 at 32 x 32 for 3 iterations on whatever tree DATA_ROOT holds (the tests use it; also a quick check
# of an install): no weights needed, numbers meaningless, runs kept apart in runs/<suite>_smoke.
# A suite may set these two before sourcing this file (PACS: ResNet-18).
PRETRAINED=${SUITE_WEIGHTS:-data/pretrained/resnet50_imagenet.ckpt}
CONVERT_HINT=${SUITE_CONVERT_HINT:-"python tools/convert_torchvision.py resnet50-0676ba61.pth $PRETRAINED"}
SMOKE_ITERS=(train.iters=3 train.log_every=3 train.eval_every=3 train.ckpt_every=3)  # every suite's SMOKE=1 length
SMOKE_OPTS=(model.pretrained=null model.backbone=resnet18 data.resize_size=40 data.image_size=32 data.batch_size=4
            data.source.verify_counts=false data.target.verify_counts=false data.num_workers=1 "${SMOKE_ITERS[@]}")

image_suite() {  # "<dataset name>" "<what goes under DATA_ROOT>" ["<README section>" ["<folder DATA_ROOT must hold>"]]:
    # check data and weights, set EXTRA_OPTS
    if [ -z "$(ls -A "$DATA_ROOT/${4:-}" 2>/dev/null)" ]; then
        local msg="error: $1 not found at $DATA_ROOT: put $2 there (a manual download, see README"
        msg="$msg \"${3:-Office-31 and ImageCLEF-DA}\") or point DATA_ROOT at your copy"
        if [ "$SMOKE" != 1 ]; then
            msg="$msg; the runs also need the ImageNet weights at $PRETRAINED: $CONVERT_HINT"
        fi
        echo "$msg" >&2; exit 1
    fi
    require_weights "ImageNet weights" "$PRETRAINED" "$CONVERT_HINT (torchvision's IMAGENET1K_V1 weights)"
    EXTRA_OPTS=("data.source.root=$DATA_ROOT" "data.target.root=$DATA_ROOT")
    if [ "$SMOKE" = 1 ]; then EXTRA_OPTS+=("${SMOKE_OPTS[@]}"); fi
}

require_weights() {  # "<what>" <path> "<how to make them>": stop unless they exist, SMOKE=1 or OPTS sets model.pretrained
    if [ "$SMOKE" != 1 ] && [[ " $OPTS " != *" model.pretrained="* ]] && [ ! -f "$2" ]; then
        echo "error: $1 not found at $2: $3, or OPTS=\"model.pretrained=null\" for random init" >&2
        exit 1
    fi
}

run_one() {  # method task seed
    local config="$CONFIG_DIR/$1_$2.yaml" out="$RUNS/$1_$2/seed$3"
    if [ ! -f "$config" ]; then
        echo "error: no config $config for method '$1' on task '$2'" >&2; return 1
    fi
    if [ -f "$out/results.json" ]; then
        echo "[skip] $1 $2 seed $3: finished ($out)"; return 0
    fi
    echo "[run]  $1 $2 seed $3 -> $out"
    local args=(--config "$config" --device "$DEVICE" --resume auto --no-progress
                --opt "train.seed=$3" "train.output_dir=$out" ${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"} $OPTS)
    if [ "$DISTRIBUTE" -gt 1 ]; then
        bash scripts/run_distributed.sh "$DISTRIBUTE" "${args[@]}"
    else
        "$PYTHON" train.py "${args[@]}"
    fi
}

analyze_one() {  # method task seed: plots + analysis.json of a finished run that has none yet
    local out="$RUNS/$1_$2/seed$3"
    if [ ! -f "$out/results.json" ]; then return 0; fi
    if [ -f "$out/analysis.json" ]; then
        echo "[analyzed] $1 $2 seed $3: $out/analysis.json exists"; return 0
    fi
    echo "[analyze] $1 $2 seed $3 -> $out"
    "$PYTHON" tools/analyze.py "$out" --device "$DEVICE" $ANALYZE_OPTS
}

run_suite() {
    local failed=0
    for task in $TASKS; do for method in $METHODS; do for seed in $SEEDS; do
        run_one "$method" "$task" "$seed" || failed=1
        if [ "$ANALYZE" = 1 ]; then analyze_one "$method" "$task" "$seed" || failed=1; fi
    done; done; done
    "$PYTHON" tools/make_table.py "$RUNS" --suite "${TABLE_SUITE:-$SUITE}" --tasks $TASKS --methods $METHODS \
        --out "$RUNS/table.md"
    return $failed
}
