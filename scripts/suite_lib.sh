# Shared by scripts/run_*.sh: run METHODS x TASKS x SEEDS, skip finished runs, resume half-done
# ones, then print a Markdown table. Expects SUITE, CONFIG_DIR, and defaults for METHODS/TASKS.
# Environment: SEEDS ("0 1 2"), METHODS, TASKS, RUNS (runs/<suite>), OPTS (extra --opt overrides),
# DEVICE (auto|Ascend|GPU|CPU), DISTRIBUTE (number of cards; >1 launches through msrun), PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"0 1 2"}
RUNS=${RUNS:-runs/$SUITE}
DEVICE=${DEVICE:-auto}
DISTRIBUTE=${DISTRIBUTE:-1}
OPTS=${OPTS:-}

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
                --opt "train.seed=$3" "train.output_dir=$out" $OPTS)
    if [ "$DISTRIBUTE" -gt 1 ]; then
        bash scripts/run_distributed.sh "$DISTRIBUTE" "${args[@]}"
    else
        "$PYTHON" train.py "${args[@]}"
    fi
}

run_suite() {
    local failed=0
    for task in $TASKS; do for method in $METHODS; do for seed in $SEEDS; do
        run_one "$method" "$task" "$seed" || failed=1
    done; done; done
    "$PYTHON" tools/make_table.py "$RUNS" --suite "${TABLE_SUITE:-$SUITE}" --tasks $TASKS --methods $METHODS \
        --out "$RUNS/table.md"
    return $failed
}
