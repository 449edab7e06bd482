import re,sys
# Journal writes (WRITE_FIXED): time from io_uring submission to completion, in µs.
sub={}; lat=[]
for line in open(sys.argv[1]):
    m=re.match(r'\s*\S+\s+\d+\s+\[\d+\]\s+(\d+\.\d+):\s+io_uring:io_uring_(submit_req|complete): ring \S+, req (\S+),(.*)',line)
    if not m: continue
    t,kind,req,rest=float(m.group(1)),m.group(2),m.group(3),m.group(4)
    if kind=='submit_req':
        if 'opcode WRITE_FIXED,' in rest: sub[req]=t
    elif req in sub: lat.append((t-sub.pop(req))*1e6)
lat.sort(); q=lambda p: round(lat[int(len(lat)*p)])
print('journal write submit->complete: n',len(lat),'p50',q(.5),'p90',q(.9),'p99',q(.99))
