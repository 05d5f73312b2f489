#!/usr/bin/env bash
# A short story told with the official `backend.ai` client against a running stack
# (`bash ops/run.sh` or `backend-ai dev up` in another terminal):
#   create a session, run code in it, watch its events, put a file into a vfolder and get
#   it back, list sessions, destroy the session, and clean up — printing each step.
#
# Environment (defaults: the local `dev up` stack and the example superadmin):
#   BACKEND_ENDPOINT [http://127.0.0.1:8081]  BACKEND_ACCESS_KEY  BACKEND_SECRET_KEY
#   DEMO_IMAGE [python]   DEMO_VFOLDER_HOST [the server's default vfolder host]
#   DEMO_VFOLDER [1]      0 skips the vfolder steps (a stack without a storage proxy)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPS_TAG=demo
# shellcheck source=ops/lib.sh
. "$ROOT/ops/lib.sh"

export BACKEND_ENDPOINT=${BACKEND_ENDPOINT:-http://127.0.0.1:8081}
export BACKEND_ENDPOINT_TYPE=api
export BACKEND_ACCESS_KEY=${BACKEND_ACCESS_KEY:-AKIAIOSFODNN7EXAMPLE}
export BACKEND_SECRET_KEY=${BACKEND_SECRET_KEY:-wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY}
IMAGE=${DEMO_IMAGE:-python}

BAI=$(bash "$ROOT/ops/client.sh") || die "the official client could not be installed (needs CPython 3.11)"
WORK=$(mktemp -d /tmp/backend-ai-demo.XXXXXX)
SUFFIX=$(date +%s)
SESS=demo-$SUFFIX
VF=demovf$SUFFIX
EVENTS_PID=""
SESSION_LIVE=0
cleanup() {
    [[ -n $EVENTS_PID ]] && kill "$EVENTS_PID" 2>/dev/null || true
    # A failed run still destroys what it created.
    ((SESSION_LIVE)) && "$BAI" rm "$SESS" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'warn "step $N failed (exit status $?); the stack logs say why"' ERR
cd "$WORK"

N=0
step() { N=$((N + 1)); printf '\n\033[1m==> %d. %s\033[0m\n' "$N" "$*"; }
bai() { printf '$ backend.ai %s\n' "$*"; "$BAI" "$@"; }

port=${BACKEND_ENDPOINT##*:}; port=${port%%/*}
host=${BACKEND_ENDPOINT#*://}; host=${host%%:*}
# Right after `dev up` the processes are still starting: give them a minute.
wait_port "the API at $BACKEND_ENDPOINT (start the stack first: bash ops/run.sh)" "$port" 60 "" "$host"
for _ in $(seq 1 120); do
    "$BAI" admin agents 2>/dev/null | grep -q ALIVE && break
    sleep 0.5
done
"$BAI" admin agents 2>/dev/null | grep -q ALIVE || die "no agent is ALIVE: sessions could not start"

step "Who am I talking to?"
bai config

step "Create a compute session '$SESS' ($IMAGE)"
SESSION_LIVE=1
bai start -t "$SESS" -r cpu=1 -r mem=256m "$IMAGE"

step "Watch its lifecycle events in the background"
"$BAI" events "$SESS" >"$WORK/events.log" 2>&1 &
EVENTS_PID=$!
echo "(backend.ai events $SESS > events.log, pid $EVENTS_PID)"

step "Run code in the session"
bai run -t "$SESS" -c 'import platform, os; print("hello from Python", platform.python_version(), "in", os.getcwd())' "$IMAGE"

if [[ ${DEMO_VFOLDER:-1} != 0 ]]; then
    step "Put a file into a virtual folder and get it back"
    bai vfolder list-hosts
    HOST=${DEMO_VFOLDER_HOST:-$("$BAI" vfolder list-hosts | sed -n 's/^Default vfolder host: //p' || true)}
    [[ -n $HOST ]] || die "the server reported no default vfolder host (is the storage proxy running?)"
    bai vfolder create "$VF" "$HOST"
    echo "Backend.AI demo, $(date -u)" >story.txt
    bai vfolder upload "$VF" story.txt
    bai vfolder ls "$VF" .
    # The 21.3.6 client writes into <base-dir>/<name> without creating the base dir.
    mkdir -p back
    bai vfolder download "$VF" story.txt -b back
    if cmp -s story.txt back/story.txt; then
        echo "round trip OK: $(cat back/story.txt)"
    else
        die "the downloaded file differs from the uploaded one"
    fi
fi

step "List sessions"
bai ps

step "Destroy the session"
bai rm "$SESS"
SESSION_LIVE=0
for _ in $(seq 1 40); do
    grep -q session_terminated "$WORK/events.log" && break
    sleep 0.25
done
kill "$EVENTS_PID" 2>/dev/null || true
EVENTS_PID=""

step "The events we watched"
cat "$WORK/events.log"
grep -q session_terminated "$WORK/events.log" || die "no session_terminated event was seen"

if [[ ${DEMO_VFOLDER:-1} != 0 ]]; then
    step "Clean up the virtual folder"
    printf 'y\n' | bai vfolder delete "$VF"
fi

printf '\n\033[1mDemo finished: session, code, events%s, listing, destroy.\033[0m\n' \
    "$([[ ${DEMO_VFOLDER:-1} != 0 ]] && echo ', vfolder round trip')"
