#!/usr/bin/env bash
# The long run of the broker-level crash test (broker/tests/crash): N kill cycles (default 200)
# of the real ruuster binary under publishers with fsynced confirms and consumers with acks, then
# the negative control (a broker that confirms before appending, which the checker must catch).
# Writes report.txt under bench-results/<date>-broker-crash-soak/ with the revision, command,
# machine, load and the checker's figures.
# Usage: scripts/broker-crash-soak.sh [cycles] [seed]
#   RUUSTER_BROKER_CRASH_CYCLES and RUUSTER_BROKER_CRASH_SEED are honoured when no argument is given.
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-${RUUSTER_BROKER_CRASH_CYCLES:-200}}"
seed="${2:-${RUUSTER_BROKER_CRASH_SEED:-$(date +%s%N)}}"
out="bench-results/$(date -u +%Y-%m-%d)-broker-crash-soak"
mkdir -p "$out"
report="$out/report.txt"
command="RUUSTER_BROKER_CRASH_CYCLES=$cycles RUUSTER_BROKER_CRASH_SEED=$seed cargo test --release -p ruuster-broker --test crash -- --nocapture --test-threads=1"
cargo build --release -p ruuster-broker --tests --bins >/dev/null 2>&1
{
    echo "command: $command"
    echo "git_revision: $(git rev-parse HEAD)$(git diff --quiet HEAD -- broker segment-store wire client || echo ' (with uncommitted changes)')"
    echo "machine: $(uname -a)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
    echo "disk: $(lsblk -d -o NAME,MODEL,SIZE,ROTA,LOG-SEC,PHY-SEC | tr -s ' ' | tr '\n' ';')"
    echo "filesystem: $(stat -f -c %T target)"
    echo "uptime_before: $(uptime)"
    start=$(date +%s)
    RUUSTER_BROKER_CRASH_CYCLES=$cycles RUUSTER_BROKER_CRASH_SEED=$seed \
        cargo test --release -p ruuster-broker --test crash -- --nocapture --test-threads=1 2>&1 |
        grep -E '^broker-crash|^  [a-z]|^test |^test result|panicked|^no log line' || true
    echo "elapsed_s: $(($(date +%s) - start))"
    echo "uptime_after: $(uptime)"
} | tee "$report"
