#!/usr/bin/env bash
# The time-to-accuracy run (issue 21) on the GPU machine: trains a network on
# the whole of CIFAR-10 with the training set in device memory, evaluates it
# every epoch, and brings back the log, metrics.csv and metrics.png. Runs the
# binaries and cubins that scripts/gpu-check.sh built on the build machine
# (target/gpu-carry) and the CIFAR-10 archive it copied (target/gpu-data):
#
#   bash scripts/gpu-check.sh      # here
#   # with the device tool:
#   run(command="bash scripts/gpu-train.sh", carry=["target/gpu-carry", "target/gpu-data"])
#
# The wall time reported is the train binary's, from its start (which loads
# the cached kernels and decodes the JPEGs) to its final evaluation; the
# Rust build and the kernels' compilation happened on the build machine.
#
# Environment (defaults in brackets):
#   MODEL      --model [sparsenet-bc100]
#   EPOCHS     --epochs [30]
#   BATCH      --batch-size [128]
#   LR         --lr, the peak of a cosine schedule [0.2]
#   WARMUP     --warmup epochs [1]
#   SMOOTHING  --label-smoothing [0.1]
#   WD         --weight-decay [5e-4]
#   PRECISION  --precision [tf32]
#   LIMIT      seconds before the run is stopped (its last checkpoint
#              stays; the device tool allows 600 per command) [560]
#   SEED       --seed [0]
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-target/gpu-carry}
DATA=${DATA:-target/gpu-data/cifar10-jpeg.tar.gz}
OUT=${OUT:-target/gpu-out}
WORK=${WORK:-/tmp/sparsenet-gpu-work}
mkdir -p "$OUT" "$WORK"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export SPARSENET_PTX_CACHE="$WORK/ptx"
mkdir -p "$SPARSENET_PTX_CACHE"
if [ -f "$CARRY/ptx.tar.xz" ]; then tar -xJf "$CARRY/ptx.tar.xz" -C "$SPARSENET_PTX_CACHE"; fi
if ! [ -f "$DATA" ]; then
  echo "no $DATA: run scripts/gpu-check.sh on the build machine and carry target/gpu-data" >&2
  exit 2
fi

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

run="$WORK/run"
rm -rf "$run"
args=(--device cuda --dataset cifar10 --data "$DATA"
  --model "${MODEL:-sparsenet-bc100}" --epochs "${EPOCHS:-30}" --batch-size "${BATCH:-128}"
  --lr "${LR:-0.2}" --schedule cosine --warmup "${WARMUP:-1}"
  --label-smoothing "${SMOOTHING:-0.1}" --weight-decay "${WD:-5e-4}"
  --precision "${PRECISION:-tf32}" --seed "${SEED:-0}" --out "$run" --no-progress)
echo "train ${args[*]}" | tee "$OUT/train.log"
start=$(date +%s.%N)
timeout "${LIMIT:-560}" "$CARRY/train" "${args[@]}" 2>&1 | tee -a "$OUT/train.log"
status=${PIPESTATUS[0]}
end=$(date +%s.%N)
python3 -c "import sys; print(f'train exit {sys.argv[1]}; wall time {float(sys.argv[3]) - float(sys.argv[2]):.1f} s from the start of the binary to its end')" \
  "$status" "$start" "$end" | tee -a "$OUT/train.log"
cp "$run/metrics.csv" "$run/metrics.png" "$OUT/" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv >> "$OUT/machine.txt" 2>&1
exit "$status"
