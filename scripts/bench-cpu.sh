#!/usr/bin/env bash
# CPU benchmark: sparsenet against PyTorch and onnxruntime on the same
# architectures, all in this one run. For each network our binary writes
# weights, their ONNX export, an input and its logits; the PyTorch script
# loads the weights, onnxruntime the export (every graph optimisation on),
# each checks it computes the same function (eval-mode logits within 1e-4),
# and all time inference and batch-1 latency (PyTorch and we also a training
# step: forward, backward, SGD update) at the same thread count. Prints a
# table of medians, ratios, GFLOP/s and peak resident memory, and the
# instruction set each side ran on.
#
# This machine is shared and its speed drifts by tens of percent within
# minutes, so the comparison runs ROUNDS times (per network and round: ours,
# then PyTorch), each round's ratio compares runs minutes apart, and the
# table reports the median over the rounds and the range.
#
#   bash scripts/bench-cpu.sh            # both networks, 2 threads
#   NETS=seed40 THREADS=1 bash scripts/bench-cpu.sh
#   TORCH_FORMATS=channels_last bash scripts/bench-cpu.sh   # one PyTorch layout
#   ROUNDS=1 bash scripts/bench-cpu.sh   # one round (about 5 minutes; default 3)
#   SPARSENET_ISA=avx2 bash scripts/bench-cpu.sh   # our kernels on a narrower set
#
# Sets up its own Python environment (target/bench-venv: torch, safetensors)
# on first use; the tests never need it. onnxruntime comes from
# target/onnxruntime (ORT_PATH; what .ci/run installs for the ONNX tests):
# without it the onnxruntime column is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
NETS=${NETS:-"seed40 bc100"}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
TORCH_FORMATS=${TORCH_FORMATS:-"contiguous channels_last"}
VENV=target/bench-venv
ORT_PATH=${ORT_PATH:-target/onnxruntime}
if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, safetensors" 2>/dev/null; then
  echo "setting up $VENV (PyTorch, safetensors) ..."
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r scripts/requirements-bench.txt
fi
cargo build --release -p sparsenet-bench --bin bench_cpu --bin bench_direct
mkdir -p target/bench
: > target/bench/results.jsonl
# The fp32 peak as this machine runs it now (boost clock included): one
# core's independent FMA chains, times the thread count.
target/release/bench_direct --peak > target/bench/peak.json
for round in $(seq "$ROUNDS"); do
  for net in $NETS; do
    case $net in
      seed40) torch_args="--depth 40 --growth 12" ;;
      bc100) torch_args="--depth 100 --growth 24 --bottleneck" ;;
      *) echo "unknown network '$net' (expected seed40 or bc100)" >&2; exit 2 ;;
    esac
    dir=target/bench/$net
    tag="\"net_key\": \"$net\", \"round\": $round"
    ours() {
      echo "== round $round/$ROUNDS, $net: sparsenet" >&2
      RAYON_NUM_THREADS=$THREADS target/release/bench_cpu --net "$net" --out "$dir" \
        | sed "s/^{/{$tag, /" | tee -a target/bench/results.jsonl
    }
    # PyTorch in both its layouts (NCHW and channels_last, oneDNN's faster
    # one on most CPUs), each in its own process; the table takes the
    # faster of the two for every measure and round.
    theirs() {
      for format in $TORCH_FORMATS; do
        echo "== round $round/$ROUNDS, $net: pytorch, $format" >&2
        OMP_NUM_THREADS=$THREADS "$VENV/bin/python" scripts/bench_torch.py --dir "$dir" --threads "$THREADS" \
          --memory-format "$format" $torch_args \
          | sed "s/^{/{$tag, /" | tee -a target/bench/results.jsonl
      done
      if [ -d "$ORT_PATH/onnxruntime" ]; then
        echo "== round $round/$ROUNDS, $net: onnxruntime" >&2
        PYTHONPATH=$ORT_PATH OMP_NUM_THREADS=$THREADS python3 scripts/bench_onnx.py --dir "$dir" --threads "$THREADS" \
          | sed "s/^{/{$tag, /" | tee -a target/bench/results.jsonl
      fi
    }
    # Our run writes the weights, input and logits PyTorch loads; from the
    # second round on, every other round runs PyTorch first (a drift in
    # the machine's speed then favours neither side).
    if (( round % 2 == 0 )); then theirs; ours; else ours; theirs; fi
  done
done
python3 - target/bench/results.jsonl target/bench/peak.json <<'EOF'
import json, statistics, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peak_core = json.load(open(sys.argv[2]))["peak_gflops_per_core"]
MEASURES = ["train_step_ms", "eval_ms", "latency1_ms", "peak_rss_train_mib"]
FORMAT_TAG = {"contiguous": "nchw", "channels_last": "cl"}
nets = list(dict.fromkeys(r["net_key"] for r in rows))
rounds = sorted({r["round"] for r in rows})
# Per network and round: ours, and PyTorch's best per measure over its layouts.
pairs = {}
for net in nets:
    for rd in rounds:
        here = [r for r in rows if r["net_key"] == net and r["round"] == rd]
        ours = [r for r in here if r["side"] == "sparsenet"]
        runs = [r for r in here if r["side"] == "pytorch"]
        ort = [r for r in here if r["side"] == "onnxruntime"]
        if not ours or not runs:
            continue
        best = {"logits_max_rel_err": max(r["logits_max_rel_err"] for r in runs), "torch": runs[0]["torch"]}
        for k in MEASURES:
            r = min(runs, key=lambda r: r[k])
            best[k], best[k + "_format"] = r[k], r["memory_format"]
        pairs.setdefault(net, []).append((ours[0], best, ort[0] if ort else None))
