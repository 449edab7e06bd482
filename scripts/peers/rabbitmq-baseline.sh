#!/usr/bin/env bash
# Runs the RabbitMQ baseline set with ruuster-loadgen against a scratch broker started by
# rabbitmq.sh, one results folder per run under bench-results/. The machine is shared, so each
# run first waits (bounded) for the 1-minute load average to fall, and every report records the
# load it actually ran under.
#
# Usage: scripts/peers/rabbitmq-baseline.sh default|pinned [RUN...]
#   default  broker and loadgen float over all CPUs
#   pinned   broker on CPU 0 (taskset), loadgen on CPU 1
#   RUN      any of: w1-confirms w1-noconfirm-autoack w2-classic w2-quorum w4-written
#            w4-noconfirm-autoack w4-fsynced (default: all). The reference's transient W1 and W4
#            figures were measured without confirms and with autoack: the -noconfirm-autoack runs.
# Environment: DURATION_S (default 12), LOAD_BELOW (default 1.5), LOAD_WAIT_S (default 90),
#              OVERWRITE=1 to replace folders of the same date and label, LABEL_SUFFIX
#              (e.g. -r2) to keep a repeat beside an earlier run.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
placement="${1:?usage: rabbitmq-baseline.sh default|pinned [RUN...]}"
shift
runs=("$@")
if ((${#runs[@]} == 0)); then
    runs=(w1-confirms w1-noconfirm-autoack w2-classic w2-quorum w4-written w4-noconfirm-autoack
        w4-fsynced)
fi
duration_s="${DURATION_S:-12}"
load_below="${LOAD_BELOW:-1.5}"
load_wait_s="${LOAD_WAIT_S:-90}"
loadgen="$repo_root/target/release/ruuster-loadgen"

case "$placement" in
    default) broker_cpus="" ; launcher=() ;;
    pinned) broker_cpus=0 ; launcher=(taskset -c 1) ;;
    *) echo "placement must be default or pinned" >&2; exit 2 ;;
esac

cargo build --release -p ruuster-loadgen
scripts/peers/rabbitmq.sh stop
pid="$(BROKER_CPUS="$broker_cpus" scripts/peers/rabbitmq.sh start | tail -n 1)"
trap 'scripts/peers/rabbitmq.sh stop' EXIT

log() { printf 'rabbitmq-baseline.sh: %s\n' "$*" >&2; }
# shellcheck source=../lib.sh
source "$repo_root/scripts/lib.sh"

run() {
    local name="$1"
    shift
    wait_for_quiet "$load_below" "$load_wait_s" 5
    echo "== $name ($placement), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    local extra=()
    [[ "${OVERWRITE:-0}" == 1 ]] && extra=(--overwrite)
    "${launcher[@]}" "$loadgen" --driver amqp --broker-pid "$pid" --duration-secs "$duration_s" \
        --label "rabbitmq-$name-$placement${LABEL_SUFFIX:-}" "${extra[@]}" "$@" \
        || echo "run $name exited $?" >&2
}

for name in "${runs[@]}"; do
    case "$name" in
        w1-confirms) run "$name" --workload W1 ;;
        w1-noconfirm-autoack) run "$name" --workload W1 --no-confirms --ack auto ;;
        w2-classic) run "$name" --workload W2 ;;
        w2-quorum) run "$name" --workload W2 --amqp-queue-type quorum ;;
        w4-written) run "$name" --workload W4 ;;
        w4-noconfirm-autoack) run "$name" --workload W4 --no-confirms --ack auto ;;
        w4-fsynced) run "$name" --workload W4 --durability fsynced ;;
        *) echo "unknown run $name" >&2; exit 2 ;;
    esac
done
