#!/usr/bin/env python3
"""Generate reference fixtures for the SparseNet proc-macro from the seed MXNet Gluon code.

Usage:  python3 scripts/make_fixtures.py        (writes into tests/fixtures/)

The networks are built with the seed notebook's own classes, copied verbatim into
scripts/seed_v1.py ("before 2018-01-30" version, notebook cell In [164]) and
scripts/seed_v2.py ("2018-02-20" version).  Everything is computed in float64; every
weight, running statistic and input is first rounded to a float32-representable value,
so an f32 model loaded from <cfg>.weights.safetensors holds exactly the same numbers.

Per configuration <cfg> this writes
  tests/fixtures/<cfg>.weights.safetensors  all parameters + BN running stats (float32),
                                            under our names, PyTorch layouts
  tests/fixtures/<cfg>.io.safetensors       input (f32), labels (i64), and (f64)
                                            logits_eval, logits_train, loss_train,
                                            grad.input, grad.<param>,
                                            updated.<bn>.running_mean/.running_var
and tests/fixtures/manifest.json describing all configurations.

Our names (stages/units 0-based):
  seed_v2: stem.conv; stages.s.units.u.{bn1,conv1,[bn2,conv2,]bn_out};
           transitions.s.{bn,conv}; head.bn; head.fc
  seed_v1: stem.bn, stem.conv; stages.s.units.u.{bn1,conv1,bn2,conv2};
           transitions.s.{bn,conv}; head.fc
"""
import contextlib
import io
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, HERE)

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402
from mxnet.gluon import nn  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

with contextlib.redirect_stdout(io.StringIO()):
    import seed_v1  # noqa: E402
    import seed_v2  # noqa: E402

DTYPE = "float64"
BATCH = 3

CONFIGS = [
    dict(name="v2_d22_k4", version="v2", seed=1001, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=3, depth=22, reduction=0.5,
                   droprate=0.0, growth_rate=4, bottleneck=False)),
    dict(name="v2_d16_k6", version="v2", seed=1002, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=3, depth=16, reduction=0.5,
                   droprate=0.0, growth_rate=6, bottleneck=False)),
    dict(name="v2_bc_d40_k4", version="v2", seed=1003, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=3, depth=40, reduction=0.5,
                   droprate=0.0, growth_rate=4, bottleneck=True)),
    dict(name="v2_bc_d28_k6", version="v2", seed=1004, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=3, depth=28, reduction=0.5,
                   droprate=0.0, growth_rate=6, bottleneck=True)),
    dict(name="v2_d10_k5_mnist", version="v2", seed=1005, input_chw=[1, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=2, depth=10, reduction=0.5,
                   droprate=0.0, growth_rate=5, bottleneck=False)),
    dict(name="v1_b3_l6_k4_c8", version="v1", seed=2001, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=3, num_layers=6, growth_rate=4,
                   init_channels=8)),
    dict(name="v1_b2_l5_k6_c5", version="v1", seed=2002, input_chw=[3, 8, 8],
         args=dict(num_classes=10, num_sparseblk_count=2, num_layers=5, growth_rate=6,
                   init_channels=5)),
]

# Extra configuration whose parameter count is only reported (not written as fixture).
COUNT_ONLY = dict(name="v2_d40_k12_cifar", version="v2", input_chw=[3, 32, 32],
                  args=dict(num_classes=10, num_sparseblk_count=3, depth=40,
                            growth_rate=12, bottleneck=False))


