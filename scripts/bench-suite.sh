#!/usr/bin/env bash
# Runs the standard workloads of ruuster-loadgen (W1..W6, issue 6) against Ruuster and RabbitMQ
# back to back, in two labelled CPU placements, and writes a side-by-side table.
#
#   default  Ruuster with 2 shards (pinned by the broker to the CPUs it may use, as it always
#            does); RabbitMQ and the loadgen unrestricted.
#   pinned   Ruuster with 1 shard on CPU 0 (`taskset -c 0 ruuster --shards 1 --cpus 0`), RabbitMQ
#            under `taskset -c 0`, the loadgen under `taskset -c 1`.
#
# Within a placement the Ruuster runs come first, each on a fresh broker in a scratch data
# directory under target/ (ext4), stopped by its PID (SIGTERM, then a bounded wait); then one
# scratch RabbitMQ (scripts/peers/rabbitmq.sh) serves that placement's RabbitMQ runs, so neither
# broker idles beside the other's runs. Before each run the script waits (bounded) for the
# 1-minute load average to fall, and records the load it ran under.
#
# Each run writes bench-results/<date>-suite<SUITE_TAG>-<system>-<run>-<placement>/ (the
# loadgen's report.json, .hgrm files and plot). The suite writes
# bench-results/<date>-suite<SUITE_TAG>/: runs.tsv (every run, its folder and exit status),
# suite.txt (the parameters) and README.md (the tables, from scripts/bench-suite-table.py).
#
# Runs: w1, w2 (Ruuster fsynced; RabbitMQ durable classic queue, persistent messages),
# w2-quorum (RabbitMQ only, compared with Ruuster's w2), w3, w4-written, w4-fsynced, w5, w6.
#
# Usage: scripts/bench-suite.sh
# Environment:
#   WORKLOADS     which runs, by workload or run name (default "W1 W2 W3 W4 W5 W6"; W2 means w2
#                 and w2-quorum, W4 means w4-written and w4-fsynced)
#   PLACEMENTS    "default pinned" (default), or either one
#   SYSTEMS       "ruuster rabbitmq" (default), or either one
#   DURATION_S    seconds of publishing per run (default 10)
#   LOAD_BELOW    1-minute load average to wait for before each run (default 1.5)
#   LOAD_WAIT_S   longest wait for it, then the run goes ahead and says so (default 30)
#   SUITE_TAG     appended to the folder names, e.g. "-trial" (default empty)
#   SUITE_NOTE    a sentence for the top of the README (e.g. why figures may be noisy)
#   OVERWRITE=1   replace folders of the same date and names
#   RUUSTER_PORT  Ruuster client port (default 5790; shard ports follow it)
#   AMQP_PORT     RabbitMQ port (default 5672)
#   BROKER_START_TIMEOUT_S  how long a Ruuster start may take (default 60); a broker that does
#                 not log `listening` by then is stopped, its log kept in the suite folder, and
#                 the run recorded as broker-start-failed
# A whole suite is 15 runs per placement, each DURATION_S plus a few seconds of set-up and drain
# and up to LOAD_WAIT_S of waiting: with DURATION_S=5 LOAD_WAIT_S=10 on a loaded machine (every
# wait ran out) it took 8.5 minutes; at the defaults, at most about 22.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

workloads="${WORKLOADS:-W1 W2 W3 W4 W5 W6}"
placements="${PLACEMENTS:-default pinned}"
systems="${SYSTEMS:-ruuster rabbitmq}"
duration_s="${DURATION_S:-10}"
load_below="${LOAD_BELOW:-1.5}"
load_wait_s="${LOAD_WAIT_S:-30}"
suite_tag="${SUITE_TAG:-}"
ruuster_port="${RUUSTER_PORT:-5790}"
amqp_port="${AMQP_PORT:-5672}"
broker_start_timeout_s="${BROKER_START_TIMEOUT_S:-60}"
# A killed broker's listening sockets can outlive it while its io_uring finishes the I/O it had in
# flight (seen after a shard stalled in a journal write), so a start first waits this long for
# the ports to be free.
ports_free_wait_s=60
broker_stop_timeout_s=30

loadgen="$repo_root/target/release/ruuster-loadgen"
ruuster="$repo_root/target/release/ruuster"
scratch="$repo_root/target/bench-suite"
suite_date="$(date -u +%F)"
suite_dir="bench-results/$suite_date-suite$suite_tag"
runs_file="$suite_dir/runs.tsv"

log() { printf 'bench-suite.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }
# shellcheck source=lib.sh
source "$repo_root/scripts/lib.sh"

runs=()
for token in $workloads; do
    case "${token,,}" in
        w1 | w3 | w5 | w6 | w2-quorum | w4-written | w4-fsynced) runs+=("${token,,}") ;;
        w2) runs+=(w2 w2-quorum) ;;
        w4) runs+=(w4-written w4-fsynced) ;;
        *) die "unknown workload or run '$token' in WORKLOADS" ;;
    esac
