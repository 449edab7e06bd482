import re,sys,bisect
sub={}; ev=[]
for line in open(sys.argv[1]):
    m=re.match(r'\s*(\S+)\s+\d+\s+\[\d+\]\s+(\d+\.\d+):\s+io_uring:io_uring_(submit_req|complete): ring \S+, req (\S+), user_data \S+, (?:opcode (\S+),|result (-?\d+))',line)
    if not m: continue
    comm,t,kind,req,op,res=m.groups(); t=float(t)
    if kind=='submit_req':
        sub[req]=op; ev.append((t,'S',op))
    else:
        op=sub.pop(req,None)
        if op: ev.append((t,'C',op))
ev.sort()
def times(k,op): return [t for t,kk,o in ev if kk==k and o==op]
jc=times('C','WRITE_FIXED'); js=times('S','WRITE_FIXED')
ws=times('S','WRITE'); pc=times('C','POLL_ADD'); wc=times('C','WRITE')
def gaps(a,b):
    out=[]
    for x in a:
        i=bisect.bisect_right(b,x)
        if i<len(b): out.append((b[i]-x)*1e6)
    return out
def pct(v,p): v=sorted(v); return round(v[min(len(v)-1,int(len(v)*p))]) if v else None
def show(name,v): print(f"{name}: n={len(v)} p50 {pct(v,.5)} p90 {pct(v,.9)} p99 {pct(v,.99)} p99.9 {pct(v,.999)}")
show('journal write complete -> next socket WRITE submit', gaps(jc,ws))
show('socket readable (POLL_ADD complete) -> next journal write submit', gaps(pc,js))
# socket write durations
sd={}
