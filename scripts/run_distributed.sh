#!/usr/bin/env bash
# Data-parallel training of train.py on NUM_CARDS processes (msrun), on one node or several.
#
#   bash scripts/run_distributed.sh NUM_CARDS CONFIG [train.py args...]
#   bash scripts/run_distributed.sh NUM_CARDS --config CONFIG [train.py args...]   (as suite_lib.sh calls it)
#
# e.g. bash scripts/run_distributed.sh 8 configs/digits/dann_optdigits.yaml --opt data.batch_size=8
# data.batch_size is per card and per domain: global batch = batch_size x NUM_CARDS (x train.grad_accum).
# Only rank 0 writes the run dir (logs, metrics, checkpoints); workers' stdout/stderr go to LOG_DIR.
#
# Environment:
#   MASTER_ADDR=127.0.0.1 MASTER_PORT=8118  msrun scheduler; on a cluster: node 0's address, same on every node
#   NODES=1 NODE_RANK=0 LOCAL_CARDS=NUM_CARDS/NODES  multi-node: run the same command on every node
#                                           with its NODE_RANK (0..NODES-1); NUM_CARDS is the total
#   LOG_DIR=runs/msrun_logs                 worker_<rank>.log and scheduler.log (rank_<rank>.log with a rank table)
#   CLUSTER_TIME_OUT=600                    seconds msrun waits for all workers to join
#   RANK_TABLE_FILE=hccl_8p.json            Ascend only: the legacy rank-table launch, no msrun. LOCAL_CARDS
#                                           processes with RANK_ID=RANK_START+i, DEVICE_ID=DEVICE_START+i,
#                                           RANK_SIZE=NUM_CARDS (RANK_START=NODE_RANK*LOCAL_CARDS, DEVICE_START=0)
#   PYTHON=python  MSRUN=<msrun next to PYTHON, else on PATH>
#   DRY_RUN=1                               print the launch command(s) instead of running them
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }
usage="usage: bash scripts/run_distributed.sh NUM_CARDS CONFIG|--config CONFIG [train.py args...]"
is_count() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$((10#$1))" -gt 0 ]; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || die "no card count given; $usage"
NUM_CARDS=$1; shift
is_count "$NUM_CARDS" || die "NUM_CARDS must be a positive integer, got '$NUM_CARDS'; $usage"
NUM_CARDS=$((10#$NUM_CARDS))
[ $# -ge 1 ] || die "no config given; $usage"

# CONFIG [args] -> --config CONFIG [args]; raw train.py args (starting with --) are passed as they are
if [[ "$1" == --* ]]; then
    ARGS=("$@")
else
    ARGS=(--config "$@")
fi
CONFIG=""
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    case "${ARGS[i]}" in
        --config) [ $((i + 1)) -lt ${#ARGS[@]} ] || die "--config needs a path; $usage"; CONFIG=${ARGS[i + 1]} ;;
        --config=*) CONFIG=${ARGS[i]#--config=} ;;
    esac
done
[ -n "$CONFIG" ] || die "no --config among the train.py arguments; $usage"
[ -f "$CONFIG" ] || die "config file not found: $CONFIG"
has_distribute=0
for arg in "${ARGS[@]}"; do [ "$arg" = "--distribute" ] && has_distribute=1; done
[ $has_distribute = 1 ] || ARGS+=(--distribute)

NODES=${NODES:-1}; NODE_RANK=${NODE_RANK:-0}
is_count "$NODES" || die "NODES must be a positive integer, got '$NODES'"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NODES" ] || die "NODE_RANK must be 0..$((NODES - 1)), got '$NODE_RANK'"
if [ -z "${LOCAL_CARDS:-}" ]; then
    [ $((NUM_CARDS % NODES)) -eq 0 ] || die "NUM_CARDS=$NUM_CARDS is not a multiple of NODES=$NODES; set LOCAL_CARDS"
    LOCAL_CARDS=$((NUM_CARDS / NODES))
fi
is_count "$LOCAL_CARDS" && [ "$LOCAL_CARDS" -le "$NUM_CARDS" ] \
    || die "LOCAL_CARDS must be 1..$NUM_CARDS, got '$LOCAL_CARDS'"
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-8118}
[[ "$MASTER_PORT" =~ ^[0-9]+$ ]] && [ "$MASTER_PORT" -ge 1024 ] && [ "$MASTER_PORT" -le 65535 ] \
    || die "MASTER_PORT must be a port number 1024..65535, got '$MASTER_PORT'"
LOG_DIR=${LOG_DIR:-runs/msrun_logs}

PYTHON=${PYTHON:-python}
PYBIN=$(command -v "$PYTHON" || true)
[ -n "$PYBIN" ] || die "python interpreter not found: $PYTHON (set PYTHON)"
PYDIR=$(dirname "$PYBIN")

run() {  # print under DRY_RUN, else run
    if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [ -n "${RANK_TABLE_FILE:-}" ]; then
    # Ascend rank-table launch (HCCL reads the table; msrun's --rank_table_file does not replace it in 2.8)
    [ -f "$RANK_TABLE_FILE" ] || die "RANK_TABLE_FILE not found: $RANK_TABLE_FILE"
    RANK_START=${RANK_START:-$((NODE_RANK * LOCAL_CARDS))}; DEVICE_START=${DEVICE_START:-0}
    [ -n "${DRY_RUN:-}" ] || mkdir -p "$LOG_DIR"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
    for ((i = 0; i < LOCAL_CARDS; i++)); do
        rank=$((RANK_START + i))
        if [ -n "${DRY_RUN:-}" ]; then
            echo -n "RANK_TABLE_FILE=$RANK_TABLE_FILE RANK_ID=$rank DEVICE_ID=$((DEVICE_START + i)) RANK_SIZE=$NUM_CARDS "
            run "$PYBIN" "$ROOT/train.py" "${ARGS[@]}"
            continue
        fi
        RANK_ID=$rank DEVICE_ID=$((DEVICE_START + i)) RANK_SIZE=$NUM_CARDS \
            "$PYBIN" "$ROOT/train.py" "${ARGS[@]}" >"$LOG_DIR/rank_$rank.log" 2>&1 &
        pids+=($!)
    done
    [ -z "${DRY_RUN:-}" ] || exit 0
    echo "launched ranks $RANK_START..$((RANK_START + LOCAL_CARDS - 1)) of $NUM_CARDS; logs in $LOG_DIR/rank_*.log"
    status=0
    for ((n = 0; n < ${#pids[@]}; n++)); do
        if ! wait -n; then  # one rank failed: the others would wait forever in HCCL
            status=1; kill "${pids[@]}" 2>/dev/null || true
        fi
    done
    [ $status -eq 0 ] || echo "error: a rank failed; see $LOG_DIR/rank_*.log" >&2
    exit $status
fi

MSRUN=${MSRUN:-}
if [ -z "$MSRUN" ]; then
    if [ -x "$PYDIR/msrun" ]; then MSRUN=$PYDIR/msrun; else MSRUN=$(command -v msrun || true); fi
fi
[ -n "$MSRUN" ] || die "msrun not found (it comes with MindSpore >= 2.3); set MSRUN or PYTHON"
# msrun starts each worker as `python` (or `python3`) from PATH: make that PYTHON
launcher=python; [ -x "$PYDIR/python" ] || launcher=python3
export PATH="$PYDIR:$PATH"
run "$MSRUN" --worker_num="$NUM_CARDS" --local_worker_num="$LOCAL_CARDS" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --log_dir="$LOG_DIR" --join=True \
    --cluster_time_out="${CLUSTER_TIME_OUT:-600}" "$launcher" "$ROOT/train.py" "${ARGS[@]}"
