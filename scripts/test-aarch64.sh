#!/usr/bin/env bash
# The CPU kernels' tests (NEON level included) and the golden tiny-model tests for aarch64, run
# under qemu-user: installs the Rust target, a cross linker and qemu when they are missing.
# Prints "aarch64: toolchain unavailable" and exits 0 only when those cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu

have_tools() {
  rustup target list --installed 2>/dev/null | grep -qx "$target" &&
    command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null
}
if ! have_tools; then
  rustup target add "$target" >/dev/null 2>&1 || true
  if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    ($sudo_ apt-get update -q && $sudo_ apt-get install -y -q gcc-aarch64-linux-gnu qemu-user) >/dev/null 2>&1 || true
  fi
fi
if ! have_tools; then
  echo "aarch64: toolchain unavailable (rustup target, aarch64-linux-gnu-gcc or qemu-aarch64 missing)"
  exit 0
fi

export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# The generic level's conformance run is skipped here (it is portable Rust, checked natively on
# x86, and under qemu it took as long as NEON's); the golden tiny models below still run every
# level this CPU has, generic included.
cargo test --release --locked --target "$target" -p suanli-core -p suanli-cpu -- --skip generic_conforms
cargo test --release --locked --target "$target" -p suanli-engine --test golden_tiny
# An ARMv8.0 core without the dot products (qemu's Cortex-A72 model): the `neon` level is the
# best detected, and its tiles must never reach an `sdot` (which would fault there).
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu" \
  cargo test --release --locked --target "$target" -p suanli-cpu --lib
# A core with the dot products but not the int8 matrix multiplies (qemu's Neoverse N1 model):
# `neondot` is the best detected, and its tiles must never reach an `smmla`.
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu neoverse-n1 -L /usr/aarch64-linux-gnu" \
  cargo test --release --locked --target "$target" -p suanli-cpu --lib kernels::
