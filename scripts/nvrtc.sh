#!/usr/bin/env bash
# Put NVIDIA's NVRTC (the CUDA C++ compiler library, no GPU needed) under the cache directory
# from its PyPI wheel and print the folder holding libnvrtc.so.13 — what CI needs to compile the
# CUDA kernels on a machine without a GPU. The version matches the CUDA 13.0 of the GPU machine.
set -euo pipefail
VERSION=13.0.88
dir="${SUANLI_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/suanli}/nvrtc-$VERSION"
if [ ! -f "$dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "nvidia-cuda-nvrtc==$VERSION" >&2
    mkdir -p "$dir.part"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$tmp"/nvidia_cuda_nvrtc-*.whl "$dir.part"
    rm -rf "$dir"
    mv "$dir.part" "$dir"
fi
echo "$dir/nvidia/cu13/lib"
