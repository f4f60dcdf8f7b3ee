#!/usr/bin/env bash
# Runs on the GPU machine, over target/gpu-carry built by scripts/gpu-check.sh:
# the GPU parity tests, then for both benchmark networks our benchmark and
# PyTorch's (same weights, same input, checked to compute the same logits),
# each under a timeout. Logs go to four files under $OUT (default
# target/gpu-out; the device tool brings back at most 8 files); the weights
# the two sides share go to a scratch folder.
#
# Environment (defaults in brackets):
#   TORCH_MODES   PyTorch modes to time [eager,compile,reduce-overhead]
#   ORDER         sections to run, in order [parity bench ceilings]
#                 (parity: tests/gpu_cuda.rs; bench: ours and PyTorch per
#                 network; ceilings: copy bandwidth and matrix rates)
#                 (torch_extra: TORCH_EXTRA_MODES [reduce-overhead] after bench)
#   PARITY_TIMEOUT seconds for the parity tests [240]
#   TORCH_MODES_seed40, TORCH_MODES_bc100  the same for one network
#   NETS          networks to benchmark [seed40 bc100]
#   BATCHES       batch sizes [64]
#   BENCH_ARGS    more arguments of bench_gpu [--profile: kernel-by-kernel
#                 times of one training step and one inference, in bench.log]
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
OUT=${OUT:-target/gpu-out}
WORK=${WORK:-/tmp/sparsenet-gpu-work}
TORCH_MODES=${TORCH_MODES:-eager,compile,reduce-overhead}
NETS=${NETS:-seed40 bc100}
BATCHES=${BATCHES:-64}
BENCH_ARGS=${BENCH_ARGS---profile}
mkdir -p "$OUT" "$WORK"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export SPARSENET_PTX_CACHE="$PWD/$CARRY/ptx"
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
  stamp "$net batch $batch: sparsenet"
  dir="$WORK/$net-$batch"
  # shellcheck disable=SC2086
  timeout 120 "$CARRY/bench_gpu" --net "$net" --batch "$batch" --out "$dir" $BENCH_ARGS > "$WORK/bench-$net-$batch.json" 2> "$WORK/bench.err"
  echo "bench_gpu exit $?"; cat "$WORK/bench-$net-$batch.json"; tail -5 "$WORK/bench.err"
  cat "$WORK/bench-$net-$batch.json" "$WORK/bench.err" >> "$OUT/bench.log"
  modes_var=TORCH_MODES_$net
  modes=${!modes_var:-$TORCH_MODES}
  stamp "$net batch $batch: pytorch ($modes)"
  # shellcheck disable=SC2046
  timeout 300 python3 scripts/bench_torch_gpu.py --dir "$dir" --modes "$modes" $(net_args "$net") \
    > "$WORK/torch-$net-$batch.json" 2> "$WORK/torch.err"
  echo "torch exit $?"; cat "$WORK/torch-$net-$batch.json"; tail -5 "$WORK/torch.err"
  cat "$WORK/torch-$net-$batch.json" "$WORK/torch.err" >> "$OUT/torch.log"
done
done
}

# More PyTorch modes (TORCH_EXTRA_MODES) on the weights a bench section wrote,
# for a run that times eager mode first and the compiled modes last.
torch_extra() {
for batch in $BATCHES; do
for net in $NETS; do
  stamp "$net batch $batch: pytorch (${TORCH_EXTRA_MODES:-reduce-overhead})"
  # shellcheck disable=SC2046
  timeout 300 python3 scripts/bench_torch_gpu.py --dir "$WORK/$net-$batch" --modes "${TORCH_EXTRA_MODES:-reduce-overhead}" \
    $(net_args "$net") > "$WORK/torch-extra.json" 2> "$WORK/torch.err"
  echo "torch exit $?"; cat "$WORK/torch-extra.json"; tail -5 "$WORK/torch.err"
  cat "$WORK/torch-extra.json" >> "$WORK/torch-$net-$batch.json"
  cat "$WORK/torch-extra.json" "$WORK/torch.err" >> "$OUT/torch.log"
done
done
}

for section in ${ORDER:-parity bench ceilings}; do
  "$section"
done
stamp "done"

# One table: ours against every PyTorch mode, same GPU, same run.
python3 - "$WORK" "$BATCHES" "$NETS" <<'PY'
import json, os, sys
work, batches, nets = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []
for b in batches:
  for net in nets:
    ours = rows(os.path.join(work, f"bench-{net}-{b}.json"))
    torch = rows(os.path.join(work, f"torch-{net}-{b}.json"))
    if not ours:
        print(f"{net} batch {b}: no sparsenet result"); continue
    o = ours[0]
    print(f"\n{net} on {o['device']}, batch {o['batch']}: sparsenet train step {o['train_step_ms']:.2f} ms, "
          f"planned memory {o['planned_mib']:.0f} MiB (device use {o['device_used_mib']:.0f} MiB)")
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
