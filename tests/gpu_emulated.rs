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
use sparsenet::runtime::Float;

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

    // The networks at full depth and width, on 16x16 input to keep
    // the emulated (scalar, one thread at a time) kernels affordable.
    struct SeedV2Depth40At16 { style: seed_2018_02_20, input: [3, 16, 16], classes: 10, depth: 40, growth: 12 }
    struct SeedV1NotebookAt16 {
        style: seed_2018_01_30, input: [3, 16, 16], classes: 10,
        blocks: 3, units: 12, growth: 24, stem: bn_relu_conv3x3(16),
    }
    struct SparseNetBc100At16 { style: paper, input: [3, 16, 16], classes: 10, depth: 100, growth: 24, bottleneck: true }
}

/// A model with random BatchNorm parameters and running statistics, so that
/// no BN is the identity and eval mode differs from train mode.
fn randomised<T: Float, M: Model<T>>(seed: u64) -> M {
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
                    *v += T::from_f64c(rng.gen_range(-0.3..0.3));
                }
            }
            sparsenet::runtime::Store::State => {
                let var = t.name.ends_with("running_var");
                for v in &mut state[range] {
                    *v = T::from_f64c(if var {
                        rng.gen_range(0.5..1.5)
                    } else {
                        rng.gen_range(-0.2..0.2)
                    });
                }
            }
            _ => {}
        }
    }
    m
}

fn input<T: Float, M: NetworkSpec>(n: usize, seed: u64) -> (Array4<T>, Vec<usize>) {
    let [c, h, w] = M::INPUT;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = Array4::from_shape_fn((n, c, h, w), |_| T::from_f64c(rng.gen_range(-1.0..1.0)));
    let labels = (0..n).map(|_| rng.gen_range(0..M::CLASSES)).collect();
    (x, labels)
}

fn f64s<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.to_f64c()).collect()
}

fn gpu<T: Float, M: GpuNetwork + Model<T>>(m: &M, n: usize) -> GpuModel<M, Emulator<T>, T> {
    GpuModel::new(Emulator::new(), m, n).unwrap_or_else(|e| panic!("{e}"))
}

/// Eval and train logits, loss, every gradient, running statistics, and
/// SGD steps (Nesterov, weight decay, label smoothing) against the CPU.
fn parity<T: Float, M: GpuNetwork + Model<T> + Clone>(tol_logits: f64, tol_grads: f64) {
    // In f32, later steps start from parameters that already differ by
    // rounding, which these small-batch BatchNorm networks amplify (the f64
    // run shows the steps themselves agree), so f32 checks one step.
    let steps = if std::mem::size_of::<T>() == 4 { 1 } else { 3 };
    parity_with::<T, M>(5, steps, tol_logits, tol_grads)
}

fn parity_with<T: Float, M: GpuNetwork + Model<T> + Clone>(
    n: usize,
    sgd_steps: usize,
    tol_logits: f64,
    tol_grads: f64,
) {
    let cpu0: M = randomised(7);
    let (x, labels) = input::<T, M>(n, 11);

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
        "{}: batch-1 eval logits differ by {e:e}",
        M::NAME
    );

    // Training forward and backward.
    let smoothing = 0.1;
    let mut cpu = cpu0.clone();
    let mut dev = gpu(&cpu0, n);
    let mut grads = vec![T::zero(); M::PARAMETERS];
    let mut loss = T::zero();
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
    let e = (out.loss - loss.to_f64c()).abs() / loss.to_f64c().abs();
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
    let floor = 1e-2 * grads.iter().fold(0.0f64, |m, &g| m.max(g.to_f64c().abs()));
    let mut worst = (0.0, "");
    for t in M::tensors()
        .iter()
        .filter(|t| t.store == sparsenet::runtime::Store::Param)
    {
        let r = t.offset..t.offset + t.len();
        let scale = grads[r.clone()]
            .iter()
            .fold(floor, |m, &g| m.max(g.to_f64c().abs()));
        let diff = got[r.clone()]
            .iter()
            .zip(&grads[r])
            .fold(0.0f64, |m, (&a, &b)| {
                m.max((a.to_f64c() - b.to_f64c()).abs())
            });
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

    if sgd_steps == 0 {
        return;
    }
    // SGD steps.
    let opt = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    };
    let mut cpu = cpu0.clone();
    let mut dev = gpu(&cpu0, n);
    let mut st = SgdState {
        velocity: vec![T::zero(); M::PARAMETERS],
    };
    for step in 0..sgd_steps {
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
        "{}: parameters after the SGD steps differ by {e:e}",
        M::NAME
    );
    let e = rel_err(&f64s(&dev.velocity().unwrap()), &f64s(&st.velocity));
    assert!(
        e < tol_grads,
        "{}: velocity after the SGD steps differs by {e:e}",
        M::NAME
    );
}

/// Each network in f32 (what the GPU runs: rounding-level agreement) and
/// in f64 (agreement to ~1e-10: any logic error in a kernel, a launch out of
/// order or an overlap in the memory plan shows up far above that).
macro_rules! parity_tests {
    ($($name:ident: $net:ident,)*) => {$(
        #[test]
        fn $name() {
            parity::<f64, $net<f64>>(1e-10, 1e-8);
            parity::<f32, $net<f32>>(1e-5, 1e-4);
        }
    )*};
}

