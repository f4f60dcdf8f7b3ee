//! The GPU program of each network (generated CUDA C kernels and launch
//! sequences) against the CPU path, run on the CPU stand-in
//! (`gpu::emulator`): the CUDA source compiled as C++ and executed block by
//! block. What this checks: every kernel's arithmetic, the launch order, the
//! memory plan (arena offsets, gradient liveness, first-writer stores), the
//! BatchNorm folding and running-statistics update, the loss and SGD.
//! What it cannot check: anything that depends on real GPU execution
//! (speed, NVRTC-specific code generation, the CUDA graph); those run in
//! `scripts/gpu-check.sh` on the GPU machine.

mod common;

use common::rel_err;
use rand::{Rng, SeedableRng};
use sparsenet::prelude::*;
use sparsenet::runtime::gpu::{emulator::Emulator, GpuModel, GpuNetwork};
use sparsenet::runtime::ndarray::{Array2, Array4};
use sparsenet::runtime::train::{softmax_cross_entropy_into, Sgd, SgdState};

sparsenet! {
    struct V2D16K6 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 16, growth: 6 }
    struct V2BcD28K6 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 28, growth: 6, bottleneck: true, reduction: 0.5 }
    struct V1B2L5K6C5 { style: seed_2018_01_30, input: [3, 8, 8], classes: 10, blocks: 2, units: 5, growth: 6, stem: bn_relu_conv3x3(5) }
    struct PaperDenseImagenet {
        style: paper, input: [2, 15, 13], classes: 3, units: [2, 3], growth: [3, 4],
        bottleneck: true, aggregation: dense, stem: imagenet(4),
    }
    struct TinySparse { style: paper, input: [1, 10, 10], classes: 5, units: [6, 2], growth: 3, aggregation: exponential(3) }
    struct WithDropout { style: paper, input: [3, 8, 8], classes: 4, units: [2, 2], growth: 3, dropout: 0.2 }
}

