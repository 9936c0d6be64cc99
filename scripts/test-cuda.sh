#!/usr/bin/env bash
# CPU-side checks of the CUDA backend: it builds (cargo feature `cuda` of the CLI), its kernels
# compile with NVRTC for sm_80/sm_89/sm_90 (NVRTC needs no GPU; scripts/nvrtc.sh fetches it), and
# the GPU dequantization code equals the scalar oracle when built for the host. The checks that
# need a device are in scripts/gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
nvrtc_dir=$(scripts/nvrtc.sh)
cargo build --release --locked -p suanli-cli --features cuda
LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --release --locked -p suanli-cuda --test kernels_compile -- --ignored
