#!/usr/bin/env bash
# Makes sure the official Backend.AI client 21.3.6 (`backend.ai`) is installed, and prints
# its path as the only line on stdout. The venv is cached in
# ~/.cache/backend.ai-client-21.3.6 (override with VENV=...), so this costs nothing after
# the first run. The installer is shared/conformance/install-client.sh beside the
# repository (override the directory with BAI_CONFORMANCE_DIR).
# Exit status 3: no CPython 3.11 on this machine (the client's pins need it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPS_TAG=client
# shellcheck source=ops/lib.sh
. "$ROOT/ops/lib.sh"

VENV=${VENV:-${HOME:-/root}/.cache/backend.ai-client-21.3.6}
BIN=$VENV/bin/backend.ai
if [[ -x $BIN ]]; then
    echo "$BIN"
    exit 0
fi

PY=""
for p in python3.11 python3; do
    if have "$p" && "$p" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
        PY=$(command -v "$p")
        break
    fi
done
if [[ -z $PY ]]; then
    warn "no CPython 3.11 found: the official client cannot be installed"
    exit 3
fi

SCRIPT=""
for d in "${BAI_CONFORMANCE_DIR:-}" "$ROOT/../shared/conformance" /work/shared/conformance; do
    if [[ -n $d && -f $d/install-client.sh ]]; then
        SCRIPT=$d/install-client.sh
        break
    fi
done
[[ -n $SCRIPT ]] || die "install-client.sh not found (set BAI_CONFORMANCE_DIR to shared/conformance)"

mkdir -p "$(dirname "$VENV")"
log "installing the official client into $VENV (python: $PY)" >&2
# flock: the conformance tests may install concurrently; the second waits and reuses.
VENV=$VENV PYTHON=$PY flock "$VENV.lock" \
    bash -c '[ -x "$VENV/bin/backend.ai" ] || bash "$0"' "$SCRIPT" >&2
[[ -x $BIN ]] || die "the installer left no $BIN"
echo "$BIN"
