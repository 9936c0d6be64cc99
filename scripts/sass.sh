#!/usr/bin/env bash
# The kernels' machine code (SASS) for sm_90, as ptxas builds it from the NVRTC output — what
# decides how many memory loads a thread has in flight, which no CPU-side test can show.
#     scripts/sass.sh KERNEL      print one kernel's SASS (e.g. matvec_t1_bf16)
#     scripts/sass.sh --check     the load-grouping check of scripts/test-cuda.sh (below)
# SASS_CUBIN=FILE uses an sm_90 cubin already assembled instead of building one.
# Needs no GPU: NVRTC, ptxas, cuobjdump and nvdisasm come from NVIDIA's PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$(scripts/nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ptxas=$(scripts/nvrtc.sh ptxas)
export PATH="$(scripts/nvrtc.sh sass):$PATH"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -n "${SASS_CUBIN:-}" ]; then
    # Already assembled (scripts/test-cuda.sh passes the cubin it checked for spills).
    cp "$SASS_CUBIN" "$tmp/k.cubin"
else
    cargo build --quiet --release --locked --workspace --example dump_ptx
    target/release/examples/dump_ptx 90 > "$tmp/k.ptx"
    "$ptxas" -arch=sm_90 "$tmp/k.ptx" -o "$tmp/k.cubin"
fi
if [ "${1:-}" != --check ]; then
    cuobjdump -sass -fun "${1:?usage: scripts/sass.sh KERNEL | --check}" "$tmp/k.cubin"
    exit
fi
# Decode is bound by how many bytes are in flight to memory. A loop that checks its bound
# between loads (a plain loop, or one unrolled by #pragma unroll) keeps a branch between
# them: each load then waits for the one before to be used — one memory latency per step.
# These kernels must issue several global loads before the first instruction that uses what
# any of them loaded (on 40799ee's kernels argmax, top-k and the row gather had 1, the norm 2).
cuobjdump -sass "$tmp/k.cubin" > "$tmp/k.sass"
python3 - "$tmp/k.sass" <<'PY'
import re, sys
# kernel: the fewest global loads it must have in flight before a use. ptxas places a few uses
# before the last loads of a group (argmax's 8 predicated loads: 6 before the first compare);
# decode attention: a round of 8 positions' table and K loads.
KERNELS = {"matvec_t1_bf16": 8, "matvec3_t1_bf16": 8, "matvec_glu_t1_bf16": 8, "matvec_t1_f16": 8,
           "attention_f16": 20, "argmax_rows": 6, "top_k_rows": 6, "rms_norm": 8, "rms_norm_bf16": 8,
           "gather_rows": 6,
           # quantized: two units a lane (a Q4_K unit is 7 loads, Q8_0 17, Q6_K 35 — 16-bit);
           # gate and up: a unit of each
           "matvec_t1_q4_k": 14, "matvec3_t1_q4_k": 14, "matvec_t1_q8_0": 32, "matvec_t1_q6_k": 52,
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
def opcode(words):
    return next(t for t in words if not t.startswith("@"))
def branch_target(words):
    return int(words[-1], 16) if re.fullmatch(r"0x[0-9a-f]+", words[-1]) else 1 << 62
def regs(text):
    out = set()
    for m in re.finditer(r"\bR(\d+)(\.64)?", text):
        n = int(m.group(1))
        out |= {n, n + 1} if m.group(2) else {n}
    return out
NO_DEST = ("STG", "STS", "STL", "ST", "RED", "CCTL", "BRA", "BAR", "EXIT", "RET", "BSYNC", "WARPSYNC", "NOP")
def operands(words):
    return " ".join(words[words.index(opcode(words)) + 1:]).split(",")
def reads(words):
    ops = operands(words)
    return regs(",".join(ops if opcode(words).split(".")[0] in NO_DEST else ops[1:]))
def loaded(words):  # the registers a global load writes
    n = int(re.match(r"\s*R(\d+)", operands(words)[0]).group(1))
    op = opcode(words)
    return set(range(n, n + (4 if ".128" in op else 2 if ".64" in op else 1)))
failed = 0
for k, least in KERNELS.items():
    code = funcs.get(k)
    if code is None:
        print(f"{k}: not in the SASS"); failed += 1; continue
    # From each global load, the loads issued before the first instruction that reads what any
    # of them loaded, following the code as laid out (a forward branch is passed by: loads before
    # it are in flight either way); a backward branch, barrier or exit ends the count.
    best = 0
    for i, (_, words) in enumerate(code):
        if not opcode(words).startswith("LDG"):
            continue
        pending, run = set(), 0
        for addr, w in code[i:]:
            op = opcode(w)
            if op in ("EXIT", "RET") or op.startswith("BAR") or (op == "BRA" and branch_target(w) <= addr):
                break
            if reads(w) & pending:
                break
            if op.startswith("LDG"):
                run += 1
                pending |= loaded(w)
        best = max(best, run)
    ok = best >= least
    failed += not ok
    print(f"{k:<22} {best:>3} global loads in flight before a use (>= {least})  {'ok' if ok else 'TOO FEW'}")
if failed:
    print(f"test result: FAILED. 0 passed; {failed} failed (loads not grouped)")
    sys.exit(1)
print(f"test result: ok. {len(KERNELS)} passed; 0 failed (loads grouped)")
PY
