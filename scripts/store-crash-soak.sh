#!/usr/bin/env bash
# The long SIGKILL crash run of the segment store: N cycles (default 200) of a child appending with
# fsync always, killed after at least 1,000 confirmations each; then the power-loss variant on an
# ext4 loop device. Writes crash-soak.txt under bench-results/<date>-segment-store/.
# Usage: scripts/store-crash-soak.sh [sigkill-cycles] [power-loss-cycles]
set -euo pipefail
ulimit -l unlimited 2>/dev/null || echo "note: memlock stays at $(ulimit -l) KiB (ulimit -l not raisable here)"
cd "$(dirname "$0")/.."
cycles="${1:-200}"
power_cycles="${2:-20}"
out="bench-results/$(date -u +%Y-%m-%d)-segment-store"
mkdir -p "$out"
report="$out/crash-soak.txt"
command="RUUSTER_CRASH_CYCLES=$cycles RUUSTER_POWER_CYCLES=$power_cycles cargo test --release -p ruuster-segment-store --test crash -- --nocapture --test-threads=1"
{
    echo "command: $command"
    echo "git_revision: $(git rev-parse HEAD)"
    echo "machine: $(uname -a)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo) x $(nproc)"
    echo "disk: $(lsblk -d -o NAME,MODEL,SIZE,ROTA,LOG-SEC,PHY-SEC | tr '\n' ';')"
    echo "uptime_before: $(uptime)"
    start=$(date +%s)
    RUUSTER_CRASH_CYCLES=$cycles RUUSTER_POWER_CYCLES=$power_cycles cargo test --release -p ruuster-segment-store --test crash -- \
        --nocapture --test-threads=1 2>&1 | grep -E '^(crash|power-loss)[: ]|^test |test result'
    echo "elapsed_s: $(( $(date +%s) - start ))"
    echo "uptime_after: $(uptime)"
} | tee "$report"
