#!/usr/bin/env bash
# The one command that runs the whole test suite against real services (as root):
# installs/starts what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The conformance battery drives the official Python client: install it (cached) now so
# the tests do not race to do it. Without CPython 3.11 the battery prints a loud SKIP.
if CLIENT=$(bash ops/client.sh); then
    export BAI_CLIENT_BIN=$CLIENT
    echo "[test] official client: $CLIENT"
else
    echo "[test] WARNING: the official client is unavailable; the conformance battery will SKIP" >&2
fi
# The vfolder battery runs `backend-ai storage start-server` as a child process.
cargo build -p backend-ai
# Tests create one database per test (cloned from a template) and drop it afterwards.
cargo test --workspace --no-fail-fast
