#!/usr/bin/env bash
# The CPU kernel tests built for AArch64 and run under user-mode QEMU: the
# NEON arm of the width-generic kernels (cpu/simd/neon.rs) on an emulated
# CPU, with the portable sets beside it. Emulation checks results, not
# speed. Installs the cross linker and QEMU (Debian) and the Rust target on
# first use.
#
#   bash scripts/test-aarch64.sh            # the kernel harness and cpu:: unit tests
#   bash scripts/test-aarch64.sh -- FILTER  # arguments after -- go to the harness
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  apt-get install -y --no-install-recommends qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
[ "${1:-}" = "--" ] && shift
cargo test --release --target aarch64-unknown-linux-gnu -p sparsenet-runtime --test isa_kernels -- "$@"
cargo test --release --target aarch64-unknown-linux-gnu -p sparsenet-runtime --lib cpu::
