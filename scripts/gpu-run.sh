#!/usr/bin/env bash
# Runs on the GPU machine, over target/gpu-carry built by scripts/gpu-check.sh:
# the GPU parity tests, then for both benchmark networks our benchmark and
# PyTorch's (same weights, same input, checked to compute the same logits),
# each under a timeout. Logs go to four files under $OUT (default
# target/gpu-out; the device tool brings back at most 8 files); the weights
# the two sides share go to a scratch folder.
#
# Environment (defaults in brackets):
#   PRECISIONS    our --precision values to benchmark [tf32 bf16 f32]; PyTorch
#                 runs in the same math mode (--tf32: TF32 in cuDNN and
#                 matmuls; --bf16: autocast to bfloat16)
#   TORCH_MODES   PyTorch modes to time [eager,reduce-overhead for tf32,
#                 eager for bf16 and f32]; TORCH_MODES_<precision> for one
#   ORDER         sections to run, in order [ceilings bench parity]
#                 (parity: tests/gpu_cuda.rs; bench: ours and PyTorch per
#                 network; ceilings: copy bandwidth and matrix rates)
#                 (torch_extra: TORCH_EXTRA_MODES [reduce-overhead] after bench)
#   PARITY_TIMEOUT seconds for the parity tests [240]
#   NETS          networks to benchmark [seed40 bc100]
#   BATCHES       batch sizes [64]
#   BENCH_ARGS    more arguments of bench_gpu [--profile: kernel-by-kernel
#                 times of one training step and one inference, in bench.log]
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
OUT=${OUT:-target/gpu-out}
WORK=${WORK:-/tmp/sparsenet-gpu-work}
PRECISIONS=${PRECISIONS:-tf32 bf16 f32}
TORCH_MODES_tf32=${TORCH_MODES_tf32:-${TORCH_MODES:-eager,reduce-overhead}}
TORCH_MODES_bf16=${TORCH_MODES_bf16:-${TORCH_MODES:-eager}}
TORCH_MODES_f32=${TORCH_MODES_f32:-${TORCH_MODES:-eager}}
NETS=${NETS:-seed40 bc100}
BATCHES=${BATCHES:-64}
BENCH_ARGS=${BENCH_ARGS---profile}
mkdir -p "$OUT" "$WORK"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
# The compiled kernels travel packed (scripts/gpu-check.sh): unpack them.
export SPARSENET_PTX_CACHE="$WORK/ptx"
mkdir -p "$SPARSENET_PTX_CACHE"
if [ -f "$CARRY/ptx.tar.xz" ]; then tar -xJf "$CARRY/ptx.tar.xz" -C "$SPARSENET_PTX_CACHE"; fi
# CIFAR-10 for the TF32 training check in the parity tests.
export SPARSENET_CIFAR10="$PWD/$CARRY/cifar10-jpeg.tar.gz"
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -c 'import torch; print("torch", torch.__version__)'; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

parity() {
  stamp "parity (tests/gpu_cuda.rs)"
  timeout "${PARITY_TIMEOUT:-240}" "$CARRY/gpu_cuda" --ignored --test-threads 1 --skip precompile_ptx > "$OUT/parity.log" 2>&1
  echo "parity exit $?"; grep -E "^test |test result|panicked|error" "$OUT/parity.log" | head -40
}

