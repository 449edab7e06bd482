import re,sys
iss={}; res={}
for line in open(sys.argv[1]):
    m=re.search(r'\s(\d+\.\d+):\s+block:block_rq_issue: \S+ (\S+) (\d+) \(\) (\d+) \+ (\d+)',line)
    if m:
        iss[m.group(4)]=(float(m.group(1)),int(m.group(3)),m.group(2)); continue
    m=re.search(r'\s(\d+\.\d+):\s+block:block_rq_complete: \S+ (\S+) \(\) (\d+) \+ (\d+)',line)
    if m and m.group(3) in iss:
        t,sz,rw=iss.pop(m.group(3))
        if 'W' in rw and sz>0:
            k='1MiB' if sz>=1048576 else ('>=256K' if sz>=262144 else '<256K')
            res.setdefault(k,[]).append((float(m.group(1))-t)*1e6)
def pct(v,p): v=sorted(v); return round(v[int(len(v)*p)]) if v else None
for k,v in res.items(): print(k,len(v),'p50',pct(v,.5),'p90',pct(v,.9),'p99',pct(v,.99))
