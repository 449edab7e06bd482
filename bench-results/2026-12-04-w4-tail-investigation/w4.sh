#!/usr/bin/env bash
# usage: w4.sh LABEL BROKER_BIN [broker flags...]  -- pinned placement W4 written, 8 s
set -u
label=$1; bin=$2; shift 2
d=/work/main/target/exp-$label; rm -rf $d; mkdir -p $d
taskset -c 0 $bin --data-dir $d/data --listen 127.0.0.1:5890 --shards 1 --cpus 0 "$@" > $d/broker.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q listening $d/broker.log && break; sleep 0.2; done
taskset -c 1 /work/main/target/release/ruuster-loadgen --driver ruuster --broker-pid $pid --duration-secs 8 --label exp --ruuster-address 127.0.0.1:5890 --workload W4 ${W:-} --results-dir $d/results 2>&1 | grep -E "^(throughput|end_to_end |publish_to_confirm )"
kill -TERM $pid; wait $pid
