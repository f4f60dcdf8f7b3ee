"""onnxruntime's half of the CPU benchmark (scripts/bench-cpu.sh runs it).

Runs the ONNX export of the same weights our benchmark wrote (`model.onnx`,
from `sparsenet::runtime::onnx::save_onnx`, as `train --export-onnx` writes
it) with onnxruntime's CPU provider, every graph optimisation on (it folds
the BatchNorms into the convolutions) and the same thread count; checks the
eval-mode logits on our input against ours, then times inference over the
batch and batch-1 latency, and prints one JSON line. There is no training
column: onnxruntime's CPU provider does not train.

    PYTHONPATH=target/onnxruntime python3 scripts/bench_onnx.py --dir target/bench/seed40 --threads 2
"""

import argparse
import json
import re
import resource
import statistics
import time

import numpy as np
import onnxruntime as ort


def read_safetensors(path):
    """The F32 tensors of a safetensors file, as numpy arrays."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: {t['dtype']}"
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(t["shape"])
    return out


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def mlas_isa():
    """The instruction set onnxruntime's MLAS kernels take on this CPU. MLAS
    picks them from CPUID at run time and does not report the choice, so
    this is its rule applied to /proc/cpuinfo: AVX-512 F (with BW, DQ, VL)
    kernels where present, else AVX2 + FMA, else SSE."""
    f = cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= f:
        return "avx512 (by CPUID)"
    if {"avx2", "fma"} <= f:
        return "avx2+fma (by CPUID)"
    if "asimd" in f:
        return "neon (by CPUID)"
    return "sse (by CPUID)"


def median_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="folder with model.onnx and io.safetensors from bench_cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--latency-reps", type=int, default=50)
    args = ap.parse_args()

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(f"{args.dir}/model.onnx", options, providers=["CPUExecutionProvider"])
    io = read_safetensors(f"{args.dir}/io.safetensors")
    x, ours = np.ascontiguousarray(io["input"]), io["logits"]

    (logits,) = session.run(["logits"], {"input": x})
    rel = float(np.abs(logits - ours).max() / np.abs(ours).max())
    if not rel < 1e-4:
        raise SystemExit(f"bench_onnx: logits differ from sparsenet's (max relative error {rel:.3g})")

    run = lambda inp: session.run(["logits"], {"input": inp})
    eval_ms = median_ms(lambda: run(x), args.evals, 2)
    one = np.ascontiguousarray(x[:1])
    lat_ms = median_ms(lambda: run(one), args.latency_reps, 5)
    build = re.sub(r"\s+", " ", ort.get_build_info()) if hasattr(ort, "get_build_info") else ""
    print(json.dumps({
        "side": "onnxruntime", "onnxruntime": ort.__version__, "build": build,
        "providers": session.get_providers(), "isa": mlas_isa(), "threads": args.threads,
        "batch": int(x.shape[0]), "logits_max_rel_err": rel, "eval_ms": round(eval_ms, 3),
        "latency1_ms": round(lat_ms, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }))


if __name__ == "__main__":
    main()
