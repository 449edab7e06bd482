import re,sys
# Journal writes (WRITE_FIXED) in flight at each submission, itself included.
sub={}; inflight=0; counts=[]
for line in open(sys.argv[1]):
    m=re.search(r'io_uring_submit_req: ring \S+, req (\S+), user_data \S+, opcode WRITE_FIXED,',line)
    if m:
        sub[m.group(1)]=1; inflight+=1; counts.append(inflight); continue
    m=re.search(r'io_uring_complete: ring \S+, req (\S+),',line)
    if m and m.group(1) in sub:
        del sub[m.group(1)]; inflight-=1
print('journal writes',len(counts),'mean in flight at submit',round(sum(counts)/max(1,len(counts)),2),'share with 1',round(sum(1 for c in counts if c==1)/max(1,len(counts)),2))
