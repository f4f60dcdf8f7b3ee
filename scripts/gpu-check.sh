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
#   bash scripts/gpu-train.sh                 # there: CIFAR-10 time to accuracy (also carry target/gpu-data)
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
# Compiled kernels are kept between runs (keyed by source and options), so a
# rerun compiles only what changed.
CACHE=target/gpu-ptx-cache
rm -rf "$CARRY"
mkdir -p "$CARRY" "$CACHE"

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

# PTX and cubins for every program the run uses (NVRTC 13.0, as on the GPU
# machine), in every precision.
SPARSENET_PTX_CACHE="$PWD/$CACHE" "$CARRY/gpu_cuda" --ignored --exact precompile_ptx_for_sm_90 --nocapture \
  2>&1 | tee "$CARRY/precompile.log"
# Only the files of the current sources (the cache also keeps older ones):
# the test prints each program's PTX path.
mkdir -p "$CARRY/ptx"
sed -n 's/^[A-Za-z0-9_]*: \(.*\.ptx\) (.*/\1/p' "$CARRY/precompile.log" | while read -r ptx; do
  cp "$ptx" "$CARRY/ptx/"
  if [ -f "${ptx%.ptx}.cubin" ]; then cp "${ptx%.ptx}.cubin" "$CARRY/ptx/"; fi
done
ls "$CARRY/ptx" | wc -l

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

# CIFAR-10 for the TF32 training check of the parity tests: a subset of the
# JPEG archive in the same layout (640 training and 10 test images per
# class, 2 MB instead of 20), all that check reads.
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg.tar.gz}
if [ -f "$CIFAR" ]; then
  python3 - "$CIFAR" "$CARRY/cifar10-jpeg.tar.gz" <<'PY'
import collections, sys, tarfile
keep = {"train": 640, "test": 10}
seen = collections.Counter()
with tarfile.open(sys.argv[1]) as src, tarfile.open(sys.argv[2], "w:gz") as dst:
    for m in src:
        parts = m.name.strip("./").split("/")
        if m.isfile() and len(parts) == 3 and parts[0] in keep:
            key = (parts[0], parts[1])
            if seen[key] < keep[parts[0]]:
                seen[key] += 1
                dst.addfile(m, src.extractfile(m))
print(f"CIFAR-10 subset: {sum(seen.values())} images in {len(seen)} class folders")
PY
else
  echo "no $CIFAR: the CIFAR-10 check will fail there"
fi

# The whole archive for the time-to-accuracy run (scripts/gpu-train.sh),
# carried separately: run(..., carry=["target/gpu-carry", "target/gpu-data"]).
if [ -f "$CIFAR" ]; then
  mkdir -p target/gpu-data
  cp "$CIFAR" target/gpu-data/cifar10-jpeg.tar.gz
  du -sh target/gpu-data
fi

du -sh "$CARRY"
ls -la "$CARRY"
echo "ready: carry $CARRY and run scripts/gpu-run.sh on the GPU machine"
