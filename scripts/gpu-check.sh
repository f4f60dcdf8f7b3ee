#!/usr/bin/env bash
# Prepares the GPU run on this (GPU-less) machine: builds the CUDA-enabled
# benchmark and GPU test binaries, compiles every GPU program's kernels to
# sm_90 machine code with NVRTC (no GPU needed; saves the GPU machine's
# driver 15-40 s per program), and puts all of it in target/gpu-carry
# (git-ignored). Then, on the GPU machine, one command runs
# the GPU parity tests, our benchmark and PyTorch's:
#
#   bash scripts/gpu-check.sh                 # here
#   bash scripts/gpu-run.sh                   # there, with target/gpu-carry carried along
#
# (With the device tool: run(command="bash scripts/gpu-run.sh", carry=["target/gpu-carry"]).)
set -euo pipefail
cd "$(dirname "$0")/.."

NVRTC_DIR=target/nvrtc
if ! [ -f "$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  python3 -m pip install -q --disable-pip-version-check --target "$NVRTC_DIR" "nvidia-cuda-nvrtc==13.0.*"
fi
export LD_LIBRARY_PATH="$PWD/$NVRTC_DIR/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

CARRY=target/gpu-carry
rm -rf "$CARRY"
mkdir -p "$CARRY/ptx"

cargo build --release -p sparsenet-bench --features cuda --bin bench_gpu
cargo build --release --features cuda --example train
test_bin=$(cargo test --release --features cuda --test gpu_cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu_cuda" and m.get("executable"):
        print(m["executable"])')
cp target/release/bench_gpu target/release/examples/train "$CARRY/"
cp "$test_bin" "$CARRY/gpu_cuda"
strip "$CARRY"/bench_gpu "$CARRY"/train "$CARRY"/gpu_cuda

# PTX for every program the run uses (NVRTC 13.0, as on the GPU machine).
SPARSENET_PTX_CACHE="$PWD/$CARRY/ptx" "$CARRY/gpu_cuda" --ignored --exact precompile_ptx_for_sm_90 --nocapture

# Machine code (cubin) makes the PTX redundant there, and the device tool
# carries at most 64 MiB with the working tree: keep only PTX without a cubin
# (a cubin the driver refused would be recompiled there by NVRTC), packed
# (cubins shrink about 4x; scripts/gpu-run.sh unpacks them).
for bin in "$CARRY"/ptx/*.cubin; do
  rm -f "${bin%.cubin}.ptx"
done
du -sh "$CARRY/ptx"
tar -C "$CARRY/ptx" -cf - . | xz -T0 -6 > "$CARRY/ptx.tar.xz"
rm -rf "$CARRY/ptx"

# CIFAR-10 (the JPEG archive) for the TF32 training check of the parity tests.
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg.tar.gz}
if [ -f "$CIFAR" ]; then cp "$CIFAR" "$CARRY/"; else echo "no $CIFAR: the CIFAR-10 check will fail there"; fi

du -sh "$CARRY"
ls -la "$CARRY"
echo "ready: carry $CARRY and run scripts/gpu-run.sh on the GPU machine"
