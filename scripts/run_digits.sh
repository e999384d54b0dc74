#!/usr/bin/env bash
# Digits suite: source-only, DANN, ADDA on M->U, U->M, S->M, M->MM (3 seeds), then a table.
#   bash scripts/run_digits.sh                       # everything whose data is under data/
#   TASKS="m2u" METHODS="dann" SEEDS=0 bash scripts/run_digits.sh
# With no real digit data on disk it explains how to get it and runs the embedded
# optdigits -> optdigits-M task instead, so the script works on any machine.
SUITE=digits
CONFIG_DIR=configs/digits
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"source_only dann adda"}

has_data() {  # task -> 0 when every dataset it needs has files under data/
    local dirs
    case $1 in
        m2u|u2m) dirs="data/mnist data/usps" ;;
        s2m) dirs="data/svhn data/mnist" ;;
        m2mm) dirs="data/mnist data/mnist_m" ;;
        *) return 0 ;;
    esac
    for d in $dirs; do [ -n "$(ls -A "$d" 2>/dev/null)" ] || return 1; done
}

if [ -z "${TASKS:-}" ]; then
    TASKS=""
    for task in m2u u2m s2m m2mm; do has_data "$task" && TASKS="$TASKS $task"; done
    if [ -z "$TASKS" ]; then
        cat <<'MSG'
No real digit data under data/ (data/mnist, data/usps, data/svhn, data/mnist_m).
  Get it with checksums: add --opt data.source.download=true data.target.download=true (MNIST, USPS,
  SVHN) or place the files as described in README "Digits suite"; MNIST-M is a manual download.
Running the embedded optdigits -> optdigits-M task instead.
MSG
        TASKS=optdigits
        TABLE_SUITE=optdigits
    fi
fi
run_suite
