#!/usr/bin/env bash
# The one command that brings up everything on a fresh Debian 12 machine (as root):
# services (installed if missing), schema, example fixtures, then the API server, workers
# and agents in the foreground. Ctrl-C stops them all. Extra arguments go to `dev up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "[run] building (release)…"
cargo build --release -p backend-ai
BIN=target/release/backend-ai
CFG=ops/manager.toml
"$BIN" -f "$CFG" mgr schema migrate
"$BIN" -f "$CFG" mgr fixture populate ops/fixtures/example.json
exec "$BIN" -f "$CFG" dev up "$@"
