# shellcheck shell=bash
# Shared helpers for the ops/ scripts. Source it; do not execute it.
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Root's daemons live in /usr/sbin; CI shells sometimes drop it from PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
export PATH

_OPS_T0=${_OPS_T0:-$(date +%s.%N)}

# etcd defaults, shared by setup.sh and stop-etcd.sh so they always agree.
: "${BAI_ETCD_DATA:=/var/lib/backend-ai/etcd}"
: "${BAI_ETCD_LOG:=/var/log/backend-ai-etcd.log}"
: "${BAI_ETCD_PIDFILE:=/run/backend-ai-etcd.pid}"
: "${BAI_ETCD_PORT:=2379}"
: "${BAI_ETCD_PEER_PORT:=2380}"

_ops_elapsed() {
    awk -v a="$_OPS_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1fs", b - a }'
}

# log MSG...   -> "[setup  12.3s] MSG" on stdout
log()  { printf '[%s %s] %s\n' "${OPS_TAG:-ops}" "$(_ops_elapsed)" "$*"; }
warn() { printf '[%s %s] WARNING: %s\n' "${OPS_TAG:-ops}" "$(_ops_elapsed)" "$*" >&2; }
die()  { printf '[%s %s] ERROR: %s\n' "${OPS_TAG:-ops}" "$(_ops_elapsed)" "$*" >&2; exit 1; }

# have CMD -> true if CMD is on PATH
have() { command -v "$1" >/dev/null 2>&1; }

# port_open PORT [HOST] -> true if a TCP connect succeeds within 1 s
port_open() {
    local port=$1 host=${2:-127.0.0.1}
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

# wait_port NAME PORT [TIMEOUT_S] [LOGFILE] [HOST]
# Polls until the port accepts connections; dies naming the service and its
# log file otherwise.
wait_port() {
    local name=$1 port=$2 timeout_s=${3:-60} logfile=${4:-} host=${5:-127.0.0.1}
    local deadline=$((SECONDS + timeout_s))
    until port_open "$port" "$host"; do
        if ((SECONDS >= deadline)); then
            die "$name did not answer on $host:$port within ${timeout_s}s${logfile:+ (see $logfile)}"
        fi
        sleep 0.5
    done
}

# wait_cmd NAME TIMEOUT_S LOGFILE CMD... -> retry CMD until it succeeds
wait_cmd() {
    local name=$1 timeout_s=$2 logfile=$3; shift 3
    local deadline=$((SECONDS + timeout_s))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "$name not ready within ${timeout_s}s (check: $*)${logfile:+ (see $logfile)}"
        fi
        sleep 0.5
    done
}