first = next(iter(pairs.values()))[0]
sh = lambda c: subprocess.run(["sh", "-c", c], capture_output=True, text=True).stdout.strip()
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
flags = sh("grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\\n' | grep -E '^(avx2|fma|avx512(f|bw|vl|dq|_vnni|_bf16))$' | tr '\\n' ' '")
threads = first[0]["threads"]
print(f"\nCPU: {cpu}; vector flags: {flags or 'none of avx2, fma, avx512*'}; threads: {threads}; batch {first[0]['batch']}; rounds: {len(rounds)}")
ours_isa = "/".join(sorted({r.get("isa", "?") for r in rows if r["side"] == "sparsenet"}))
torch_isa = "/".join(sorted({str(r.get("isa", "?")) for r in rows if r["side"] == "pytorch"}))
ort_rows = [r for r in rows if r["side"] == "onnxruntime"]
ort_desc = (f"onnxruntime {ort_rows[0]['onnxruntime']}: {ort_rows[0]['isa']}, {'/'.join(ort_rows[0]['providers'])}"
            if ort_rows else "onnxruntime not run")
print(f"Instruction sets: sparsenet {ours_isa} (cpu::isa()); PyTorch {first[1]['torch']} {torch_isa}"
      f" (torch.backends.cpu.get_cpu_capability()); {ort_desc}")
peak = peak_core * threads
print(f"fp32 peak measured now: {peak_core:.0f} GFLOP/s per core (8-wide FMA chains), {peak:.0f} for {threads} threads")
print("Times: medians over the rounds of each round's median. ratio: median over the rounds of the other side's")
print("time over ours in the same round (above 1: we are faster), and its range. PyTorch: its faster layout")
print("per measure and round (the layouts that won: nchw, cl = channels_last). onnxrt: onnxruntime on the ONNX")
print("export of the same weights, every graph optimisation on, inference only. GFLOP/s count 2 FLOPs per")
print("multiply-add of the direct convolution, a training step as 3x the forward pass; % is of the peak.\n")
hdr = (f"{'network':<16} {'measure':<20} {'sparsenet':>11} {'pytorch':>11} {'layout':>7} {'ratio':>6} {'range':>10}"
       f" {'onnxrt':>11} {'ratio':>6} {'range':>10}  {'GFLOP/s (% of peak) ours / torch':>34}")
print(hdr)
print("-" * len(hdr))
for net, ps in pairs.items():
    o0 = ps[0][0]
    macs, b, name = o0["macs_per_image"], o0["batch"], o0["net"]
    def line(label, key, flop, unit="ms", invert=False):
        a = statistics.median(o[key] for o, _, _ in ps)
        p = statistics.median(t[key] for _, t, _ in ps)
        ratios = [(o[key] / t[key]) if invert else (t[key] / o[key]) for o, t, _ in ps]
        r = statistics.median(ratios)
        fmts = "/".join(sorted({FORMAT_TAG[t[key + "_format"]] for _, t, _ in ps}))
        rng = f"{min(ratios):.2f}-{max(ratios):.2f}"
        onnx = [(o, x) for o, _, x in ps if x is not None and key in x]
        if onnx:
            ox = statistics.median(x[key] for _, x in onnx)
            ors = [x[key] / o[key] for o, x in onnx]
            orng = f"{min(ors):.2f}-{max(ors):.2f}"
            oc = f"{ox:>8.2f} {unit:<2} {statistics.median(ors):>5.2f}x {orng:>10}"
        else:
            oc = f"{'-':>11} {'':>6} {'':>10}"
        if flop:
            ga, gp = flop / a / 1e6, flop / p / 1e6
            g = f"{ga:6.1f} ({100 * ga / peak:3.0f}%) / {gp:6.1f} ({100 * gp / peak:3.0f}%)"
        else:
            g = "(ours / theirs)"
        print(f"{name:<16} {label:<20} {a:>8.2f} {unit:<2} {p:>8.2f} {unit:<2} {fmts:>7} {r:>5.2f}x {rng:>10} {oc}  {g:>34}")
    line("train step", "train_step_ms", 6 * macs * b)
    line("inference", "eval_ms", 2 * macs * b)
    line("batch-1 latency", "latency1_ms", 2 * macs)
    line("peak RSS, training", "peak_rss_train_mib", 0, unit="Mi", invert=True)
    err = max(t["logits_max_rel_err"] for _, t, _ in ps)
    oerr = [x["logits_max_rel_err"] for _, _, x in ps if x is not None]
    print(f"{name:<16} {'logits max rel. err.':<20} {err:>11.2e}" + (f"   onnxruntime {max(oerr):.2e}" if oerr else ""))
print("\nPer round, PyTorch / sparsenet (train / inference / batch-1); onnxruntime / sparsenet (inference / batch-1):")
for net, ps in pairs.items():
    for i, (o, t, x) in enumerate(ps):
        rs = [t[k] / o[k] for k in MEASURES[:3]]
        ox = (f"; onnxruntime {x['eval_ms'] / o['eval_ms']:.2f}x / {x['latency1_ms'] / o['latency1_ms']:.2f}x"
              f" ({x['eval_ms']:.0f} / {x['latency1_ms']:.2f} ms)") if x else ""
        print(f"  {o['net']:<16} round {i + 1}: " + " / ".join(f"{r:.2f}x" for r in rs)
              + f"   (ours {o['train_step_ms']:.0f} / {o['eval_ms']:.0f} / {o['latency1_ms']:.2f} ms;"
              + f" pytorch {t['train_step_ms']:.0f} / {t['eval_ms']:.0f} / {t['latency1_ms']:.1f} ms){ox}")
EOF