@contextlib.contextmanager
def quiet():
    """The seed's SparseBlock prints 'SparseBlk - ' on every forward; silence it."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def f32_round(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------------------
# Structure walk: map the Gluon blocks to our names.
# Returns an ordered list of (our_layer_name, kind, block) with kind in {bn, conv, fc}.
# --------------------------------------------------------------------------------------
def _brc(seq, relu=True):
    """BN_ReLU_CONV HybridSequential -> (bn, conv)."""
    kids = list(seq)
    if relu:
        assert len(kids) == 3 and isinstance(kids[1], nn.Activation), kids
    else:
        assert len(kids) == 2, kids
    assert isinstance(kids[0], nn.BatchNorm) and isinstance(kids[-1], nn.Conv2D), kids
    return kids[0], kids[-1]


def walk_v2(net, args):
    layers = []
    S = args["num_sparseblk_count"]
    bottleneck = args.get("bottleneck", False)
    top = list(net.net)
    assert len(top) == 1 + S + 3, top
    assert isinstance(top[0], nn.Conv2D)
    layers.append(("stem.conv", "conv", top[0]))
    stages = []
    for s in range(S):
        b2 = list(top[1 + s])
        blk = b2[0]
        assert isinstance(blk, seed_v2.SparseBlock)
        units = list(blk.net)
        for u, unit in enumerate(units):
            kids = list(unit)
            p = "stages.%d.units.%d." % (s, u)
            if bottleneck:
                assert len(kids) == 3, kids
                bn1, conv1 = _brc(kids[0], relu=False)   # erase_relu=True
                bn2, conv2 = _brc(kids[1], relu=True)
                layers += [(p + "bn1", "bn", bn1), (p + "conv1", "conv", conv1),
                           (p + "bn2", "bn", bn2), (p + "conv2", "conv", conv2)]
            else:
                assert len(kids) == 2, kids
                bn1, conv1 = _brc(kids[0], relu=True)
                layers += [(p + "bn1", "bn", bn1), (p + "conv1", "conv", conv1)]
            assert isinstance(kids[-1], nn.BatchNorm)
            layers.append((p + "bn_out", "bn", kids[-1]))
        if s != S - 1:
            assert len(b2) == 2
            tkids = list(b2[1])
            assert isinstance(tkids[-1], nn.AvgPool2D)
            bn, conv = _brc(tkids[0], relu=True)
            layers += [("transitions.%d.bn" % s, "bn", bn),
                       ("transitions.%d.conv" % s, "conv", conv)]
        else:
            assert len(b2) == 1
        stages.append(dict(stage=top[1 + s], block=blk, units=len(units)))
    assert isinstance(top[1 + S], nn.BatchNorm)
    assert isinstance(top[2 + S], nn.Activation)
    head = list(top[3 + S])
    assert isinstance(head[0], nn.GlobalAvgPool2D) and isinstance(head[1], nn.Dense)
    layers += [("head.bn", "bn", top[1 + S]), ("head.fc", "fc", head[1])]
    return layers, stages


def walk_v1(net, args):
    layers = []
    S = args["num_sparseblk_count"]
    top = list(net.net)
    assert len(top) == 1 + S + 1, top
    stem = list(top[0])
    assert len(stem) == 1
    bn, conv = _brc(stem[0])
    layers += [("stem.bn", "bn", bn), ("stem.conv", "conv", conv)]
    stages = []
    for s in range(S):
        b2 = list(top[1 + s])
        blk = b2[0]
        assert isinstance(blk, seed_v1.SparseBlock)
        units = list(blk.net)
        for u, unit in enumerate(units):
            assert isinstance(unit, seed_v1.SparseUnit)
            kids = list(unit.unit)
            assert len(kids) == 2
            bn1, conv1 = _brc(kids[0])
            bn2, conv2 = _brc(kids[1])
            p = "stages.%d.units.%d." % (s, u)
            layers += [(p + "bn1", "bn", bn1), (p + "conv1", "conv", conv1),
                       (p + "bn2", "bn", bn2), (p + "conv2", "conv", conv2)]
        if s != S - 1:
            assert len(b2) == 2
            tkids = list(b2[1])
            assert isinstance(tkids[-1], nn.AvgPool2D)
            bn, conv = _brc(tkids[0])
            layers += [("transitions.%d.bn" % s, "bn", bn),
                       ("transitions.%d.conv" % s, "conv", conv)]
        else:
            assert len(b2) == 1
        stages.append(dict(stage=top[1 + s], block=blk, units=len(units)))
    head = list(top[1 + S])
    assert isinstance(head[0], nn.GlobalAvgPool2D) and isinstance(head[1], nn.Dense)
    layers.append(("head.fc", "fc", head[1]))
    return layers, stages


def param_table(layers):
    """Ordered list of (our_param_name, gluon Parameter, role)."""
    rows = []
    for lname, kind, blk in layers:
        if kind == "bn":
            rows += [(lname + ".weight", blk.gamma, "gamma"),
                     (lname + ".bias", blk.beta, "beta"),
                     (lname + ".running_mean", blk.running_mean, "running_mean"),
                     (lname + ".running_var", blk.running_var, "running_var")]
        else:
            rows += [(lname + ".weight", blk.weight, kind + "_weight")]
            assert blk.bias is not None, lname
            rows.append((lname + ".bias", blk.bias, "bias"))
    return rows


def build(cfg, dtype=DTYPE):
    mod = seed_v2 if cfg["version"] == "v2" else seed_v1
    with quiet():
        net = mod.SparseNet(**cfg["args"])
        net.initialize()
        net.cast(dtype)
        x = nd.zeros((BATCH,) + tuple(cfg["input_chw"]), dtype=dtype)
        net(x)  # materialise deferred shapes
    walk = walk_v2 if cfg["version"] == "v2" else walk_v1
    layers, stages = walk(net, cfg["args"])
    rows = param_table(layers)
    # every Gluon parameter must be mapped exactly once
    gluon_params = list(net.collect_params().values())
    mapped = [p for _, p, _ in rows]
    assert len(set(map(id, mapped))) == len(mapped)
    assert set(map(id, mapped)) == set(map(id, gluon_params)), "unmapped parameters"
    return net, layers, stages, rows


def counts(rows):
    trainable = sum(int(np.prod(p.shape)) for _, p, _ in rows if p.grad_req != "null")
    total = sum(int(np.prod(p.shape)) for _, p, _ in rows)
    return trainable, total


def randomise(rows, rs):
    vals = {}
    for name, p, role in rows:
        shape = p.shape
        if role == "conv_weight":
            fan_in = int(np.prod(shape[1:]))
            v = rs.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        elif role == "fc_weight":
            v = rs.normal(0.0, np.sqrt(2.0 / shape[1]), size=shape)
        elif role == "bias":
            v = rs.normal(0.0, 0.1, size=shape)
        elif role == "gamma":
            v = rs.uniform(0.5, 1.5, size=shape)
        elif role == "beta":
            v = rs.normal(0.0, 0.2, size=shape)
        elif role == "running_mean":
            v = rs.normal(0.0, 0.3, size=shape)
        elif role == "running_var":
            v = rs.uniform(0.5, 2.0, size=shape)
        else:
            raise ValueError(role)
        v = f32_round(v)
        p.set_data(nd.array(v, dtype=DTYPE))
        vals[name] = v
    return vals


def run_config(cfg):
    net, layers, stages, rows = build(cfg)
    rs = np.random.RandomState(cfg["seed"])
    vals = randomise(rows, rs)
    C, H, W = cfg["input_chw"]
    ncls = cfg["args"]["num_classes"]
    x_np = f32_round(rs.normal(0.0, 1.0, size=(BATCH, C, H, W)))
    labels = rs.randint(0, ncls, size=(BATCH,)).astype(np.int64)

    # shapes of the materialised seed net must be what we write
    for name, p, _ in rows:
        assert tuple(p.data().shape) == vals[name].shape, name
        assert p.data().dtype == np.float64, name

    # ---- eval forward (BN uses running statistics) ----
    x = nd.array(x_np, dtype=DTYPE)
    with quiet():
        logits_eval = net(x).asnumpy()
    for name, p, _ in rows:  # eval must not touch anything
        assert np.array_equal(p.data().asnumpy(), vals[name]), name

    # ---- training forward/backward ----
    # hooks capture each BN's input (to check the running_var update rule) and
    # the per-stage output shapes
    bn_inputs = {}
    hooks = []
    for lname, kind, blk in layers:
        if kind == "bn":
            def h(b, inp, out, lname=lname):
                bn_inputs[lname] = inp[0].asnumpy()
            hooks.append(blk.register_forward_hook(h))
    stage_shapes = []
    for st in stages:
        def hb(b, inp, out, i=len(stage_shapes)):
            stage_shapes[i]["block_out"] = list(out.shape)
        def hs(b, inp, out, i=len(stage_shapes)):
            stage_shapes[i]["stage_out"] = list(out.shape)
        stage_shapes.append({})
        hooks.append(st["block"].register_forward_hook(hb))
        hooks.append(st["stage"].register_forward_hook(hs))

    x.attach_grad()
    lbl = nd.array(labels.astype(np.float64), dtype=DTYPE)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    with autograd.record(train_mode=True):
        with quiet():
            out = net(x)
        loss = loss_fn(out, lbl).mean()
    loss.backward()
    for hk in hooks:
        hk.detach()

    logits_train = out.asnumpy()
    loss_train = loss.asnumpy().reshape(1)
    iof = {
        "input": x_np.astype(np.float32),
        "labels": labels,
        "logits_eval": logits_eval.astype(np.float64),
        "logits_train": logits_train.astype(np.float64),
        "loss_train": loss_train.astype(np.float64),
        "grad.input": x.grad.asnumpy().astype(np.float64),
    }
    for name, p, role in rows:
        if p.grad_req != "null":
            g = p.grad().asnumpy().astype(np.float64)
            assert g.shape == vals[name].shape
            iof["grad." + name] = g

    # ---- running-stat update check ----
    bn_info = []
    # MXNet stores the momentum as a C float: the effective value is float32(0.9).
    # Check the update against both the f64 and the f32 momentum, biased/unbiased var.
    fit = {}
    for lname, kind, blk in layers:
        if kind != "bn":
            continue
        mom = blk._kwargs["momentum"]
        eps = blk._kwargs["eps"]
        new_m = blk.running_mean.data().asnumpy()
        new_v = blk.running_var.data().asnumpy()
        iof["updated.%s.running_mean" % lname] = new_m.astype(np.float64)
        iof["updated.%s.running_var" % lname] = new_v.astype(np.float64)
        xin = bn_inputs[lname]
        old_m = vals[lname + ".running_mean"]
        old_v = vals[lname + ".running_var"]
        bm = xin.mean(axis=(0, 2, 3))
        for mtag, m in (("mom_f64", float(mom)), ("mom_f32", float(np.float32(mom)))):
            k = "mean_" + mtag
            fit[k] = max(fit.get(k, 0.0), float(np.abs(m * old_m + (1 - m) * bm - new_m).max()))
            for ddof in (0, 1):
                bv = xin.var(axis=(0, 2, 3), ddof=ddof)
                k = "var_ddof%d_%s" % (ddof, mtag)
                err = float(np.abs(m * old_v + (1 - m) * bv - new_v).max())
                fit[k] = max(fit.get(k, 0.0), err)
        bn_info.append(dict(name=lname, eps=eps, momentum=mom,
                            channels=int(blk.gamma.shape[0]),
                            reduced_elems_per_channel=int(xin.size // xin.shape[1])))

    # ---- write ----
    weights = {name: vals[name].astype(np.float32) for name, _, _ in rows}
    wpath = os.path.join(OUT_DIR, cfg["name"] + ".weights.safetensors")
    iopath = os.path.join(OUT_DIR, cfg["name"] + ".io.safetensors")
    save_file(weights, wpath)
    save_file({k: np.ascontiguousarray(v) for k, v in iof.items()}, iopath)
    for path in (wpath, iopath):  # safetensors writes 0600 temp files; make them readable
        os.chmod(path, 0o644)

    # ---- load back and verify ----
    wl = load_file(wpath)
    assert set(wl) == set(weights)
    for name, p, _ in rows:
        assert wl[name].dtype == np.float32 and tuple(wl[name].shape) == tuple(p.shape), name
        assert np.array_equal(wl[name].astype(np.float64), vals[name]), name
    il = load_file(iopath)
    assert set(il) == set(iof)
    for k, v in iof.items():
        assert il[k].dtype == v.dtype and il[k].shape == v.shape and np.array_equal(il[k], v), k

    trainable, total = counts(rows)
    stem_name = "stem.conv"
    stem_ch = int(vals[stem_name + ".weight"].shape[0])
    stage_entries = []
    for s, (st, shp) in enumerate(zip(stages, stage_shapes)):
        stage_entries.append(dict(
            units=st["units"],
            block_out_channels=shp["block_out"][1],
            block_out_shape=shp["block_out"],
            out_channels=shp["stage_out"][1],
            out_shape=shp["stage_out"],
            has_transition=s != len(stages) - 1,
        ))
    eps_set = sorted({b["eps"] for b in bn_info})
    mom_set = sorted({b["momentum"] for b in bn_info})
    entry = dict(
        name=cfg["name"],
        version=cfg["version"],
        seed_class="seed_%s.SparseNet" % cfg["version"],
        args=cfg["args"],
        input_shape=[BATCH] + list(cfg["input_chw"]),
        num_classes=ncls,
        rng_seed=cfg["seed"],
        compute_dtype=DTYPE,
        trainable_params=trainable,
        total_params_incl_running_stats=total,
        num_tensors=len(rows),
        stem_out_channels=stem_ch,
        stages=stage_entries,
        logits_shape=list(logits_eval.shape),
        bn_eps_values=eps_set,
        bn_momentum_values=mom_set,
        bn=bn_info,
        running_var_update_max_err=fit,
        weights_file=os.path.basename(wpath),
        io_file=os.path.basename(iopath),
        weights_bytes=os.path.getsize(wpath),
        io_bytes=os.path.getsize(iopath),
    )
    return entry


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    mx.random.seed(0)
    manifest = dict(
        generator="scripts/make_fixtures.py",
        mxnet_version=mx.__version__,
        numpy_version=np.__version__,
        compute_dtype=DTYPE,
        batch=BATCH,
        notes=[
            "weights.safetensors: float32, every value exactly representable; "
            "io.safetensors: input f32, labels i64, everything else f64 computed in float64",
            "loss = mean over batch of softmax cross-entropy (gluon SoftmaxCrossEntropyLoss)",
            "training forward/backward uses the same weights as the eval forward; "
            "updated.* = BN running stats after that one training forward",
            "BN running stats update (checked): new = m*old + (1-m)*batch_stat with the "
            "BIASED batch variance (ddof=0) and m = float32(0.9) = 0.89999997615814208984375 "
            "(MXNet keeps momentum as a C float); see running_var_update_max_err",
            "MXNet updates the BN running stats in the BACKWARD pass of BatchNorm, not in the "
            "forward; updated.* were read after loss.backward()",
            "no training-mode forward without backward is recorded here",
        ],
        configs=[],
    )
    for cfg in CONFIGS:
        e = run_config(cfg)
        manifest["configs"].append(e)
        fit = e["running_var_update_max_err"]
        print("%-18s trainable=%7d  incl_running_stats=%7d  stem=%d stages(block_out->out)=%s  "
              "eps=%s momentum=%s  running_var err(mom f32) ddof0=%.1e ddof1=%.1e  files=%d+%d bytes"
              % (e["name"], e["trainable_params"], e["total_params_incl_running_stats"],
                 e["stem_out_channels"],
                 ",".join("%d->%d" % (s["block_out_channels"], s["out_channels"])
                          for s in e["stages"]),
                 e["bn_eps_values"], e["bn_momentum_values"], fit["var_ddof0_mom_f32"],
                 fit["var_ddof1_mom_f32"],
                 e["weights_bytes"], e["io_bytes"]))

    # count-only reference network
    _, _, _, rows = build(dict(COUNT_ONLY, seed=0))
    t, tot = counts(rows)
    manifest["count_only"] = dict(COUNT_ONLY, trainable_params=t,
                                  total_params_incl_running_stats=tot)
    print("%-18s trainable=%7d  incl_running_stats=%7d  (count only: seed_v2 SparseNet(10, 3, "
          "depth=40, growth_rate=12, bottleneck=False), input 3x32x32)"
          % (COUNT_ONLY["name"], t, tot))

    with open(os.path.join(OUT_DIR, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")


if __name__ == "__main__":
    main()
