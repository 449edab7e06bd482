#!/usr/bin/env bash
# usage: threads.sh BROKER_BIN [flags]: W4 pinned run, then the broker's threads' CPU (schedstat ns)
set -u
bin=$1; shift
d=/work/main/target/exp-threads; rm -rf $d; mkdir -p $d
taskset -c 0 $bin --data-dir $d/data --listen 127.0.0.1:5890 --shards 1 --cpus 0 "$@" > $d/broker.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q listening $d/broker.log && break; sleep 0.2; done
taskset -c 1 /work/main/target/release/ruuster-loadgen --driver ruuster --broker-pid $pid --duration-secs 8 --label exp --ruuster-address 127.0.0.1:5890 --workload W4 ${W:-} --results-dir $d/results 2>&1 | grep -E "^(end_to_end )" &
lg=$!
sleep 6
for t in /proc/$pid/task/*; do echo "$(cat $t/comm) $(awk '{printf "%.0f ms", $1/1e6}' $t/schedstat) nvcsw=$(grep nonvoluntary_ctxt_switches $t/status | awk '{print $2}')"; done | sort | uniq -c | sort -rn | head -20
wait $lg
kill -TERM $pid; wait $pid
