#!/usr/bin/env bash
set -u
label=$1; bin=$2; shift 2
dir=/work/main/target/exp/$label
rm -rf "$dir"; mkdir -p "$dir"
taskset -c 0 "$bin" --data-dir "$dir/data" --listen 127.0.0.1:5890 --shards 1 --cpus 0 ${BFLAGS:-} >"$dir/broker.log" 2>&1 &
pid=$!
for i in $(seq 100); do grep -q 'server: listening' "$dir/broker.log" && break; sleep 0.1; done
taskset -c 1 /work/main/target/release/ruuster-loadgen --driver ruuster --broker-pid $pid --ruuster-address 127.0.0.1:5890 \
  --duration-secs 8 --label "exp-$label" --overwrite --results-dir "$dir/out" "$@" > "$dir/loadgen.out" 2>&1 &
lg=$!
sleep 2
perf record -F 9999 -C 0 -o "$dir/perf.data" -- sleep 4 2>/dev/null >/dev/null
wait $lg
kill -TERM $pid; wait $pid
perf report -i "$dir/perf.data" --no-children --sort comm,symbol --stdio 2>/dev/null | grep "%" | head -${TOP:-45}
