#!/usr/bin/env bash
# Semi-supervised DA suite (issue #15): "S+T" (source_only with the few-shot target labels in its CE), MME and
# PAC with 1 and 3 labelled target images per class (configs/ssda/), METHODS x TASKS x SEEDS, then Markdown
# tables (final checkpoint; checkpoint chosen on the labelled target validation split) beside the published
# numbers (tools/paper_results.yaml, key ssda).
#   bash scripts/run_ssda.sh                        # Office-31 W->A, D->A if data/office31 holds data, else optdigits
#   TASKS="optdigits_3shot" METHODS="mme" SEEDS=0 bash scripts/run_ssda.sh
#   SMOKE=1 DATA_ROOT=/tmp/tiny_office31 bash scripts/run_ssda.sh   # 3-iteration ResNet-18 runs on a tiny tree
# Office-31 needs the data at DATA_ROOT (data/office31) and data/pretrained/resnet50_imagenet.ckpt (not with
# SMOKE=1); with no Office-31 data on disk the embedded optdigits -> optdigits-M task runs. Other knobs:
# scripts/suite_lib.sh.
SUITE=ssda
CONFIG_DIR=configs/ssda
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"source_only mme pac"}
DATA_ROOT=${DATA_ROOT:-data/office31}
OFFICE_TASKS="w2a_1shot w2a_3shot d2a_1shot d2a_3shot"
if [ -z "${TASKS:-}" ]; then
    if [ -n "$(ls -A "$DATA_ROOT" 2>/dev/null)" ]; then
        TASKS=$OFFICE_TASKS
    else
        echo "No Office-31 data at $DATA_ROOT; running the embedded optdigits -> optdigits-M task instead."
        TASKS="optdigits_1shot optdigits_3shot"
    fi
fi
if [[ " $TASKS " != *optdigits* ]]; then
    image_suite "Office-31" "amazon/ dslr/ webcam/ as <domain>/images/<class>/*.jpg"
elif [ "$SMOKE" = 1 ]; then  # optdigits in seconds: 3 iterations
    EXTRA_OPTS=("${SMOKE_ITERS[@]}")
fi
if [ "$SMOKE" = 1 ]; then  # PAC's rotation pretraining phase shrinks too (a key only PAC's configs have)
    eval "$(declare -f run_one | sed '1s/^run_one/suite_run_one/')"
    run_one() {
        if [ "$1" != pac ]; then suite_run_one "$@"; return; fi
        local saved=("${EXTRA_OPTS[@]}") rc=0
        EXTRA_OPTS+=(method.rot_iters=3 method.rot_images=2)
        suite_run_one "$@" || rc=$?
        EXTRA_OPTS=("${saved[@]}")
        return $rc
    }
fi
run_suite
