#!/usr/bin/env bash
# The one command that runs the whole test suite against real services (as root):
# installs/starts what is missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ops/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# Tests create one database per test (cloned from a template) and drop it afterwards.
cargo test --workspace --no-fail-fast