/// A model with random BatchNorm parameters and running statistics, so that
/// no BN is the identity and eval mode differs from train mode.
fn randomised<M: Model<f32>>(seed: u64) -> M {
    let mut m = M::new(seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    let (params, state) = m.stores_mut();
    for t in M::tensors() {
        let is_bn = t.name.ends_with("weight") && t.shape.len() == 1
            || t.name.ends_with("bias") && t.shape.len() == 1;
        let range = t.offset..t.offset + t.len();
        match t.store {
            sparsenet::runtime::Store::Param if is_bn => {
                for v in &mut params[range] {
                    *v += rng.gen_range(-0.3..0.3);
                }
            }
            sparsenet::runtime::Store::State => {
                let var = t.name.ends_with("running_var");
                for v in &mut state[range] {
                    *v = if var {
                        rng.gen_range(0.5..1.5)
                    } else {
                        rng.gen_range(-0.2..0.2)
                    };
                }
            }
            _ => {}
        }
    }
    m
}

fn input<M: NetworkSpec>(n: usize, seed: u64) -> (Array4<f32>, Vec<usize>) {
    let [c, h, w] = M::INPUT;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = Array4::from_shape_fn((n, c, h, w), |_| rng.gen_range(-1.0..1.0));
    let labels = (0..n).map(|_| rng.gen_range(0..M::CLASSES)).collect();
    (x, labels)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn gpu<M: GpuNetwork + Model<f32>>(m: &M, n: usize) -> GpuModel<M, Emulator> {
    GpuModel::new(Emulator::new(), m, n).unwrap_or_else(|e| panic!("{e}"))
}

/// Eval and train logits, loss, every gradient, running statistics, and
/// three SGD steps (Nesterov, weight decay, label smoothing) against the CPU.
fn parity<M: GpuNetwork + Model<f32> + Clone>(tol_logits: f64, tol_grads: f64) {
    let n = 5;
    let cpu0: M = randomised(7);
    let (x, labels) = input::<M>(n, 11);

    // Inference.
    let mut cpu = cpu0.clone();
    let mut dev = gpu(&cpu0, n);
    let want = cpu.forward(x.view(), Mode::Eval).unwrap();
    let got = dev.forward(x.view(), Mode::Eval).unwrap();
    let e = rel_err(
        &f64s(got.as_slice().unwrap()),
        &f64s(want.as_slice().unwrap()),
    );
    assert!(e < tol_logits, "{}: eval logits differ by {e:e}", M::NAME);
    // A smaller batch through the same memory.
    let want2 = cpu
        .forward(
            x.slice(sparsenet::runtime::ndarray::s![..2, .., .., ..]),
            Mode::Eval,
        )
        .unwrap();
    let got2 = dev
        .forward(
            x.slice(sparsenet::runtime::ndarray::s![..2, .., .., ..]),
            Mode::Eval,
        )
        .unwrap();
    let e = rel_err(
        &f64s(got2.as_slice().unwrap()),
        &f64s(want2.as_slice().unwrap()),
    );
    assert!(
        e < tol_logits,
        "{}: batch-2 eval logits differ by {e:e}",
        M::NAME
    );

    // Training forward and backward.
    let smoothing = 0.1;
    let mut cpu = cpu0.clone();
    let mut dev = gpu(&cpu0, n);
    let mut grads = vec![0.0f32; M::PARAMETERS];
    let mut loss = 0.0f32;
    let mut correct = 0;
    let want_logits = cpu
        .forward_backward(x.view(), Mode::Train, &mut grads, &mut |logits| {
            let mut g = Array2::zeros(logits.raw_dim());
            let (l, c) =
                softmax_cross_entropy_into(logits.view(), &labels, smoothing, g.view_mut())
                    .unwrap();
            loss = l;
            correct = c;
            g
        })
        .unwrap();
    drop(want_logits);
    let out = dev.forward_backward(x.view(), &labels, smoothing).unwrap();
    let e = (out.loss - loss as f64).abs() / (loss as f64).abs();
    assert!(
        e < tol_logits,
        "{}: loss {} vs CPU {loss}",
        M::NAME,
        out.loss
    );
    assert_eq!(out.correct, correct, "{}: correct predictions", M::NAME);
    let got = dev.gradients().unwrap();
    // Relative to the tensor's largest gradient, floored at 1% of the
    // network's largest: a bias feeding a training-mode BatchNorm has a
    // gradient of zero in exact arithmetic, and rounding noise relative to
    // zero means nothing.
    let floor = 1e-2 * grads.iter().fold(0.0f64, |m, &g| m.max(g.abs() as f64));
    let mut worst = (0.0, "");
    for t in M::tensors()
        .iter()
        .filter(|t| t.store == sparsenet::runtime::Store::Param)
    {
        let r = t.offset..t.offset + t.len();
        let scale = grads[r.clone()]
            .iter()
            .fold(floor, |m, &g| m.max(g.abs() as f64));
        let diff = got[r.clone()]
            .iter()
            .zip(&grads[r])
            .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
        if diff / scale > worst.0 {
            worst = (diff / scale, t.name);
        }
    }
    eprintln!(
        "{}: worst gradient error {:.1e} ({})",
        M::NAME,
        worst.0,
        worst.1
    );
    assert!(
        worst.0 < tol_grads,
        "{}: gradient of {} differs by {:e}",
        M::NAME,
        worst.1,
        worst.0
    );
    let e = rel_err(&f64s(&dev.state().unwrap()), &f64s(cpu.state()));
    assert!(
        e < tol_logits,
        "{}: running statistics differ by {e:e}",
        M::NAME
    );

    // Three SGD steps.
    let opt = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    let mut cpu = cpu0.clone();
    let mut dev = gpu(&cpu0, n);
    let mut st = SgdState {
        velocity: vec![0.0f32; M::PARAMETERS],
    };
    for step in 0..3 {
        let lr = 0.05 + 0.01 * step as f64;
        cpu.forward_backward(x.view(), Mode::Train, &mut grads, &mut |logits| {
            let mut g = Array2::zeros(logits.raw_dim());
            softmax_cross_entropy_into(logits.view(), &labels, smoothing, g.view_mut()).unwrap();
            g
        })
        .unwrap();
        opt.step(&mut st, cpu.params_mut(), &grads, lr);
        dev.train_step(x.view(), &labels, &opt, lr, smoothing)
            .unwrap();
    }
    let e = rel_err(&f64s(&dev.params().unwrap()), &f64s(cpu.params()));
    assert!(
        e < tol_grads,
        "{}: parameters after 3 SGD steps differ by {e:e}",
        M::NAME
    );
    let e = rel_err(&f64s(&dev.velocity().unwrap()), &f64s(&st.velocity));
    assert!(
        e < tol_grads,
        "{}: velocity after 3 SGD steps differs by {e:e}",
        M::NAME
    );
}

#[test]
fn seed_2018_02_20_plain() {
    parity::<V2D16K6>(1e-5, 1e-4);
}

#[test]
fn seed_2018_02_20_bottleneck() {
    parity::<V2BcD28K6>(1e-5, 1e-4);
}

#[test]
fn seed_2018_01_30() {
    parity::<V1B2L5K6C5>(1e-5, 1e-4);
}

#[test]
fn paper_dense_imagenet_stem_max_pool() {
    parity::<PaperDenseImagenet>(1e-5, 1e-4);
}

#[test]
fn paper_exponential_base_3_grayscale() {
    parity::<TinySparse>(1e-5, 1e-4);
}

#[test]
fn dropout_is_refused_with_a_reason() {
    let m = WithDropout::<f32>::new(0);
    let err = GpuModel::new(Emulator::new(), &m, 4)
        .err()
        .expect("dropout is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("WithDropout") && msg.contains("dropout"),
        "{msg}"
    );
}

#[test]
fn bad_batch_and_labels_are_errors() {
    let m: V2D16K6 = V2D16K6::new(0);
    let mut dev = gpu(&m, 2);
    let (x, labels) = input::<V2D16K6>(3, 1);
    let err = dev.forward(x.view(), Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("1..=2") && err.contains("found 3"), "{err}");
    let (x, _) = input::<V2D16K6>(2, 1);
    let err = dev
        .forward_backward(x.view(), &[0, 10], 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("0..10"), "{err}");
    drop(labels);
}
