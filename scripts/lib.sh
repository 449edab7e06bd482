# Shell helpers shared by the benchmark and peer-broker scripts; source it, then define `log`.

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits at most $2 seconds for the 1-minute load average to fall below $1, polling every $3
# seconds; then goes on either way, and says so when the load stayed high. The machine is shared,
# so a benchmark run waits for it to be quiet but is never blocked by it.
wait_for_quiet() {
    local limit="$1" wait_s="$2" poll_s="$3"
    local deadline=$((SECONDS + wait_s))
    while ((SECONDS < deadline)); do
        if awk -v limit="$limit" '{ exit !($1 < limit) }' /proc/loadavg; then
            return 0
        fi
        sleep "$poll_s"
    done
    log "load still $(cut -d' ' -f1 /proc/loadavg) after ${wait_s}s; running anyway"
}

# Sends SIGTERM to pid $1 and waits at most $2 seconds for it to exit, then sends SIGKILL.
stop_pid() {
    local pid="$1" timeout_s="$2"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout_s))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "pid $pid still alive ${timeout_s}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
}
