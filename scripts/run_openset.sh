#!/usr/bin/env bash
# Category-shift suite (issue #15): open-set (oda), partial (pda) and open-partial (opda) adaptation with the
# class splits of DANCE (Saito et al., NeurIPS 2020), source-only / DANN / DANCE x TASKS x SEEDS, then tables:
# H-score for the open-set tasks (known / unknown accuracy beneath), accuracy for the partial ones.
#   bash scripts/run_openset.sh                                  # Office-31, 6 pairs x oda/pda/opda, 3 seeds
#   TASKS="a2w-oda w2a-opda" METHODS="dance" SEEDS=0 bash scripts/run_openset.sh
#   SMOKE=1 DATA_ROOT=/tmp/tiny_office31 bash scripts/run_openset.sh   # 3-iteration ResNet-18 runs on a tiny tree
# With no Office-31 at DATA_ROOT (data/office31) it says so and runs the embedded optdigits -> optdigits-M splits
# (optdigits-oda: shared 0-5, target-private 6-9; optdigits-pda: source 0-9, target 0-4); SMOKE=1 there trains
# 3 iterations per run. Configs: configs/openset/<method>_<task>.yaml; other knobs: scripts/suite_lib.sh.
SUITE=openset
CONFIG_DIR=configs/openset
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"source_only dann dance"}
DATA_ROOT=${DATA_ROOT:-data/office31}
OFFICE_TASKS=""
for setting in oda pda opda; do
    for pair in a2w a2d d2w d2a w2a w2d; do OFFICE_TASKS="$OFFICE_TASKS $pair-$setting"; done
done

if [ -z "${TASKS:-}" ]; then
    if [ -n "$(ls -A "$DATA_ROOT" 2>/dev/null)" ]; then
        TASKS=$OFFICE_TASKS
    else
        cat <<MSG
No Office-31 at $DATA_ROOT (see README "Office-31 and ImageCLEF-DA"; DATA_ROOT=... points elsewhere).
Running the embedded optdigits -> optdigits-M splits instead (optdigits-oda, optdigits-pda).
MSG
        TASKS="optdigits-oda optdigits-pda"
    fi
fi
if [[ " $TASKS " =~ \ [adw]2 ]]; then  # an Office-31 task: data, weights (and SMOKE's ResNet-18 options)
    image_suite "Office-31" "amazon/ dslr/ webcam/ as <domain>/images/<class>/*.jpg"
elif [ "$SMOKE" = 1 ]; then
    EXTRA_OPTS=("${SMOKE_ITERS[@]}")
fi
run_suite