parity_tests! {
    seed_2018_02_20_plain: V2D16K6,
    seed_2018_02_20_bottleneck: V2BcD28K6,
    seed_2018_01_30: V1B2L5K6C5,
    paper_dense_imagenet_stem_max_pool: PaperDenseImagenet,
    paper_exponential_base_3_grayscale: TinySparse,
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
    let m: V2D16K6<f32> = V2D16K6::new(0);
    let mut dev = gpu(&m, 2);
    let (x, labels) = input::<f32, V2D16K6>(3, 1);
    let err = dev.forward(x.view(), Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("1..=2") && err.contains("found 3"), "{err}");
    let (x, _) = input::<f32, V2D16K6>(2, 1);
    let err = dev
        .forward_backward(x.view(), &[0, 10], 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("0..10"), "{err}");
    drop(labels);
}

/// The full-size networks (on 16x16 input, batch 2): in f64 every
/// logit, gradient, running statistic and one SGD step agree to ~1e-10. In
/// f32 the logits agree to rounding; f32 gradients of these deep networks
/// on a batch of two are too ill-conditioned to compare (the CPU's own f32
/// gradients differ from its f64 ones by ~1e-2 there).
fn full_size<N32, N64>()
where
    N32: GpuNetwork + Model<f32> + Clone,
    N64: GpuNetwork + Model<f64> + Clone,
{
    parity_with::<f64, N64>(2, 1, 1e-10, 1e-8);
    let cpu0: N32 = randomised(7);
    let (x, _) = input::<f32, N32>(2, 11);
    for mode in [Mode::Eval, Mode::Train] {
        let mut cpu = cpu0.clone();
        let mut dev = gpu(&cpu0, 2);
        let want = cpu.forward(x.view(), mode).unwrap();
        let got = dev.forward(x.view(), mode).unwrap();
        let e = rel_err(
            &f64s(got.as_slice().unwrap()),
            &f64s(want.as_slice().unwrap()),
        );
        assert!(
            e < 1e-4,
            "{}: f32 {mode:?} logits differ by {e:e}",
            N32::NAME
        );
    }
}

#[test]
fn seed_2018_02_20_depth_40_growth_12() {
    full_size::<SeedV2Depth40At16<f32>, SeedV2Depth40At16<f64>>();
}

#[test]
fn seed_2018_01_30_notebook() {
    full_size::<SeedV1NotebookAt16<f32>, SeedV1NotebookAt16<f64>>();
}

#[test]
fn sparsenet_bc_100_growth_24() {
    full_size::<SparseNetBc100At16<f32>, SparseNetBc100At16<f64>>();
}

/// Fifty SGD steps on changing batches: the losses of the two paths agree
/// step by step. In f64 to ~1e-15 (measured 2.1e-15): the step is the same
/// computation. In f32 they agree to ~1e-7 for the first steps, then drift
/// apart as training amplifies rounding differences; the CPU's own f32 run
/// drifts from its f64 run in the same way (1.6e-2 by step 50 at lr 0.02,
/// measured 2026-11-28), so the f32 bound over 50 steps is loose and a tight
/// one holds for the first five steps.
fn fifty_steps<T: Float, M: GpuNetwork + Model<T>>(tol_first5: f64, tol: f64) {
    let opt = Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-4,
    };
    let mut cpu: M = M::new(3);
    let mut dev = gpu(&cpu, 16);
    let mut st = SgdState {
        velocity: vec![T::zero(); M::PARAMETERS],
    };
    let mut grads = vec![T::zero(); M::PARAMETERS];
    let mut worst = 0.0f64;
    let mut worst_first5 = 0.0f64;
    let mut losses = Vec::new();
    for step in 0..50u64 {
        // A small pool of batches, so the loss falls within 50 steps.
        let (x, labels) = input::<T, M>(16, step % 8);
        let mut loss = 0.0;
        cpu.forward_backward(x.view(), Mode::Train, &mut grads, &mut |logits| {
            let mut g = Array2::zeros(logits.raw_dim());
            loss = softmax_cross_entropy_into(logits.view(), &labels, 0.0, g.view_mut())
                .unwrap()
                .0
                .to_f64c();
            g
        })
        .unwrap();
        opt.step(&mut st, cpu.params_mut(), &grads, 0.005);
        let out = dev.train_step(x.view(), &labels, &opt, 0.005, 0.0).unwrap();
        worst = worst.max((out.loss - loss).abs() / loss.abs());
        if step < 5 {
            worst_first5 = worst;
        }
        losses.push(loss);
    }
    let (first, last) = (losses[0], losses[49]);
    eprintln!(
        "{} {}: 50 steps, loss {first:.4} -> {last:.4}, largest relative difference {worst_first5:.1e} (first 5 steps), {worst:.1e} (all)",
        M::NAME,
        std::any::type_name::<T>()
    );
    assert!(last < 0.8 * first, "the loss falls ({first} -> {last})");
    assert!(
        worst_first5 < tol_first5,
        "GPU and CPU losses differ by up to {worst_first5:e} in the first 5 steps"
    );
    assert!(worst < tol, "GPU and CPU losses differ by up to {worst:e}");
}

#[test]
fn fifty_training_steps_track_the_cpu_losses() {
    fifty_steps::<f64, V2BcD28K6<f64>>(1e-12, 1e-12);
    fifty_steps::<f32, V2BcD28K6<f32>>(1e-5, 5e-2);
}
