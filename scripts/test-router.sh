#!/usr/bin/env bash
# Three `suanli serve` replicas on loopback behind the real vllm-router (PyPI), tests/router/:
# load spread, prefix affinity (cache_aware against round_robin), a replica killed under load,
# a replica drained with SIGTERM. Installs vllm-router into a virtual environment
# (.venv-router) the first time. Prints a cargo-style "test result:" line for .ci/run's count.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_ROUTER:-.venv-router}
BIN=${SUANLI_BIN:-target/release/suanli}
ROUTER_PKG="vllm-router==0.1.17"
. scripts/pyenv.sh
pyenv "$VENV" vllm_router "$ROUTER_PKG"
[ -x "$BIN" ] || cargo build --release --locked
model=$("$BIN" pull smollm2-135m 2>/dev/null | tail -1)
[ -f "$model" ] || { echo "router test: cannot pull smollm2-135m"; exit 1; }
exec python3 tests/router/router_test.py "$BIN" "$model" "$BIN_DIR/vllm-router"
