#!/usr/bin/env bash
# Runs the segment-store benchmark (store and fio on the same disk, same run) and writes
# bench.json and bench.log under bench-results/<date>-segment-store/.
# Usage: scripts/store-bench.sh [seconds-per-case]
set -euo pipefail
ulimit -l unlimited 2>/dev/null || echo "note: memlock stays at $(ulimit -l) KiB (ulimit -l not raisable here)"
cd "$(dirname "$0")/.."
command -v fio >/dev/null || { echo "fio is missing: apt-get install -y fio" >&2; exit 1; }
seconds="${1:-4}"
out="bench-results/$(date -u +%Y-%m-%d)-segment-store"
mkdir -p "$out"
cargo build --release -p ruuster-segment-store --example store_bench
./target/release/examples/store_bench "$out" "$seconds" | tee "$out/bench.log"
rm -rf target/bench-scratch
