#!/usr/bin/env bash
# Bring up everything the Backend.AI Manager (Rust) needs on a Debian 12 box:
#   PostgreSQL :5432, Redis :6379, RabbitMQ :5672, NATS+JetStream :4222,
#   etcd :2379 (peer :2380), protoc, python3 + venv, curl.
#
# Idempotent: installs only missing packages, starts only services whose port
# does not answer, never restarts or reconfigures a service that is running.
# Works without systemd (containers): daemons are started directly.
# Must run as root.  Usage:  bash ops/setup.sh
#
# Environment knobs (defaults in brackets):
#   BAI_DB_NAME [backend]      database to create if missing
#   BAI_DB_USER [postgres]     its owner; the app connects as this user,
#                              without a password, over TCP 127.0.0.1
#   BAI_PG_TRUST [1]           if a passwordless TCP login fails, add a
#                              loopback "trust" block to pg_hba.conf (see below)
#   BAI_ETCD_DATA [/var/lib/backend-ai/etcd]   BAI_ETCD_LOG [/var/log/backend-ai-etcd.log]
#   BAI_ETCD_PIDFILE [/run/backend-ai-etcd.pid] (ops/stop-etcd.sh uses it)
#   BAI_WAIT_TIMEOUT [60]      seconds to wait for each service port
#   BAI_SKIP_INSTALL [0]       1 = never run apt-get (fail if something is missing)
set -euo pipefail

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OPS_TAG=setup
# shellcheck source=ops/lib.sh
. "$OPS_DIR/lib.sh"

: "${BAI_DB_NAME:=backend}"
: "${BAI_DB_USER:=postgres}"
: "${BAI_PG_TRUST:=1}"
: "${BAI_WAIT_TIMEOUT:=60}"
: "${BAI_SKIP_INSTALL:=0}"
PG_PORT=5432 REDIS_PORT=6379 AMQP_PORT=5672 NATS_PORT=4222 NATS_MON_PORT=8222
REDIS_LOG=/var/log/redis/ci.log
NATS_LOG=/var/log/nats-server.log
NATS_PIDFILE=/run/backend-ai-nats.pid

