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
if [ ! -x "$VENV/bin/vllm-router" ]; then
    if python3 -m venv "$VENV" 2>/dev/null && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip install -q "$ROUTER_PKG"
    else
        # No venv module (Debian without python3-venv): a plain package directory instead.
        rm -rf "$VENV"
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --target "$VENV/site" "$ROUTER_PKG"
        mkdir -p "$VENV/bin"
        printf '#!/bin/sh\nPYTHONPATH="%s" exec python3 -c "import sys; from vllm_router.launch_router import main; sys.exit(main())" "$@"\n' \
            "$(pwd)/$VENV/site" > "$VENV/bin/vllm-router"
        chmod +x "$VENV/bin/vllm-router"
    fi
fi
[ -x "$BIN" ] || cargo build --release --locked
model=$("$BIN" pull smollm2-135m 2>/dev/null | tail -1)
[ -f "$model" ] || model=$(ls "${SUANLI_MODELS:-$HOME/.cache/suanli/models}"/smollm2-135m*.gguf | head -1)
exec python3 tests/router/router_test.py "$BIN" "$model" "$VENV/bin/vllm-router"
