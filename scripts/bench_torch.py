"""PyTorch's half of the CPU benchmark (scripts/bench-cpu.sh runs both halves).

Builds the seed's 2018-02-20 SparseNet (sparsenet-mxnet-notebook.txt, second
version) in PyTorch with the same module names as sparsenet's weights, loads
the weights our benchmark wrote, checks that the eval-mode logits on our input
equal ours, then times a training step (forward, cross-entropy, backward, SGD
with Nesterov momentum and weight decay), eval-mode inference and batch-1
latency, and prints one JSON line.

    python3 scripts/bench_torch.py --dir target/bench/seed40 --depth 40 --growth 12
"""

import argparse
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
try:
    from safetensors.torch import load_file
except ImportError:  # the GPU machine may lack the package: the format is simple
    def load_file(path):
        """Reads a safetensors file (F32, F64, I64 tensors) without the package."""
        dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
        with open(path, "rb") as f:
            data = f.read()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        out = {}
        for name, t in header.items():
            if name == "__metadata__":
                continue
            a, b = t["data_offsets"]
            out[name] = torch.frombuffer(bytearray(body[a:b]), dtype=dtypes[t["dtype"]]).reshape(t["shape"])
        return out


def exp_sources(outputs):
    """The seed's fetch_exponential_idx: newest first, offsets 1, 2, 4, ..."""
    picked, i = [], 1
    while i <= len(outputs):
        picked.append(outputs[len(outputs) - i])
        i *= 2
    return picked


def exp_channels(channels):
    return sum(exp_sources(channels))


class Unit(nn.Module):
    """BN [-ReLU] - conv, (bottleneck: BN-ReLU-conv3x3), trailing BN."""

    def __init__(self, cin, growth, bottleneck):
        super().__init__()
        self.bottleneck = bottleneck
        self.bn1 = nn.BatchNorm2d(cin, eps=2e-5, momentum=0.1)
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, 4 * growth, 1)
            self.bn2 = nn.BatchNorm2d(4 * growth, eps=2e-5, momentum=0.1)
            self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1)
        else:
            self.conv1 = nn.Conv2d(cin, growth, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(growth, eps=2e-5, momentum=0.1)

    def forward(self, x):
        if self.bottleneck:
            # The seed's bottleneck 1x1 conv has no ReLU before it (erase_relu=True).
            y = self.conv1(self.bn1(x))
            y = self.conv2(F.relu(self.bn2(y)))
        else:
            y = self.conv1(F.relu(self.bn1(x)))
        return self.bn_out(y)


class Stage(nn.Module):
    def __init__(self, cin, units, growth, bottleneck):
        super().__init__()
        chans = [cin]
        mods = []
        for _ in range(units):
            mods.append(Unit(exp_channels(chans), growth, bottleneck))
            chans.append(growth)
        self.units = nn.ModuleList(mods)
        self.out_channels = exp_channels(chans)

    def forward(self, x):
        outs = [x]
        for unit in self.units:
            outs.append(unit(x))
            x = torch.cat(exp_sources(outs), dim=1)
        return x


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin, eps=2e-5, momentum=0.1)
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2, 2)


class Head(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin, eps=1e-5, momentum=0.1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)).mean(dim=(2, 3)))


class SeedSparseNet(nn.Module):
    """The seed notebook's 2018-02-20 SparseNet (3 blocks, stem conv3x3(k))."""

    def __init__(self, depth, growth, bottleneck, reduction=0.5, classes=10, blocks=3, in_channels=3):
        super().__init__()
        units = (depth - 4) // blocks
        if bottleneck:
            units //= 2
        else:
            reduction = 1.0
        self.stem = nn.Module()
        self.stem.conv = nn.Conv2d(in_channels, growth, 3, padding=1)
        stages, transitions = [], []
        c = growth
        for b in range(blocks):
            stage = Stage(c, units, growth, bottleneck)
            stages.append(stage)
            c = stage.out_channels
            if b != blocks - 1:
                cout = int(c * reduction)
                transitions.append(Transition(c, cout))
                c = cout
        self.stages = nn.ModuleList(stages)
        self.transitions = nn.ModuleList(transitions)
        self.head = Head(c, classes)

    def forward(self, x):
        x = self.stem.conv(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        return self.head(x)


def load_ours(args, who):
    """The network of `args` (depth, growth, bottleneck) with sparsenet's
    weights from `args.dir`, and the input and logits sparsenet wrote there;
    exits naming `who` if the weights do not fit the model."""
    model = SeedSparseNet(args.depth, args.growth, args.bottleneck)
    weights = load_file(f"{args.dir}/weights.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"{who}: weights do not match the PyTorch model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    io = load_file(f"{args.dir}/io.safetensors")
    return model, io["input"], io["logits"]


def median_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="folder with weights.safetensors and io.safetensors from bench_cpu")
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--growth", type=int, required=True)
    ap.add_argument("--bottleneck", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--latency-reps", type=int, default=50)
    ap.add_argument("--labels-seed", type=int, default=0)
    ap.add_argument("--memory-format", choices=["contiguous", "channels_last"], default="contiguous",
                    help="PyTorch's tensor layout: channels_last (NHWC) is oneDNN's faster layout on most CPUs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, x, ours = load_ours(args, "bench_torch")
    if args.memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    # Same function: eval-mode logits on the same weights and input.
    model.eval()
    with torch.no_grad():
        logits = model(x)
    rel = ((logits - ours).abs().max() / ours.abs().max()).item()
    if not rel < 1e-4:
        sys.exit(f"bench_torch: logits differ from sparsenet's (max relative error {rel:.3g})")

    g = torch.Generator().manual_seed(args.labels_seed)
    labels = torch.randint(0, 10, (x.shape[0],), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()

    train_ms = median_ms(train_step, args.steps, 2)
    peak_train = peak_rss_mib()
    model.eval()

    @torch.no_grad()
    def infer(inp):
        return model(inp)

    eval_ms = median_ms(lambda: infer(x), args.evals, 2)
    one = x[:1].clone()  # keeps x's memory format
    lat_ms = median_ms(lambda: infer(one), args.latency_reps, 5)
    print(json.dumps({
        "side": "pytorch", "memory_format": args.memory_format, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "batch": x.shape[0], "logits_max_rel_err": rel, "train_step_ms": round(train_ms, 3),
        "eval_ms": round(eval_ms, 3), "latency1_ms": round(lat_ms, 4),
        "peak_rss_train_mib": round(peak_train, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    }))


if __name__ == "__main__":
    main()
