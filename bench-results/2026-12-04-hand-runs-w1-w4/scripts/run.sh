#!/usr/bin/env bash
# run.sh LABEL BIN WORKLOAD_FLAGS... : default placement (2 shards), port 5890, DUR seconds.
# Env: BFLAGS extra broker flags, PIN=1 pinned placement (1 shard on CPU 0, loadgen on CPU 1).
set -u
label=$1; bin=$2; shift 2
dur=${DUR:-8}
dir=/work/main/target/exp/$label
rm -rf "$dir"; mkdir -p "$dir"
if [[ "${PIN:-0}" == 1 ]]; then
  taskset -c 0 "$bin" --data-dir "$dir/data" --listen 127.0.0.1:5890 --shards 1 --cpus 0 ${BFLAGS:-} >"$dir/broker.log" 2>&1 &
  lg=(taskset -c 1)
else
  "$bin" --data-dir "$dir/data" --listen 127.0.0.1:5890 --shards 2 ${BFLAGS:-} >"$dir/broker.log" 2>&1 &
  lg=()
fi
pid=$!
for i in $(seq 100); do grep -q 'server: listening' "$dir/broker.log" && break; sleep 0.1; done
"${lg[@]}" /work/main/target/release/ruuster-loadgen --driver ruuster --broker-pid $pid --ruuster-address 127.0.0.1:5890 \
  --duration-secs "$dur" --label "exp-$label" --overwrite --results-dir "$dir/out" "$@" > "$dir/loadgen.out" 2>&1
kill -TERM $pid; wait $pid
python3 - "$dir" "$label" <<'PY'
import json,sys,glob
d=sys.argv[1]
f=glob.glob(d+'/out/**/report.json',recursive=True)
if not f: print(sys.argv[2], 'NO REPORT'); print(open(d+'/loadgen.out').read()[-2000:]); sys.exit()
r=json.load(open(f[0]))['results']
c={x['name']:x['value'] for x in r['broker_counters']}
l=r['latency']
def us(k,p): return round(l[k][p]/1000)
w=[v for k,v in c.items() if k.endswith('stage_written_p50_ns') and v>0]
w99=[v for k,v in c.items() if k.endswith('stage_written_p99_ns') and v>0]
print(f"{sys.argv[2]}: confirm/s {r['confirm_throughput_msgs_per_sec']:.0f} e2e p50/p99 {us('end_to_end','p50_ns')}/{us('end_to_end','p99_ns')} us  p2c p50/p99 {us('publish_to_confirm','p50_ns')}/{us('publish_to_confirm','p99_ns')} written-stage p50 {[round(x/1000) for x in w]} p99 {[round(x/1000) for x in w99]} fsyncs {c.get('journal_fdatasyncs_count')} writes {c.get('journal_writes_count')} brokercpu {r['broker_cpu_percent_of_one_core']:.0f}% lgcpu {r['loadgen_cpu_percent_of_one_core']:.0f}%")
PY
