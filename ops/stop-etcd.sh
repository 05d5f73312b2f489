#!/usr/bin/env bash
# Stop the etcd that ops/setup.sh started (found through its pidfile).
# Leaves any other etcd alone; safe to run when nothing is running.
set -euo pipefail
OPS_TAG=stop-etcd
# shellcheck source=ops/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

if [[ ! -f $BAI_ETCD_PIDFILE ]]; then
    log "no pidfile $BAI_ETCD_PIDFILE: nothing to stop"
    exit 0
fi
pid=$(cat "$BAI_ETCD_PIDFILE")
# --name etcd: only signal the pid if it still is an etcd process (pid reuse)
rc=0
start-stop-daemon --stop --quiet --pidfile "$BAI_ETCD_PIDFILE" --name etcd \
    --retry TERM/20/KILL/5 || rc=$?
case $rc in
    0) log "stopped etcd (pid $pid)" ;;
    1) log "etcd (pid $pid) was not running" ;;
    *) die "could not stop etcd (pid $pid), start-stop-daemon exit $rc" ;;
esac
rm -f "$BAI_ETCD_PIDFILE"
