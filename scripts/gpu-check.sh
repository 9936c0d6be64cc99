#!/usr/bin/env bash
# Everything issue 6 measures, in one run on a GPU machine (GPU time is scarce: prepare here,
# run there once). Build on the CPU machine first:
#     cargo build --release -p suanli-cli --features cuda
# then run this from the repository root on the GPU machine (it needs only target/release/suanli,
# tests/fixtures/tiny and the CUDA libraries):
#     scripts/gpu-check.sh [QUICK=1 skips the 72B shape]
# It runs the conformance suite and the golden tiny models on the GPU, then the benchmarks, and
# prints one table (also written to $OUT/gpu-check.txt when $OUT is set).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/suanli}
export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SUANLI_HOME=${SUANLI_HOME:-/tmp/suanli-home}
log=${OUT:-/tmp}/gpu-check.txt
: > "$log"
say() { echo "$@" | tee -a "$log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log" || true
say "== conformance suite + golden tiny models on cuda:0"
timeout 240 "$BIN" check-backend --device cuda 2>&1 | tee -a "$log"
check_rc=${PIPESTATUS[0]}

bench() {  # LABEL ARGS... → one JSON line per run
    local label=$1; shift
    local t0=$SECONDS
    local j
    j=$(timeout "${BENCH_TIMEOUT:-150}" "$BIN" bench --device cuda --json "$@" 2>>"$log.stderr") || {
        say "$label: FAILED or timed out (see $log.stderr)"; tail -5 "$log.stderr" | tee -a "$log"; return; }
    echo "$label $j" >> "$log.json"
    python3 - "$label" "$j" "$((SECONDS - t0))" <<'PY' | tee -a "$log"
import json, sys
label, j, secs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
f = lambda v: "-" if v is None else f"{v:,.0f}"
bw = j.get("read_bandwidth_gb_s")
bound = j.get("decode_bound_tok_s")
dec = j.get("decode_tok_s")
pct = f"{100 * dec / bound:.0f}%" if dec and bound else "-"
print(f"{label:<28} prefill {f(j.get('prefill_tok_s')):>9} tok/s  decode {f(dec):>7} tok/s "
      f"({pct} of the {f(bound)} tok/s bound at {f(bw)} GB/s)  batch-{j.get('parallel')} "
      f"{f(j.get('parallel_decode_tok_s')):>7} tok/s  [{secs}s]")
PY
}
: > "$log.json"
say "== benchmarks (bf16 unless named; decode: 128 tokens; prefill: 2048 tokens; batch 32: 128-token prompts, 128 new tokens)"
bench "qwen2.5-0.5b bf16"      --random qwen2.5-0.5b --prompt-tokens 2048 --batch 2048 --gen-tokens 128 --repetitions 3 --parallel 32
# The same with the decoder block's separate kernels (decode: 13 a layer instead of 6; prefill:
# the MLP's middle in f32 instead of bf16).
( export SUANLI_CUDA_FUSED=0; bench "qwen2.5-0.5b bf16 unfused" --random qwen2.5-0.5b --prompt-tokens 128 --batch 128 --gen-tokens 128 --repetitions 3 )
( export SUANLI_CUDA_FUSED=0; bench "qwen2.5-7b bf16 unfused" --random qwen2.5-7b --prompt-tokens 2048 --batch 2048 --gen-tokens 8 --repetitions 2 )
bench "qwen2.5-7b bf16"        --random qwen2.5-7b --prompt-tokens 2048 --batch 2048 --gen-tokens 128 --repetitions 3 --parallel 32
# The same prefill with attention through gather + cuBLAS instead of the fused kernel.
( export SUANLI_CUDA_FLASH=0; bench "qwen2.5-7b bf16 gemm-attn" --random qwen2.5-7b --prompt-tokens 2048 --batch 2048 --gen-tokens 8 --repetitions 3 )
# Batch 32 sampling the whole distribution (temperature 1): the tokens are drawn on the device.
bench "qwen2.5-7b bf16 sampled" --random qwen2.5-7b --prompt-tokens 128 --batch 128 --gen-tokens 128 --repetitions 1 --parallel 32 --temperature 1
bench "qwen2.5-7b bf16 kv q8_0" --kv-type q8_0 --random qwen2.5-7b --prompt-tokens 2048 --batch 2048 --gen-tokens 64 --repetitions 2
# Batch 32 of a quantized model: its products go through the matrix-vector kernels 8 rows a launch.
bench "qwen2.5-7b q4_k"        --random qwen2.5-7b:q4_k --prompt-tokens 2048 --batch 2048 --gen-tokens 128 --repetitions 3 --parallel 32
bench "qwen2.5-7b q8_0"        --random qwen2.5-7b:q8_0 --prompt-tokens 512 --batch 512 --gen-tokens 128 --repetitions 2
[ "${QUICK:-0}" = 1 ] || bench "qwen2.5-72b q4_k" --random qwen2.5-72b:q4_k --prompt-tokens 512 --batch 512 --gen-tokens 32 --repetitions 1
say "== where the time goes: 7B bf16, each kernel timed alone (SUANLI_CUDA_PROFILE=1, graphs off)"
SUANLI_CUDA_PROFILE=1 timeout 120 "$BIN" bench --device cuda --random qwen2.5-7b --prompt-tokens 512 --batch 512 \
    --gen-tokens 16 --repetitions 1 2>&1 | grep -A40 "CUDA profile" | tee -a "$log"
say "== targets: 7B bf16 decode >= 240 tok/s (85% of bandwidth), batch 32 >= 3200 tok/s, prefill 2048 >= 45k tok/s;"
say "   0.5B decode >= 1000 tok/s; 7B q4_k decode >= 80% of its bound"
exit $check_rc
