#!/usr/bin/env bash
# CPU benchmark: sparsenet against PyTorch on the same architectures, both in
# this one run. For each network our binary writes weights, an input and its
# logits; the PyTorch script loads them, checks it computes the same function
# (eval-mode logits within 1e-4), and both time a training step (forward,
# backward, SGD update), inference and batch-1 latency at the same thread
# count. Prints a table of medians, ratios, GFLOP/s and peak resident memory.
#
#   bash scripts/bench-cpu.sh            # both networks, 2 threads
#   NETS=seed40 THREADS=1 bash scripts/bench-cpu.sh
#   TORCH_FORMATS=channels_last bash scripts/bench-cpu.sh   # one PyTorch layout
#
# Sets up its own Python environment (target/bench-venv: torch, safetensors)
# on first use; the tests never need it.
set -euo pipefail
cd "$(dirname "$0")/.."
NETS=${NETS:-"seed40 bc100"}
THREADS=${THREADS:-2}
TORCH_FORMATS=${TORCH_FORMATS:-"contiguous channels_last"}
VENV=target/bench-venv
if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, safetensors" 2>/dev/null; then
  echo "setting up $VENV (PyTorch, safetensors) ..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r scripts/requirements-bench.txt
fi
cargo build --release --example bench_cpu --example bench_direct
mkdir -p target/bench
: > target/bench/results.jsonl
# The fp32 peak as this machine runs it now (boost clock included): one
# core's independent FMA chains, times the thread count.
target/release/examples/bench_direct --peak > target/bench/peak.json
for net in $NETS; do
  case $net in
    seed40) torch_args="--depth 40 --growth 12" ;;
    bc100) torch_args="--depth 100 --growth 24 --bottleneck" ;;
    *) echo "unknown network '$net' (expected seed40 or bc100)" >&2; exit 2 ;;
  esac
  dir=target/bench/$net
  echo "== $net: sparsenet" >&2
  RAYON_NUM_THREADS=$THREADS target/release/examples/bench_cpu --net "$net" --out "$dir" \
    | sed "s/^{/{\"bench_net\": \"$net\", /" | tee -a target/bench/results.jsonl
  # PyTorch in both its layouts (NCHW and channels_last, oneDNN's faster
  # one on most CPUs), each in its own process; the table takes the faster
  # of the two for every measure.
  for format in $TORCH_FORMATS; do
    echo "== $net: pytorch, $format" >&2
    OMP_NUM_THREADS=$THREADS "$VENV/bin/python" scripts/bench_torch.py --dir "$dir" --threads "$THREADS" \
      --memory-format "$format" $torch_args \
      | sed "s/^{/{\"net\": \"$net\", /" | tee -a target/bench/results.jsonl
  done
done
python3 - target/bench/results.jsonl target/bench/peak.json <<'EOF'
import json, sys, subprocess
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak_core = json.load(open(sys.argv[2]))["peak_gflops_per_core"]
ours = [r for r in rows if r["side"] == "sparsenet"]
# PyTorch's best per network and measure over the layouts it ran in.
MEASURES = ["train_step_ms", "eval_ms", "latency1_ms", "peak_rss_train_mib"]
theirs = []
for o in ours:
    runs = [r for r in rows if r["side"] == "pytorch" and r["net"] == o["bench_net"]]
    best = dict(runs[0])
    for k in MEASURES:
        r = min(runs, key=lambda r: r[k])
        best[k], best[k + "_format"] = r[k], r["memory_format"]
    best["logits_max_rel_err"] = max(r["logits_max_rel_err"] for r in runs)
    theirs.append(best)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
print(f"\nCPU: {cpu}; threads: {ours[0]['threads']}; batch {ours[0]['batch']}; torch {theirs[0]['torch']}")
peak = peak_core * ours[0]["threads"]
print(f"fp32 peak measured now: {peak_core:.0f} GFLOP/s per core (8-wide FMA chains), {peak:.0f} for {ours[0]['threads']} threads")
print("GFLOP/s counts 2 FLOPs per multiply-add; a training step as 3x the forward pass; % is of that peak.\n")
FORMAT_TAG = {"contiguous": "   ", "channels_last": " cl"}
hdr = f"{'network':<16} {'measure':<22} {'sparsenet':>12} {'pytorch':>15} {'ratio':>7}  {'GFLOP/s (% of peak) ours / torch':>34}"
print(hdr)
print("-" * len(hdr))
for o, t in zip(ours, theirs):
    macs, b = o["macs_per_image"], o["batch"]
    def line(name, key, flop, unit="ms"):
        a, p = o[key], t[key]
        ga, gp = flop / a / 1e6, flop / p / 1e6
        g = f"{ga:6.1f} ({100 * ga / peak:3.0f}%) / {gp:6.1f} ({100 * gp / peak:3.0f}%)"
        fmt = FORMAT_TAG[t[key + "_format"]]
        print(f"{o['net']:<16} {name:<22} {a:>9.2f} {unit:<2} {p:>9.2f} {unit:<2}{fmt} {p / a:>6.2f}x  {g:>34}")
    line("train step (median)", "train_step_ms", 6 * macs * b)
    line("inference (median)", "eval_ms", 2 * macs * b)
    line("batch-1 latency", "latency1_ms", 2 * macs)
    a, p = o["peak_rss_train_mib"], t["peak_rss_train_mib"]
    fmt = FORMAT_TAG[t["peak_rss_train_mib_format"]]
    print(f"{o['net']:<16} {'peak RSS in training':<22} {a:>8.0f} MiB {p:>8.0f} MiB{fmt} {a / p:>6.2f}x  (ours / theirs)")
    print(f"{o['net']:<16} {'logits max rel. err.':<22} {t['logits_max_rel_err']:>12.2e}")
print("\nratio = PyTorch time / sparsenet time (above 1: we are faster). PyTorch's column is the faster")
print("(or leaner) of its two layouts for each measure: NCHW, or channels_last where marked 'cl'.")
EOF
