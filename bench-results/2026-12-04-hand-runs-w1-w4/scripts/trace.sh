#!/usr/bin/env bash
set -u
label=$1; bin=$2; shift 2
dir=/work/main/target/exp/$label
rm -rf "$dir"; mkdir -p "$dir"
"$bin" --data-dir "$dir/data" --listen 127.0.0.1:5890 --shards 2 ${BFLAGS:-} >"$dir/broker.log" 2>&1 &
pid=$!
for i in $(seq 100); do grep -q 'server: listening' "$dir/broker.log" && break; sleep 0.1; done
/work/main/target/release/ruuster-loadgen --driver ruuster --broker-pid $pid --ruuster-address 127.0.0.1:5890 \
  --duration-secs 6 --label "exp-$label" --overwrite --results-dir "$dir/out" "$@" > "$dir/loadgen.out" 2>&1 &
lg=$!
sleep 2
perf record -a -e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e io_uring:io_uring_queue_async_work -e block:block_rq_issue -e block:block_rq_complete -o "$dir/trace.data" -- sleep 2 2>/dev/null >/dev/null
wait $lg
kill -TERM $pid; wait $pid
perf script -i "$dir/trace.data" > "$dir/trace.txt" 2>/dev/null
wc -l "$dir/trace.txt"
