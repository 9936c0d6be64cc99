#!/usr/bin/env bash
# Serving throughput side by side, one run: 16 greedy completions of 64 tokens one at a time,
# then all at once, against `suanli serve` and llama-cpp-python's OpenAI server on the same
# GGUF with the same thread count. Needs a venv with `llama-cpp-python[server]` (VENV).
#   VENV=.venv-llama bench/compare-serve.sh [catalog-model]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-0.5b}
THREADS=${THREADS:-2}
N=${N:-16}
TOKENS=${TOKENS:-64}
BIN=target/release/suanli
[ -x "$BIN" ] || cargo build --release --locked
path=$("$BIN" pull "$MODEL" 2>/dev/null | tail -1)
[ -f "$path" ] || path=$(ls ~/.cache/suanli/models/"$MODEL".gguf)
# End-of-generation ids are banned so that every answer has exactly $TOKENS tokens.
case "$MODEL" in
    qwen*) ban=151643,151645 ;;
    smollm*) ban=0,2 ;;
    *) ban= ;;
esac
port=18181
wait_up() {
    python3 scripts/wait-http.py "$1" /v1/models
}
echo "== suanli serve ($MODEL, $THREADS threads)"
"$BIN" --threads "$THREADS" serve --model "$path" --model-name "$MODEL" --port $port --max-batch "$N" 2>/dev/null &
pid=$!
wait_up $port
python3 bench/serve_throughput.py --url http://127.0.0.1:$port --model "$MODEL" --requests "$N" \
    --max-tokens "$TOKENS" --ban "$ban" --label suanli
kill -TERM $pid; wait $pid || true
if [ -n "${VENV:-}" ]; then
    echo "== llama-cpp-python server ($MODEL, $THREADS threads)"
    "$VENV/bin/python" -m llama_cpp.server --model "$path" --model_alias "$MODEL" --n_threads "$THREADS" \
        --n_threads_batch "$THREADS" --n_ctx 4096 --port $port >/dev/null 2>&1 &
    pid=$!
    wait_up $port
    python3 bench/serve_throughput.py --url http://127.0.0.1:$port --model "$MODEL" --requests "$N" \
        --max-tokens "$TOKENS" --ban "$ban" --label llama-cpp-python
    kill -TERM $pid; wait $pid || true
fi
