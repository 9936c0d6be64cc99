#!/usr/bin/env bash
# Side by side with llama.cpp on the same GGUF files, same thread count, in one run; prints the
# throughputs and the ratios (suanli / llama.cpp).
#
#   bench/compare-llamacpp.sh [MODEL ...]          (default: both catalog models)
#   THREADS=2 PP=512 TG=128 REPS=3 DEPTH=0 bench/compare-llamacpp.sh qwen2.5-coder-0.5b
#
# The first run builds llama-cpp-python for this CPU into .venv-llama (several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
PP=${PP:-512}
TG=${TG:-128}
REPS=${REPS:-3}
DEPTH=${DEPTH:-0}
VENV=${VENV:-.venv-llama}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python into $VENV (compiles llama.cpp for this CPU) ..." >&2
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install -q llama-cpp-python
fi
cargo build --release -q
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen2.5-coder-0.5b smollm2-135m)

printf '%-20s %8s %8s | %10s %10s %6s | %10s %10s %6s\n' model threads depth "pp$PP sl" "pp$PP l.cpp" ratio "tg$TG sl" "tg$TG l.cpp" ratio
for m in "${models[@]}"; do
  path=$(./target/release/suanli pull "$m")
  theirs=$("$VENV/bin/python" bench/llamacpp_bench.py "$path" "$THREADS" "$PP" "$TG" "$REPS" "$DEPTH")
  ours=$(./target/release/suanli --threads "$THREADS" bench --model "$path" --prompt-tokens "$PP" --gen-tokens "$TG" \
         --repetitions "$REPS" --depth "$DEPTH" --json 2>/dev/null)
  python3 - "$m" "$THREADS" "$DEPTH" "$ours" "$theirs" <<'PY'
import json, sys
m, threads, depth, ours, theirs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
def cell(k):
    a, b = ours.get(k), theirs.get(k)
    if not a or not b:
        return f"{'-':>10} {'-':>10} {'-':>6}"
    return f"{a:10.1f} {b:10.1f} {a / b:6.2f}"
print(f"{m:<20} {threads:>8} {depth:>8} | {cell('prefill_tok_s')} | {cell('decode_tok_s')}")
PY
done
