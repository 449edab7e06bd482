import re,sys
# Times between batches of io_uring submissions on shard-0 (one batch = one poll_io / flush of the rings).
ts=[]; ops={}
for line in open(sys.argv[1]):
    m=re.match(r'\s*(\S+)\s+\d+\s+\[\d+\]\s+(\d+\.\d+):\s+io_uring:io_uring_submit_req: .*opcode (\S+),',line)
    if not m or m.group(1)!=sys.argv[2]: continue
    t=float(m.group(2)); ts.append(t); ops[m.group(3)]=ops.get(m.group(3),0)+1
batches=[]; last=None
for t in ts:
    if last is None or t-last>5e-6: batches.append(t)
    last=t
g=sorted((b-a)*1e6 for a,b in zip(batches,batches[1:]))
p=lambda q: round(g[int(len(g)*q)])
print('submits',len(ts),'batches',len(batches),'gap p10/p50/p90/p99',p(.1),p(.5),p(.9),p(.99),'ops',ops)
big=[x for x in g if x>40]
q=lambda v,p: round(v[int(len(v)*p)])
print('gaps >40us:',len(big),'p50/p90/p99',q(big,.5),q(big,.9),q(big,.99),'sum s',round(sum(big)/1e6,2))