[[ $(id -u) -eq 0 ]] || die "run as root (needs apt-get and starts system daemons)"
[[ $BAI_DB_NAME =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "BAI_DB_NAME must be a plain identifier, got '$BAI_DB_NAME'"
[[ $BAI_DB_USER =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "BAI_DB_USER must be a plain identifier, got '$BAI_DB_USER'"

STARTED=()   # services this run had to start

# ---------------------------------------------------------------------------
# 1. packages
# ---------------------------------------------------------------------------
missing=()
need() { # need PACKAGE CHECK-CMD...
    local pkg=$1; shift
    "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
need postgresql        bash -c 'command -v pg_ctlcluster && command -v psql && command -v pg_isready'
need redis-server      have redis-server
need rabbitmq-server   have rabbitmq-server
need nats-server       have nats-server
need etcd-server       have etcd
need etcd-client       have etcdctl            # etcdctl: handy for debugging and for the smoke test
need protobuf-compiler have protoc
# etcd-client's build imports google/protobuf/*.proto, which only libprotobuf-dev ships
need libprotobuf-dev   test -f /usr/include/google/protobuf/descriptor.proto
need python3           have python3
# the conformance tests build a venv for the official Python client; Debian's
# python3 only gets venv/ensurepip from python3-venv
need python3-venv      python3 -c 'import venv, ensurepip'
need curl              have curl

if ((${#missing[@]} == 0)); then
    log "packages: all present"
else
    ((BAI_SKIP_INSTALL == 0)) || die "missing packages: ${missing[*]} (BAI_SKIP_INSTALL=1)"
    log "packages: installing ${missing[*]}"
    # Without systemd, package maintainer scripts that try to start their
    # daemon fail or hang; we start the daemons ourselves below.  So if there
    # is no policy-rc.d already, forbid service starts for this apt run only.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d && ! -d /run/systemd/system ]]; then
        printf '#!/bin/sh\n# temporary, from backend-ai ops/setup.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_log=/var/log/backend-ai-apt.log
    if ! { apt-get -o DPkg::Lock::Timeout=300 update -q &&
           apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get failed (full log: $apt_log)"
    fi
    if ((made_policy)); then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
    hash -r
    log "packages: installed (log: $apt_log)"
fi

# ---------------------------------------------------------------------------
# 2. start what is not answering (all first, then wait: boots overlap)
# ---------------------------------------------------------------------------

# --- PostgreSQL -------------------------------------------------------------
PG_VER=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1 || true)
PG_LOG=/var/log/postgresql/postgresql-${PG_VER:-X}-main.log
if port_open $PG_PORT; then
    log "postgres: already up on :$PG_PORT"
else
    if [[ -z $PG_VER || ! -d /etc/postgresql/$PG_VER/main ]]; then
        v=$(ls /usr/lib/postgresql | sort -V | tail -1)
        log "postgres: creating cluster $v/main"
        pg_createcluster "$v" main >/dev/null
        PG_VER=$v PG_LOG=/var/log/postgresql/postgresql-$v-main.log
    fi
    log "postgres: starting cluster $PG_VER/main"
    pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main start ||
        die "postgres failed to start (see $PG_LOG)"
    STARTED+=(postgres)
fi

# --- Redis ------------------------------------------------------------------
if port_open $REDIS_PORT; then
    log "redis: already up on :$REDIS_PORT"
else
    log "redis: starting"
    mkdir -p /var/lib/redis /var/log/redis
    # No persistence: this is a scratch instance for dev/CI.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT \
        --save "" --appendonly no --dir /var/lib/redis --logfile "$REDIS_LOG" ||
        die "redis failed to start (see $REDIS_LOG)"
    STARTED+=(redis)
fi

# --- RabbitMQ ---------------------------------------------------------------
if port_open $AMQP_PORT; then
    log "rabbitmq: already up on :$AMQP_PORT"
else
    # The node is named rabbit@<short hostname>; in containers that name often
    # does not resolve and the node cannot boot.  Only in that case pin the node
    # to localhost (never touch an env file that already chooses a NODENAME).
    env_conf=/etc/rabbitmq/rabbitmq-env.conf
    if ! getent hosts "$(hostname -s)" >/dev/null 2>&1 &&
       ! grep -qs '^[[:space:]]*\(RABBITMQ_\)\?NODENAME=' "$env_conf"; then
        log "rabbitmq: hostname does not resolve, pinning NODENAME=rabbit@localhost in $env_conf"
        mkdir -p /etc/rabbitmq
        printf '# added by backend-ai ops/setup.sh\nNODENAME=rabbit@localhost\n' >>"$env_conf"
    fi
    log "rabbitmq: starting"
    mkdir -p /var/log/rabbitmq
    rabbitmq-server -detached >/dev/null 2>&1 || die "rabbitmq failed to start (see /var/log/rabbitmq/)"
    STARTED+=(rabbitmq)
fi

# --- NATS (JetStream) -------------------------------------------------------
if port_open $NATS_PORT; then
    log "nats: already up on :$NATS_PORT"
else
    log "nats: starting with JetStream"
    mkdir -p /var/lib/nats-server
    # -m: monitoring endpoint on 127.0.0.1:8222 (used for the /jsz check)
    start-stop-daemon --start --oknodo --background \
        --make-pidfile --pidfile "$NATS_PIDFILE" --exec "$(command -v nats-server)" -- \
        -a 127.0.0.1 -p $NATS_PORT -m $NATS_MON_PORT -js -sd /var/lib/nats-server -l "$NATS_LOG" ||
        die "nats failed to start (see $NATS_LOG)"
    STARTED+=(nats)
fi

# --- etcd -------------------------------------------------------------------
if port_open "$BAI_ETCD_PORT"; then
    log "etcd: already up on :$BAI_ETCD_PORT"
else
    log "etcd: starting (data $BAI_ETCD_DATA, log $BAI_ETCD_LOG)"
    ETCD_BIN=$(command -v etcd)   # Debian: /usr/bin/etcd
    mkdir -p "$BAI_ETCD_DATA" "$(dirname "$BAI_ETCD_LOG")"
    chmod 700 "$BAI_ETCD_DATA"
    (
        # etcd refuses to start when an ETCD_* variable duplicates a flag
        while read -r v; do unset "$v"; done < <(compgen -e | grep '^ETCD_' || true)
        # etcd 3.4 needs this opt-in on non-amd64 (e.g. arm64 runners)
        arch=$(dpkg --print-architecture)
        [[ $arch == amd64 ]] || export ETCD_UNSUPPORTED_ARCH=$arch
        c=http://127.0.0.1:$BAI_ETCD_PORT p=http://127.0.0.1:$BAI_ETCD_PEER_PORT
        # --initial-cluster* only matter on the first boot of an empty data dir
        exec start-stop-daemon --start --oknodo --background \
            --make-pidfile --pidfile "$BAI_ETCD_PIDFILE" \
            --output "$BAI_ETCD_LOG" --exec "$ETCD_BIN" -- \
            --name backend-ai --data-dir "$BAI_ETCD_DATA" \
            --listen-client-urls "$c" --advertise-client-urls "$c" \
            --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
            --initial-cluster "backend-ai=$p" --initial-cluster-state new \
            --initial-cluster-token backend-ai-ci --logger zap
    ) || die "etcd failed to start (see $BAI_ETCD_LOG)"
    STARTED+=(etcd)
fi

# ---------------------------------------------------------------------------
# 3. wait for readiness
# ---------------------------------------------------------------------------
started() { [[ " ${STARTED[*]-} " == *" $1 "* ]]; }
T=$BAI_WAIT_TIMEOUT

wait_port postgres $PG_PORT "$T" "$PG_LOG"
wait_cmd postgres "$T" "$PG_LOG" pg_isready -q -h 127.0.0.1 -p $PG_PORT
started postgres && log "postgres: ready"

wait_port redis $REDIS_PORT "$T" "$REDIS_LOG"
if have redis-cli; then wait_cmd redis "$T" "$REDIS_LOG" redis-cli -h 127.0.0.1 -p $REDIS_PORT ping; fi
started redis && log "redis: ready"

# RabbitMQ opens 5672 near the end of its boot; give it a bit longer.
wait_port rabbitmq $AMQP_PORT $((T + 30)) /var/log/rabbitmq/
if started rabbitmq; then
    timeout "$T" rabbitmqctl -q await_startup >/dev/null 2>&1 ||
        warn "rabbitmq: AMQP port is open but 'rabbitmqctl await_startup' did not succeed"
    log "rabbitmq: ready"
fi

wait_port nats $NATS_PORT "$T" "$NATS_LOG"
# JetStream check.  The INFO line every client receives says "jetstream":true
# when it is enabled, so this works with or without the monitoring port.
nats_info=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; IFS= read -r l <&3; printf %s "$l"' _ $NATS_PORT 2>/dev/null || true)
if [[ $nats_info == *'"jetstream":true'* ]]; then
    started nats && log "nats: ready (JetStream on)"
elif port_open $NATS_MON_PORT && have curl &&
     jsz=$(curl -fsS --max-time 3 "http://127.0.0.1:$NATS_MON_PORT/jsz" 2>/dev/null) &&
     [[ $jsz == *'"config"'* && ! $jsz =~ \"disabled\":[[:space:]]*true ]]; then
    started nats && log "nats: ready (JetStream on, per /jsz)"
elif [[ -z $nats_info ]]; then
    warn "nats: could not read the server INFO line; assuming JetStream is on"
else
    die "the NATS server on :$NATS_PORT runs WITHOUT JetStream; restart it with -js (not done automatically; log: $NATS_LOG)"
fi

wait_port etcd "$BAI_ETCD_PORT" "$T" "$BAI_ETCD_LOG"
if have curl; then
    wait_cmd etcd "$T" "$BAI_ETCD_LOG" curl -fsS --max-time 2 "http://127.0.0.1:$BAI_ETCD_PORT/health"
fi
started etcd && log "etcd: ready"

# ---------------------------------------------------------------------------
# 4. PostgreSQL auth + database
# ---------------------------------------------------------------------------
psql_tcp() { psql -w -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $PG_PORT -U postgres -d postgres "$@"; }

if ! err=$(psql_tcp -tAc 'SELECT 1' 2>&1 >/dev/null); then
    # The app logs in as postgres over TCP 127.0.0.1 with no password.  A fresh
    # Debian cluster demands scram-sha-256 on 127.0.0.1, so we put a loopback
    # "trust" block at the top of pg_hba.conf.  That is fine for a dev/CI box
    # (only local processes can reach 127.0.0.1) and avoids keeping a password
    # in sync between here and the config; it is NOT a production setting.
    # Reload (SIGHUP) only, never restart.  BAI_PG_TRUST=0 disables this.
    hba=/etc/postgresql/$PG_VER/main/pg_hba.conf
    if [[ $err == *password* || $err == *authentication* ]] && ((BAI_PG_TRUST)) && [[ -w $hba ]] &&
       ! grep -q 'backend-ai ops/setup.sh' "$hba"; then
        log "postgres: passwordless TCP login refused, adding loopback trust to $hba"
        tmp=$(mktemp)
        {
            echo '# >>> backend-ai ops/setup.sh: passwordless loopback for local dev/CI'
            echo 'host    all    all    127.0.0.1/32    trust'
            echo 'host    all    all    ::1/128         trust'
            echo '# <<< backend-ai ops/setup.sh'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba" && rm -f "$tmp"
        pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main reload
        wait_cmd postgres 10 "$PG_LOG" psql_tcp -tAc 'SELECT 1'
    else
        die "cannot log in to PostgreSQL as postgres over TCP 127.0.0.1 without a password: $err"
    fi
fi

if [[ $(psql_tcp -tAc "SELECT 1 FROM pg_roles WHERE rolname='$BAI_DB_USER'") != 1 ]]; then
    log "postgres: creating role $BAI_DB_USER"
    psql_tcp -qc "CREATE ROLE \"$BAI_DB_USER\" LOGIN"
fi
if [[ $(psql_tcp -tAc "SELECT 1 FROM pg_database WHERE datname='$BAI_DB_NAME'") == 1 ]]; then
    log "postgres: database $BAI_DB_NAME exists"
else
    log "postgres: creating database $BAI_DB_NAME owned by $BAI_DB_USER"
    psql_tcp -qc "CREATE DATABASE \"$BAI_DB_NAME\" OWNER \"$BAI_DB_USER\""
fi

# ---------------------------------------------------------------------------
# 5. toolchain
# ---------------------------------------------------------------------------
log "protoc: $(protoc --version)"
if have cargo; then
    log "cargo: $(cargo --version)"
elif [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    warn "cargo is at ${HOME:-/root}/.cargo/bin but not on PATH: run '. \"\$HOME/.cargo/env\"'"
else
    warn "cargo not found: install Rust with rustup (https://rustup.rs); this script does not"
fi

log "done: postgres:$PG_PORT redis:$REDIS_PORT rabbitmq:$AMQP_PORT nats:$NATS_PORT etcd:$BAI_ETCD_PORT db=$BAI_DB_NAME${STARTED[*]:+ (started: ${STARTED[*]})}"
