"""PyTorch's half of the GPU benchmark (scripts/gpu-run.sh runs both halves).

The same network as scripts/bench_torch.py (the seed's 2018-02-20 SparseNet,
sparsenet's module names), on the GPU: loads the weights bench_gpu
(bench/src/bin/bench_gpu.rs) wrote, checks the eval-mode logits on its
input equal sparsenet's (TF32 off, so f32 means f32), then times a training
step (with --tf32: TF32 allowed in cuDNN's convolutions and in matmuls, the
same math mode as sparsenet's --precision tf32; with --bf16: also autocast
to bfloat16, the nearest PyTorch mode to sparsenet's --precision bf16) (forward, cross-entropy, backward, SGD with Nesterov momentum and
weight decay) in eager mode, torch.compile and
torch.compile(mode="reduce-overhead"), plus eager
inference and batch-1 latency, with peak allocated GPU memory per mode. One
JSON line per mode.

    python3 scripts/bench_torch_gpu.py --dir DIR --depth 100 --growth 24 --bottleneck
"""

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import load_ours  # noqa: E402  (the CPU benchmark's network and loading)


def median_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--growth", type=int, required=True)
    ap.add_argument("--bottleneck", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--modes", default="eager,compile,reduce-overhead")
    ap.add_argument("--tf32", action="store_true",
                    help="time with TF32 allowed (cuDNN convolutions and matmuls)")
    ap.add_argument("--bf16", action="store_true",
                    help="time under torch.autocast(bfloat16), TF32 allowed for what stays f32")
    args = ap.parse_args()
    args.tf32 = args.tf32 or args.bf16
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")

    base, x, ours = load_ours(args, "bench_torch_gpu")
    base, x, ours = base.to(dev), x.to(dev), ours.to(dev)
    base.eval()
    with torch.no_grad():
        logits = base(x)
    rel = ((logits - ours).abs().max() / ours.abs().max()).item()
    if not rel < 1e-4:
        sys.exit(f"bench_torch_gpu: logits differ from sparsenet's (max relative error {rel:.3g})")
    labels = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(dev)
    # The check above ran in f32; the timing runs in the requested math mode.
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    common = {"side": "pytorch", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "batch": x.shape[0], "logits_max_rel_err": rel,
              "precision": "bf16" if args.bf16 else "tf32" if args.tf32 else "f32"}
    # bf16: autocast's mixed precision (bf16 convolutions and activations,
    # f32 weights, BatchNorm in f32), PyTorch's usual way to train in bf16.
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    for mode in args.modes.split(","):
        model = copy.deepcopy(base).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

        def step_eager():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), labels)
            loss.backward()
            opt.step()
            return loss

        if mode == "eager":
            step = step_eager
        elif mode == "compile":
            step = torch.compile(step_eager)
        elif mode == "reduce-overhead":
            step = torch.compile(step_eager, mode="reduce-overhead")
        else:
            sys.exit(f"bench_torch_gpu: unknown mode {mode!r} (eager, compile, reduce-overhead)")
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            step()  # compiles, where it compiles
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t
            ms = median_ms(step, args.steps, 5)
        except Exception as e:  # e.g. torch.compile without a working toolchain
            print(json.dumps(dict(common, mode=mode, error=f"{type(e).__name__}: {e}"[:500])), flush=True)
            continue
        out = dict(common, mode=mode, train_step_ms=round(ms, 3), first_step_s=round(first_s, 2),
                   peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
        if mode == "eager":
            model.eval()
            with torch.no_grad(), autocast():
                out["eval_ms"] = round(median_ms(lambda: model(x), args.steps, 5), 3)
                one = x[:1].clone()
                out["latency1_ms"] = round(median_ms(lambda: model(one), 200, 10), 4)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
