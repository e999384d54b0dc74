#!/usr/bin/env bash
# SlimDA suite (issue 13): per task, one SlimDA bank (configs/slimda/slimda_<task>.yaml) and source-only and SymNets
# trained alone at each of WIDTHS, SEEDS seeds each; tools/select_width.py scores every width of each bank (UPEM,
# MFLOPs, accuracy) and picks a width per budget; tools/slimda_table.py prints the table by width.
#   bash scripts/run_slimda.sh                               # Office-31 / ImageCLEF-DA if on disk, else optdigits
#   TASKS=optdigits SEEDS=0 WIDTHS="1.0 0.25" bash scripts/run_slimda.sh
#   SMOKE=1 TASKS=optdigits SEEDS=0 OPTS="train.iters=2" bash scripts/run_slimda.sh   # seconds: plumbing only
# A baseline at width w uses configs/slimda/<baseline>_w<w>_<task>.yaml when it exists (optdigits), else the
# method's own task config (configs/office31|imageclef/<baseline>_<task>.yaml) with the slimmable backbone fixed at
# width w (model.backbone_kwargs.width). Knobs: WIDTHS, BASELINES ("source_only symnets"), BUDGETS (MFLOPs; default
# per task family), and those of scripts/suite_lib.sh (SEEDS, RUNS, OPTS, DEVICE, DISTRIBUTE, PYTHON, SMOKE,
# DATA_ROOT). Image SMOKE runs train the slimmable ResNet-50 from random init at 32 x 32 for 3 iterations.
SUITE=slimda
CONFIG_DIR=configs/slimda
source "$(dirname "$0")/suite_lib.sh"
WIDTHS=${WIDTHS:-"1.0 0.5 0.25 0.125"}
BASELINES=${BASELINES:-"source_only symnets"}
OFFICE_TASKS="a2w d2w w2d a2d d2a w2a"
CLEF_TASKS="i2p p2i i2c c2i c2p p2c"

family() {  # task -> "<config folder> <slimmable backbone> <data root> <default budgets in MFLOPs>"
    case " $OFFICE_TASKS " in *" $1 "*) echo "office31 slim_resnet50 ${DATA_ROOT:-data/office31} 100 500 1500 4200"; return ;; esac
    case " $CLEF_TASKS " in *" $1 "*) echo "imageclef slim_resnet50 ${DATA_ROOT:-data/image_CLEF} 100 500 1500 4200"; return ;; esac
    echo "digits slim_lenet - 0.3 1 2 4"
}

if [ -z "${TASKS:-}" ]; then
    TASKS=""
    [ -n "$(ls -A "${DATA_ROOT:-data/office31}" 2>/dev/null)" ] && TASKS="$TASKS $OFFICE_TASKS"
    [ -n "$(ls -A "${DATA_ROOT:-data/image_CLEF}" 2>/dev/null)" ] && TASKS="$TASKS $CLEF_TASKS"
    if [ -z "$TASKS" ]; then
        echo "No Office-31 (data/office31) or ImageCLEF-DA (data/image_CLEF) on disk; running the embedded optdigits -> optdigits-M task."
        TASKS=optdigits
    fi
fi

train_run() {  # config out seed [extra --opt overrides...]: train unless finished (resumes a half-done run)
    local config=$1 out=$2 seed=$3; shift 3
    if [ ! -f "$config" ]; then echo "error: no config $config" >&2; return 1; fi
    if [ -f "$out/results.json" ]; then echo "[skip] $out: finished"; return 0; fi
    echo "[run]  $config seed $seed -> $out"
    local args=(--config "$config" --device "$DEVICE" --resume auto --no-progress
                --opt "train.seed=$seed" "train.output_dir=$out" "$@" $OPTS)
    if [ "$DISTRIBUTE" -gt 1 ]; then bash scripts/run_distributed.sh "$DISTRIBUTE" "${args[@]}"
    else "$PYTHON" train.py "${args[@]}"; fi
}

failed=0
for task in $TASKS; do
    read -r folder backbone root budgets <<< "$(family "$task")"
    task_opts=()
    if [ "$folder" != digits ]; then
        image_suite "$folder" "the dataset (README \"Office-31 and ImageCLEF-DA\")"
        task_opts=("${EXTRA_OPTS[@]}")
        if [ "$SMOKE" = 1 ]; then task_opts+=(model.backbone=$backbone); fi
    elif [ "$SMOKE" = 1 ]; then
        task_opts=("${SMOKE_ITERS[@]}")
    fi
    for seed in $SEEDS; do
        bank="$RUNS/slimda_$task/seed$seed"
        train_run "$CONFIG_DIR/slimda_$task.yaml" "$bank" "$seed" ${task_opts[@]+"${task_opts[@]}"} || failed=1
        if [ -f "$bank/results.json" ] && [ ! -f "$bank/select_width.json" ]; then
            "$PYTHON" tools/select_width.py "$bank" --device "$DEVICE" --budget-mflops ${BUDGETS:-$budgets} \
                > /dev/null || failed=1
        fi
        for baseline in $BASELINES; do for width in $WIDTHS; do
            config="$CONFIG_DIR/${baseline}_w${width}_$task.yaml"
            extra=()
            if [ ! -f "$config" ]; then
                config="configs/$folder/${baseline}_$task.yaml"
                extra=("model.backbone=$backbone" "model.backbone_kwargs={width: $width}")
            fi
            train_run "$config" "$RUNS/${baseline}_w${width}_$task/seed$seed" "$seed" \
                ${task_opts[@]+"${task_opts[@]}"} ${extra[@]+"${extra[@]}"} || failed=1
        done; done
    done
done
"$PYTHON" tools/slimda_table.py "$RUNS" --task $TASKS --widths $WIDTHS --baselines $BASELINES --out "$RUNS/table.md" || failed=1
exit $failed
