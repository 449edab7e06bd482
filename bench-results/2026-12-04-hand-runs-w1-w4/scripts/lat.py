import re,sys,statistics
subs={}; lat=[]; comps=[]; submits=[]
opc={}
for line in open(sys.argv[1]):
    m=re.search(r'\s(\d+\.\d+):\s+io_uring:io_uring_submit_req: ring (\S+), req (\S+), user_data \S+, opcode (\S+),',line)
    if m:
        t=float(m.group(1)); req=m.group(3); op=m.group(4)
        if op in ('WRITE_FIXED','WRITE') and 'shard' in line:
            subs[req]=(t,op); 
        continue
    m=re.search(r'\s(\d+\.\d+):\s+io_uring:io_uring_complete: ring (\S+), req (\S+), user_data \S+, result (-?\d+)',line)
    if m:
        t=float(m.group(1)); req=m.group(3); res=int(m.group(4))
        if req in subs:
            st,op=subs.pop(req)
            if op=='WRITE_FIXED' or res>=4096:
                lat.append((t-st)*1e6); comps.append(t); submits.append(st)
def pct(v,p): v=sorted(v); return round(v[int(len(v)*p)]) if v else None
print('journal writes',len(lat),'submit->complete p50',pct(lat,.5),'p90',pct(lat,.9),'p99',pct(lat,.99))
# gap from a completion to the next submit
submits.sort(); comps.sort()
import bisect
gaps=[]
for c in comps:
    i=bisect.bisect_right(submits,c)
    if i<len(submits): gaps.append((submits[i]-c)*1e6)
print('completion->next write submit p50',pct(gaps,.5),'p90',pct(gaps,.9),'p99',pct(gaps,.99))
# in flight at submit
