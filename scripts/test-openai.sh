#!/usr/bin/env bash
# The official openai Python client against `suanli serve`: tests/openai/ on SmolLM2 (chat,
# streaming, logprobs, errors) and tests/openai_structured/ on Qwen2.5-Coder-0.5B, the default
# model (JSON schemas checked by the jsonschema package, tool calling). Installs openai + pytest into a virtual environment (.venv-openai) the first
# time; starts the server on a free port with an API key; stops it with SIGTERM at the end and
# checks it exits 0. Prints a cargo-style "test result:" line for .ci/run's count.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_OPENAI:-.venv-openai}
BIN=${SUANLI_BIN:-target/release/suanli}
PKGS=("openai==3.51.0" "pytest==9.0.3" "jsonschema==4.25.1")
. scripts/pyenv.sh
pyenv "$VENV" "openai, pytest, jsonschema" "${PKGS[@]}"
[ -x "$BIN" ] || cargo build --release --locked
status=0
passed=0
failed=0
# One server per suite: MODEL SUITE.
run_suite() {
    local model=$1 suite=$2
    local port key log pid out st code
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    key="test-$$-$RANDOM"
    log=$(mktemp)
    SUANLI_API_KEY=$key "$BIN" --threads 2 serve --model "$model" --port "$port" --ctx 2048 --max-batch 8 2>"$log" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    python3 scripts/wait-http.py "$port" /ready
    set +e
    out=$(SUANLI_URL="http://127.0.0.1:$port/v1" SUANLI_KEY="$key" SUANLI_MODEL="$model" \
        "$PY" -m pytest -q -p no:cacheprovider "$suite" 2>&1)
    st=$?
    set -e
    echo "$out"
    kill -TERM "$pid"
    set +e
    wait "$pid"
    code=$?
    set -e
    trap - EXIT
    if [ "$code" -ne 0 ]; then
        echo "suanli serve ($model) exited $code after SIGTERM:"; cat "$log"; st=1
    fi
    rm -f "$log"
    [ "$st" -eq 0 ] || status=1
    passed=$((passed + $(echo "$out" | grep -oE '[0-9]+ passed' | tail -1 | grep -oE '[0-9]+' || echo 0)))
    failed=$((failed + $(echo "$out" | { grep -oE '[0-9]+ (failed|error)' || true; } | awk '{s += $1} END {print s + 0}')))
}
run_suite "${SUANLI_TEST_MODEL:-smollm2-135m}" tests/openai
run_suite "${SUANLI_STRUCTURED_MODEL:-qwen2.5-coder-0.5b}" tests/openai_structured
[ "$status" -eq 0 ] && r=ok || r=FAILED
echo "test result: $r. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out (openai client)"
exit "$status"
