#!/usr/bin/env bash
# CPU-side checks of the CUDA backend: it builds (cargo feature `cuda` of the CLI), its kernels
# compile with NVRTC for sm_80/sm_89/sm_90 (NVRTC needs no GPU; scripts/nvrtc.sh fetches it), and
# ptxas assembles every kernel for sm_90 without register spills, and the decode kernels issue
# their memory loads in groups (SASS_CUBIN="$tmp/k.cubin" scripts/sass.sh --check). (The emulated-GPU tests of the
# backend run in the normal `cargo test`.) The checks that need a device: scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
nvrtc_dir=$(scripts/nvrtc.sh)
ptxas=$(scripts/nvrtc.sh ptxas)
export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cargo build --release --locked -p suanli-cli --features cuda
# --workspace, not -p suanli-cuda: the dependencies keep the features the workspace build gave
# them, so nothing is rebuilt (with -p, 61 crates were, 3 minutes in CI).
cargo test --release --locked --workspace --test kernels_compile -- --ignored
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo build --quiet --release --locked --workspace --example dump_ptx
target/release/examples/dump_ptx 90 > "$tmp/k.ptx"
"$ptxas" -arch=sm_90 -v "$tmp/k.ptx" -o "$tmp/k.cubin" 2> "$tmp/ptxas.txt"
kernels=$(grep -c "Compiling entry function" "$tmp/ptxas.txt")
spilling=$({ grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$tmp/ptxas.txt" || true; } | wc -l)
maxreg=$(grep -oE "Used [0-9]+ registers" "$tmp/ptxas.txt" | awk '{print $2}' | sort -n | tail -1)
echo "ptxas sm_90: $kernels kernels, $spilling with spills, at most $maxreg registers"
if [ "$spilling" -eq 0 ] && [ "$kernels" -gt 40 ]; then
    echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out (ptxas: no spills)"
else
    grep -B2 -E "[1-9][0-9]* bytes spill" "$tmp/ptxas.txt" || true
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out (ptxas: spills)"
    exit 1
fi
# The decode kernels' loads are grouped in the machine code (see scripts/sass.sh).
SASS_CUBIN="$tmp/k.cubin" scripts/sass.sh --check