done
for placement in $placements; do
    [[ "$placement" == default || "$placement" == pinned ]] \
        || die "unknown placement '$placement' in PLACEMENTS"
done
for system in $systems; do
    [[ "$system" == ruuster || "$system" == rabbitmq ]] || die "unknown system '$system'"
done
[[ "$duration_s" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "DURATION_S must be a number of seconds"

# Loadgen flags of each run, per system; empty when the system has no such run.
ruuster_flags() {
    case "$1" in
        w1) echo "--workload W1" ;;
        w2) echo "--workload W2" ;;
        w2-quorum) echo "" ;;
        w3) echo "--workload W3" ;;
        w4-written) echo "--workload W4" ;;
        w4-fsynced) echo "--workload W4 --durability fsynced" ;;
        w5) echo "--workload W5" ;;
        w6) echo "--workload W6" ;;
    esac
}
rabbitmq_flags() {
    case "$1" in
        w2-quorum) echo "--workload W2 --amqp-queue-type quorum" ;;
        *) ruuster_flags "$1" ;;
    esac
}

if port_open "$ruuster_port"; then
    die "127.0.0.1:$ruuster_port is taken; stop what holds it or choose RUUSTER_PORT"
fi
if [[ -e "$suite_dir" && "${OVERWRITE:-0}" != 1 ]]; then
    die "$suite_dir exists; set SUITE_TAG or OVERWRITE=1"
fi
overwrite_flag=()
[[ "${OVERWRITE:-0}" == 1 ]] && overwrite_flag=(--overwrite)

# glommio registers its I/O memory as locked memory; the broker sizes it to the limit it finds.
ulimit -l unlimited 2>/dev/null || log "memlock stays at $(ulimit -l) KiB"

log "building release binaries"
cargo build --release -p ruuster-broker -p ruuster-loadgen

mkdir -p "$suite_dir" "$scratch/logs"
printf 'system\tplacement\trun\tfolder\texit_status\tload_average_before\n' >"$runs_file"
{
    printf 'command=WORKLOADS="%s" PLACEMENTS="%s" SYSTEMS="%s" DURATION_S=%s LOAD_BELOW=%s' \
        "$workloads" "$placements" "$systems" "$duration_s" "$load_below"
    printf ' LOAD_WAIT_S=%s SUITE_TAG=%s scripts/bench-suite.sh\n' "$load_wait_s" "$suite_tag"
    printf 'workloads=%s\n' "$workloads"
    printf 'runs=%s\n' "${runs[*]}"
    printf 'placements=%s\n' "$placements"
    printf 'systems=%s\n' "$systems"
    printf 'duration_s=%s\n' "$duration_s"
    printf 'load_below=%s\n' "$load_below"
    printf 'load_wait_s=%s\n' "$load_wait_s"
    printf 'started_utc=%s\n' "$(date -u +%FT%TZ)"
    printf 'git_commit=%s\n' "$(git rev-parse HEAD)"
    printf 'git_dirty=%s\n' "$(git status --porcelain --untracked-files=no | grep -q . \
        && echo true || echo false)"
    printf 'note=%s\n' "${SUITE_NOTE:-}"
} >"$suite_dir/suite.txt"

ruuster_pid=""
rabbitmq_started=0

stop_ruuster() {
    [[ -n "$ruuster_pid" ]] || return 0
    local pid="$ruuster_pid"
    ruuster_pid=""
    stop_pid "$pid" "$broker_stop_timeout_s"
    wait "$pid" 2>/dev/null || true
}

stop_rabbitmq() {
    ((rabbitmq_started)) || return 0
    rabbitmq_started=0
    AMQP_PORT="$amqp_port" scripts/peers/rabbitmq.sh stop || true
}

