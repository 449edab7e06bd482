#!/usr/bin/env bash
# Runs a scratch RabbitMQ for the loadgen: installed from the OS packages if missing, listening on
# 127.0.0.1 only, with its data, logs, config and Erlang cookie under a scratch directory, and
# stopped by the PID it wrote. It never touches a system RabbitMQ's data: it uses its own node
# name, AMQP port and distribution port, and refuses to start if the AMQP port is already taken.
#
# The Erlang port mapper daemon (epmd) that the node starts, bound to 127.0.0.1, outlives `stop`:
# other Erlang nodes may share it. It holds no broker data.
#
# Usage: scripts/peers/rabbitmq.sh start|stop|status
# Environment:
#   RABBITMQ_SCRATCH   scratch directory (default: <repo>/target/peers/rabbitmq-<port>)
#   AMQP_PORT          AMQP listener port on 127.0.0.1 (default 5672)
#   DIST_PORT          Erlang distribution port on 127.0.0.1 (default AMQP_PORT + 20000)
#   BROKER_CPUS        optional CPU list for taskset, e.g. "0" for the pinned placement
#   START_TIMEOUT_S    how long start waits for the listener (default 90)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
amqp_port="${AMQP_PORT:-5672}"
dist_port="${DIST_PORT:-$((amqp_port + 20000))}"
scratch="${RABBITMQ_SCRATCH:-$repo_root/target/peers/rabbitmq-$amqp_port}"
start_timeout_s="${START_TIMEOUT_S:-90}"
stop_timeout_s=30
node_name="ruuster-loadgen-$amqp_port@localhost"
pid_file="$scratch/rabbitmq.pid"
server_bin=/usr/lib/rabbitmq/bin/rabbitmq-server

log() { printf 'rabbitmq.sh: %s\n' "$*" >&2; }
# shellcheck source=../lib.sh
source "$repo_root/scripts/lib.sh"

running_pid() {
    [[ -s "$pid_file" ]] || return 1
    local pid
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

ensure_installed() {
    [[ -x "$server_bin" ]] && return 0
    log "rabbitmq-server is not installed; installing the OS package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
}

# The Debian package starts a system node on 5672 where an init system allows it. That node would
# take our port and share the default cookie, so stop it when we are about to use its port.
stop_system_node() {
    if [[ "$amqp_port" == 5672 ]] && port_open 5672 && ! running_pid >/dev/null; then
        log "a broker outside this script holds 127.0.0.1:5672; stopping the system rabbitmq"
        if command -v systemctl >/dev/null \
            && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
            systemctl stop rabbitmq-server
        elif command -v service >/dev/null; then
            service rabbitmq-server stop >/dev/null 2>&1 || true
        fi
    fi
}

write_config() {
    mkdir -p "$scratch/mnesia" "$scratch/log" "$scratch/home"
    cat >"$scratch/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$amqp_port
loopback_users = none
log.file.level = warning
log.console = false
CONF
    # Management and every other plugin off: the figures measure the broker, not its plugins.
    printf '[].\n' >"$scratch/enabled_plugins"
}

start() {
    ensure_installed
    if pid="$(running_pid)"; then
        log "already running as pid $pid on 127.0.0.1:$amqp_port"
        return 0
    fi
    stop_system_node
    if port_open "$amqp_port"; then
        log "127.0.0.1:$amqp_port is taken by another process; choose AMQP_PORT"
        return 1
    fi
    write_config

    local launcher=()
    if [[ -n "${BROKER_CPUS:-}" ]]; then
        launcher=(taskset -c "$BROKER_CPUS")
    fi

    # HOME holds the Erlang cookie, so our node never shares one with a system node. epmd and the
    # distribution listener are bound to loopback as well.
    (
        export HOME="$scratch/home"
        export RABBITMQ_NODENAME="$node_name"
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        export RABBITMQ_NODE_PORT="$amqp_port"
        export RABBITMQ_DIST_PORT="$dist_port"
        export RABBITMQ_CONFIG_FILE="$scratch/rabbitmq.conf"
        export RABBITMQ_ENABLED_PLUGINS_FILE="$scratch/enabled_plugins"
        export RABBITMQ_MNESIA_BASE="$scratch/mnesia"
        export RABBITMQ_LOG_BASE="$scratch/log"
        export RABBITMQ_PID_FILE="$pid_file"
        export ERL_EPMD_ADDRESS=127.0.0.1
        export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        cd "$scratch"
        exec setsid "${launcher[@]}" "$server_bin" >"$scratch/log/stdout.log" 2>&1 </dev/null
    ) &

    local deadline=$((SECONDS + start_timeout_s))
    until port_open "$amqp_port"; do
        if ((SECONDS >= deadline)); then
            log "no listener on 127.0.0.1:$amqp_port after ${start_timeout_s}s; see $scratch/log"
            stop || true
            return 1
        fi
        sleep 0.5
    done
    pid="$(running_pid)" || { log "listener is up but $pid_file names no live process"; return 1; }
    log "started pid $pid on 127.0.0.1:$amqp_port (node $node_name, scratch $scratch)"
    printf '%s\n' "$pid"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running (no live pid in $pid_file)"
        rm -f "$pid_file"
        return 0
    fi
    stop_pid "$pid" "$stop_timeout_s"
    rm -f "$pid_file"
    log "stopped pid $pid"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        printf 'running pid %s on 127.0.0.1:%s affinity %s\n' "$pid" "$amqp_port" \
            "$(taskset -cp "$pid" 2>/dev/null | sed 's/.*: //')"
    else
        printf 'stopped\n'
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        printf 'usage: %s start|stop|status\n' "$0" >&2
        exit 2
        ;;
esac
