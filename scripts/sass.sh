#!/usr/bin/env bash
# The kernels' machine code (SASS) for sm_90, as ptxas builds it from the NVRTC output — what
# decides how many memory loads a thread has in flight, which no CPU-side test can show.
#     scripts/sass.sh KERNEL      print one kernel's SASS (e.g. matvec_t1_bf16)
#     scripts/sass.sh --check     the load-grouping check of scripts/test-cuda.sh (below)
# Needs no GPU: NVRTC, ptxas, cuobjdump and nvdisasm come from NVIDIA's PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$(scripts/nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ptxas=$(scripts/nvrtc.sh ptxas)
export PATH="$(scripts/nvrtc.sh sass):$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run --quiet --release --locked -p suanli-cuda --example dump_ptx -- 90 > "$tmp/k.ptx"
"$ptxas" -arch=sm_90 "$tmp/k.ptx" -o "$tmp/k.cubin"
if [ "${1:-}" != --check ]; then
    cuobjdump -sass -fun "${1:?usage: scripts/sass.sh KERNEL | --check}" "$tmp/k.cubin"
    exit
fi
# Decode is bound by how many bytes are in flight to memory. A loop that checks its bound
# between loads (a plain loop, or one unrolled by #pragma unroll) keeps a branch between
# them: each load then waits for the one before to be used — one memory latency per step.
# These kernels must have a straight-line stretch (a basic block) of several global loads.
cuobjdump -sass "$tmp/k.cubin" > "$tmp/k.sass"
python3 - "$tmp/k.sass" <<'PY'
import re, sys
# kernel: the fewest global loads its longest basic block must hold (decode attention: a round
# of 8 positions' table and K loads; its prologue's q loads alone are 9).
KERNELS = {"matvec_t1_bf16": 8, "matvec3_t1_bf16": 8, "matvec_glu_t1_bf16": 8, "matvec_t1_f16": 8,
           "attention_f16": 24, "argmax_rows": 8, "top_k_rows": 8, "rms_norm": 8, "rms_norm_bf16": 8,
           "gather_rows": 8,
           # quantized: two units a lane (one Q4_K unit is 9 loads, Q8_0 18, Q6_K 36 — 16-bit)
           "matvec_t1_q4_k": 16, "matvec3_t1_q4_k": 16, "matvec_t1_q8_0": 32, "matvec_t1_q6_k": 64,
           "matvec_glu_t1_q4_k": 8}
funcs, name = {}, None
for line in open(sys.argv[1]):
    m = re.match(r"\s+Function : (\w+)", line)
    if m:
        name = m.group(1)
        funcs[name] = []
        continue
    m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
    if m and name:
        funcs[name].append((int(m.group(1), 16), m.group(2).split()))
failed = 0
for k, least in KERNELS.items():
    code = funcs.get(k)
    if code is None:
        print(f"{k}: not in the SASS"); failed += 1; continue
    targets = {int(w[-1], 16) for _, w in code for i, t in enumerate(w) if t == "BRA" and i + 1 < len(w)
               and re.fullmatch(r"0x[0-9a-f]+", w[-1])}
    best = run = 0
    for addr, words in code:
        if addr in targets:
            run = 0
        op = next(t for t in words if not t.startswith("@"))
        if op.startswith("LDG"):
            run += 1
            best = max(best, run)
        if op in ("BRA", "EXIT", "RET"):
            run = 0
    ok = best >= least
    failed += not ok
    print(f"{k:<22} {best:>3} global loads in one basic block (>= {least})  {'ok' if ok else 'TOO FEW'}")
if failed:
    print(f"test result: FAILED. 0 passed; {failed} failed (loads not grouped)")
    sys.exit(1)
print(f"test result: ok. {len(KERNELS)} passed; 0 failed (loads grouped)")
PY
