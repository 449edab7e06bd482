#!/usr/bin/env bash
# Runs the segment-store benchmark (store and fio on the same disk, same run) and writes
# bench.json and bench.log under bench-results/<date>-segment-store/, with load.log: the load
# average every 10 s during the run (other work on the machine skews the figures).
# Usage: scripts/store-bench.sh [seconds-per-case]
set -euo pipefail
ulimit -l unlimited 2>/dev/null || echo "note: memlock stays at $(ulimit -l) KiB (ulimit -l not raisable here)"
cd "$(dirname "$0")/.."
command -v fio >/dev/null || { echo "fio is missing: apt-get install -y fio" >&2; exit 1; }
seconds="${1:-4}"
out="bench-results/$(date -u +%Y-%m-%d)-segment-store"
mkdir -p "$out"
cargo build --release -p ruuster-segment-store --example store_bench
while true; do echo "$(date -u +%H:%M:%S) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 10; done > "$out/load.log" &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
./target/release/examples/store_bench "$out" "$seconds" | tee "$out/bench.log"
rm -rf target/bench-scratch
