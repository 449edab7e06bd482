import re,sys,collections
ts=collections.defaultdict(list)
for line in open(sys.argv[1]):
    m=re.match(r'\s*(shard-\d)\s+\d+\s+\[\d+\]\s+(\d+\.\d+):\s+io_uring:io_uring_submit_req:.*opcode TIMEOUT',line)
    if m: ts[m.group(1)].append(float(m.group(2)))
def pct(v,p): v=sorted(v); return round(v[int(len(v)*p)]) if v else None
for k,v in ts.items():
    g=[(b-a)*1e6 for a,b in zip(v,v[1:])]
    print(k,len(v),'timeout-submit interval p50',pct(g,.5),'p90',pct(g,.9),'p99',pct(g,.99),'max',round(max(g)))