# The machine's ceilings, measured in the same run: device-to-device copy
# bandwidth (bytes read + written) and f32 / TF32 / bf16 matrix rates.
ceilings() {
  stamp "ceilings"
  timeout 60 python3 - <<'PY' 2>&1 | tee "$OUT/ceilings.txt"
import torch
def t(fn, reps=20):
    for _ in range(3): fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps * 1e-3
a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
sec = t(lambda: b.copy_(a))
print(f"copy 1 GiB d2d: {2 * a.numel() / sec / 1e12:.2f} TB/s (read + written)")
n = 8192
for name, dt, tf32 in (("f32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    x = torch.randn(n, n, device="cuda", dtype=dt); y = torch.randn(n, n, device="cuda", dtype=dt)
    sec = t(lambda: x @ y, 10)
    print(f"matmul {n}^3 {name}: {2 * n ** 3 / sec / 1e12:.1f} TFLOP/s")
PY
}

net_args() {
  case $1 in
    seed40) echo "--depth 40 --growth 12" ;;
    bc100) echo "--depth 100 --growth 24 --bottleneck" ;;
  esac
}
bench() {
for batch in $BATCHES; do
for net in $NETS; do
for prec in $PRECISIONS; do
  stamp "$net batch $batch $prec: sparsenet"
  dir="$WORK/$net-$batch"
  tag="$net-$batch-$prec"
  # The ceilings section's rates, if it ran first: the profile's shares.
  # (bf16 runs its products on the TF32 tensor cores: TF32's ceiling.)
  math=$prec; [ "$prec" = bf16 ] && math=tf32
  tf=$(sed -n "s/^matmul 8192^3 $math: \([0-9.]*\) TFLOP\/s.*/\1/p" "$OUT/ceilings.txt" 2>/dev/null)
  tb=$(sed -n 's/^copy 1 GiB d2d: \([0-9.]*\) TB\/s.*/\1/p' "$OUT/ceilings.txt" 2>/dev/null)
  # shellcheck disable=SC2086
  timeout 120 "$CARRY/bench_gpu" --net "$net" --batch "$batch" --precision "$prec" --out "$dir" $BENCH_ARGS \
    ${tf:+--ceiling-tflops "$tf"} ${tb:+--ceiling-tbps "$tb"} \
    > "$WORK/bench-$tag.json" 2> "$WORK/bench.err"
  echo "bench_gpu exit $?"; cat "$WORK/bench-$tag.json"; tail -5 "$WORK/bench.err"
  cat "$WORK/bench-$tag.json" "$WORK/bench.err" >> "$OUT/bench.log"
  modes_var=TORCH_MODES_$prec
  modes=${!modes_var}
  tf32_flag=""
  [ "$prec" = tf32 ] && tf32_flag="--tf32"
  [ "$prec" = bf16 ] && tf32_flag="--bf16"
  stamp "$net batch $batch $prec: pytorch ($modes)"
  # shellcheck disable=SC2046,SC2086
  timeout 300 python3 scripts/bench_torch_gpu.py --dir "$dir" --modes "$modes" $tf32_flag $(net_args "$net") \
    > "$WORK/torch-$tag.json" 2> "$WORK/torch.err"
  echo "torch exit $?"; cat "$WORK/torch-$tag.json"; tail -5 "$WORK/torch.err"
  cat "$WORK/torch-$tag.json" "$WORK/torch.err" >> "$OUT/torch.log"
done
done
done
}

# More PyTorch modes (TORCH_EXTRA_MODES) on the weights a bench section wrote,
# for a run that times eager mode first and the compiled modes last.
torch_extra() {
for batch in $BATCHES; do
for net in $NETS; do
for prec in $PRECISIONS; do
  tag="$net-$batch-$prec"
  tf32_flag=""
  [ "$prec" = tf32 ] && tf32_flag="--tf32"
  [ "$prec" = bf16 ] && tf32_flag="--bf16"
  stamp "$net batch $batch $prec: pytorch (${TORCH_EXTRA_MODES:-reduce-overhead})"
  # shellcheck disable=SC2046,SC2086
  timeout 300 python3 scripts/bench_torch_gpu.py --dir "$WORK/$net-$batch" --modes "${TORCH_EXTRA_MODES:-reduce-overhead}" \
    $tf32_flag $(net_args "$net") > "$WORK/torch-extra.json" 2> "$WORK/torch.err"
  echo "torch exit $?"; cat "$WORK/torch-extra.json"; tail -5 "$WORK/torch.err"
  cat "$WORK/torch-extra.json" >> "$WORK/torch-$tag.json"
  cat "$WORK/torch-extra.json" "$WORK/torch.err" >> "$OUT/torch.log"
done
done
done
}

for section in ${ORDER:-ceilings bench parity}; do
  "$section"
done
stamp "done"

# One table: ours against every PyTorch mode, same GPU, same run.
python3 - "$WORK" "$BATCHES" "$NETS" "$PRECISIONS" <<'PY'
import json, os, sys
work, batches, nets, precs = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []
for b in batches:
  for net in nets:
    for prec in precs:
      tag = f"{net}-{b}-{prec}"
      ours = rows(os.path.join(work, f"bench-{tag}.json"))
      torch = rows(os.path.join(work, f"torch-{tag}.json"))
      if not ours:
          print(f"{net} batch {b} {prec}: no sparsenet result"); continue
      o = ours[0]
      print(f"\n{net} on {o['device']}, batch {o['batch']}, {prec} (PyTorch in the same math mode): "
            f"sparsenet train step {o['train_step_ms']:.2f} ms, planned memory {o['planned_mib']:.0f} MiB "
            f"(device use {o['device_used_mib']:.0f} MiB)")
      for t in torch:
          if "error" in t:
              print(f"  pytorch {t['mode']:<16} failed: {t['error'][:120]}"); continue
          print(f"  pytorch {t['mode']:<16} {t['train_step_ms']:8.2f} ms  ratio {t['train_step_ms'] / o['train_step_ms']:5.2f}x  "
                f"peak {t['peak_allocated_mib']:.0f} MiB (ours/theirs {o['planned_mib'] / t['peak_allocated_mib']:.2f}x)")
          if t["mode"] == "eager":
              print(f"  inference batch {o['batch']}: {o['eval_ms']:.3f} vs {t['eval_ms']:.3f} ms ({t['eval_ms'] / o['eval_ms']:.2f}x); "
                    f"batch 1: {o['latency1_ms']:.4f} vs {t['latency1_ms']:.4f} ms ({t['latency1_ms'] / o['latency1_ms']:.2f}x)")
print("\nratio = PyTorch time / sparsenet time (above 1: we are faster).")
PY
