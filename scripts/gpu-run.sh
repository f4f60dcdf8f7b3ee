#!/usr/bin/env bash
# Runs on the GPU machine, over target/gpu-carry built by scripts/gpu-check.sh:
# the GPU parity tests, then for both benchmark networks our benchmark and
# PyTorch's (same weights, same input, checked to compute the same logits),
# each under a timeout, logs under $OUT (default target/gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=target/gpu-carry
OUT=${OUT:-target/gpu-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export SPARSENET_PTX_CACHE="$PWD/$CARRY/ptx"

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; python3 -c 'import torch; print("torch", torch.__version__)'; } > "$OUT/machine.txt" 2>&1

echo "== parity (tests/gpu_cuda.rs)"
timeout 300 "$CARRY/gpu_cuda" --ignored --test-threads 1 --skip precompile_ptx > "$OUT/parity.log" 2>&1
echo "parity exit $?"; grep -E "^test |test result" "$OUT/parity.log"

for spec in "seed40 --depth 40 --growth 12" "bc100 --depth 100 --growth 24 --bottleneck"; do
  set -- $spec
  net=$1; shift
  echo "== $net"
  timeout 120 "$CARRY/bench_gpu" --net "$net" --batch 64 --out "$OUT/$net" > "$OUT/bench-$net.json" 2> "$OUT/bench-$net.err"
  echo "bench_gpu exit $?"; cat "$OUT/bench-$net.json"; tail -3 "$OUT/bench-$net.err"
  timeout 300 python3 scripts/bench_torch_gpu.py --dir "$OUT/$net" "$@" > "$OUT/torch-$net.json" 2> "$OUT/torch-$net.err"
  echo "torch exit $?"; cat "$OUT/torch-$net.json"; tail -3 "$OUT/torch-$net.err"
done

# One table: ours against every PyTorch mode, same GPU, same run.
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def rows(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []
for net in ("seed40", "bc100"):
    ours = rows(os.path.join(out, f"bench-{net}.json"))
    torch = rows(os.path.join(out, f"torch-{net}.json"))
    if not ours:
        print(f"{net}: no sparsenet result"); continue
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