cleanup() {
    stop_ruuster
    stop_rabbitmq
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# True when no port of a Ruuster with $1 shards accepts connections.
ruuster_ports_free() {
    local port
    for ((port = ruuster_port; port <= ruuster_port + $1; port++)); do
        if port_open "$port"; then
            return 1
        fi
    done
}

# Starts a fresh Ruuster for one run and sets ruuster_pid; $1 names the run's scratch folder.
# Ready means the broker logged `listening`, which it does once every shard serves: its ports
# accept connections (into the kernel's backlog) before that.
start_ruuster() {
    local name="$1"
    local run_scratch="$scratch/$name"
    local shard_count launcher=() extra=()
    case "$placement" in
        default) shard_count=2 ;;
        pinned) shard_count=1 ; launcher=(taskset -c 0) ; extra=(--cpus 0) ;;
    esac
    local deadline=$((SECONDS + ports_free_wait_s))
    until ruuster_ports_free "$shard_count"; do
        if ((SECONDS >= deadline)); then
            log "ports from 127.0.0.1:$ruuster_port still taken after ${ports_free_wait_s}s"
            return 1
        fi
        sleep 1
    done
    rm -rf "$run_scratch"
    mkdir -p "$run_scratch"
    "${launcher[@]}" "$ruuster" --data-dir "$run_scratch/data" \
        --listen "127.0.0.1:$ruuster_port" --shards "$shard_count" "${extra[@]}" \
        >"$run_scratch/ruuster.log" 2>&1 </dev/null &
    ruuster_pid=$!
    deadline=$((SECONDS + broker_start_timeout_s))
    until grep -q 'ruuster_broker::server: listening' "$run_scratch/ruuster.log"; do
        if ! kill -0 "$ruuster_pid" 2>/dev/null; then
            wait "$ruuster_pid" 2>/dev/null || true
            ruuster_pid=""
            log "ruuster exited during start; see $run_scratch/ruuster.log"
            cp "$run_scratch/ruuster.log" "$suite_dir/broker-start-failed-$name.log"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "ruuster not ready after ${broker_start_timeout_s}s; its log is kept as" \
                "$suite_dir/broker-start-failed-$name.log"
            stop_ruuster
            cp "$run_scratch/ruuster.log" "$suite_dir/broker-start-failed-$name.log"
            return 1
        fi
        sleep 0.2
    done
}

# Runs the loadgen once and appends the outcome to runs.tsv: $1 system, $2 run, $3 broker pid,
# then the loadgen's workload flags.
run_loadgen() {
    local system="$1" run="$2" pid="$3"
    shift 3
    local label="suite$suite_tag-$system-$run-$placement"
    local driver=ruuster launcher=()
    [[ "$system" == rabbitmq ]] && driver=amqp
    [[ "$placement" == pinned ]] && launcher=(taskset -c 1)
    wait_for_quiet "$load_below" "$load_wait_s" 2
    local load
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    log "== $label (load $load)"
    local output="$scratch/logs/$label.out"
    local status=0
    "${launcher[@]}" "$loadgen" --driver "$driver" --broker-pid "$pid" \
        --duration-secs "$duration_s" --label "$label" "${overwrite_flag[@]}" "$@" \
        >"$output" 2>"$scratch/logs/$label.err" || status=$?
    local folder
    folder="$(sed -n 's/^results: //p' "$output" | tail -n 1)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$system" "$placement" "$run" "${folder:--}" "$status" \
        "$load" >>"$runs_file"
    ((status == 0)) || log "$label exited with status $status; see $output and its .err"
    tail -n +2 "$output" >&2 || true
}

for placement in $placements; do
    for system in $systems; do
        case "$system" in
            ruuster)
                for run in "${runs[@]}"; do
                    flags="$(ruuster_flags "$run")"
                    [[ -n "$flags" ]] || continue
                    if ! start_ruuster "ruuster-$run-$placement"; then
                        printf '%s\t%s\t%s\t-\tbroker-start-failed\t%s\n' "$system" \
                            "$placement" "$run" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$runs_file"
                        continue
                    fi
                    # shellcheck disable=SC2086 # the flags are words on purpose
                    run_loadgen ruuster "$run" "$ruuster_pid" \
                        --ruuster-address "127.0.0.1:$ruuster_port" $flags
                    stop_ruuster
                    # Its journal's preallocated segments take about 200 MB; the log stays.
                    rm -rf "$scratch/ruuster-$run-$placement/data"
                done
                ;;
            rabbitmq)
                cpus=""
                [[ "$placement" == pinned ]] && cpus=0
                AMQP_PORT="$amqp_port" scripts/peers/rabbitmq.sh stop
                rabbitmq_started=1
                if ! rabbitmq_pid="$(AMQP_PORT="$amqp_port" BROKER_CPUS="$cpus" \
                    scripts/peers/rabbitmq.sh start | tail -n 1)"; then
                    rabbitmq_pid=""
                fi
                for run in "${runs[@]}"; do
                    if [[ ! "$rabbitmq_pid" =~ ^[0-9]+$ ]]; then
                        printf '%s\t%s\t%s\t-\tbroker-start-failed\t%s\n' "$system" \
                            "$placement" "$run" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$runs_file"
                        continue
                    fi
                    flags="$(rabbitmq_flags "$run")"
                    # shellcheck disable=SC2086 # the flags are words on purpose
                    run_loadgen rabbitmq "$run" "$rabbitmq_pid" \
                        --amqp-uri "amqp://127.0.0.1:$amqp_port/%2f" $flags
                done
                stop_rabbitmq
                ;;
        esac
    done
done

printf 'finished_utc=%s\n' "$(date -u +%FT%TZ)" >>"$suite_dir/suite.txt"
python3 scripts/bench-suite-table.py "$suite_dir" >"$suite_dir/README.md"
log "wrote $suite_dir/README.md"
