//! The generated models reproduce the seed notebook's MXNet networks number
//! for number. Fixtures come from `scripts/make_fixtures.py`, which runs the
//! seed's own Gluon code (float64) on randomised weights and BN statistics.

mod common;

use common::{rel_err, Tensors};
use sparsenet::prelude::*;
use sparsenet::runtime::ndarray::Array4;

sparsenet! {
    struct V2D22K4 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 22, growth: 4 }
    struct V2D16K6 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 16, growth: 6 }
    struct V2BcD40K4 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 40, growth: 4, bottleneck: true, reduction: 0.5 }
    struct V2BcD28K6 { style: seed_2018_02_20, input: [3, 8, 8], classes: 10, depth: 28, growth: 6, bottleneck: true, reduction: 0.5 }
    struct V2D10K5Mnist { style: seed_2018_02_20, input: [1, 8, 8], classes: 10, depth: 10, blocks: 2, growth: 5 }
    struct V1B3L6K4C8 { style: seed_2018_01_30, input: [3, 8, 8], classes: 10, blocks: 3, units: 6, growth: 4, stem: bn_relu_conv3x3(8) }
    struct V1B2L5K6C5 { style: seed_2018_01_30, input: [3, 8, 8], classes: 10, blocks: 2, units: 5, growth: 6, stem: bn_relu_conv3x3(5) }
}

/// Errors of one model in one element type against the fixture.
struct Report {
    eval: f64,
    train: f64,
    running: f64,
    loss: f64,
    /// Worst gradient error over all parameters and the input, and where.
    grad: f64,
    grad_at: String,
}

/// Mean softmax cross-entropy and its gradient, as Gluon's
/// SoftmaxCrossEntropyLoss followed by mean().
fn cross_entropy<T: sparsenet::runtime::Float>(
    logits: &Array2<T>,
    labels: &[usize],
) -> (f64, Array2<T>) {
    let n = logits.nrows();
    let mut d = logits.mapv(|v| v.to_f64c());
    let mut loss = 0.0;
    for (b, mut row) in d.rows_mut().into_iter().enumerate() {
        let m = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s: f64 = row.sum();
        row.mapv_inplace(|v| v / s);
        loss -= row[labels[b]].ln();
        row[labels[b]] -= 1.0;
    }
    (loss / n as f64, d.mapv(|v| T::from_f64c(v / n as f64)))
}

fn run<T: sparsenet::runtime::Float, M: Model<T>>(cfg: &str) -> Report {
    let io = Tensors::open(&format!("{cfg}.io.safetensors"));
    let w = Tensors::open(&format!("{cfg}.weights.safetensors"));
    let mut model = M::new(0);
    // Load through f64 values so that f32 and f64 models get the same numbers.
    {
        let (params, state) = model.stores_mut();
        for spec in M::tensors() {
            let vals = w.get(spec.name);
            assert_eq!(vals.shape(), spec.shape, "shape of {}", spec.name);
            let dst = match spec.store {
                sparsenet::runtime::Store::Param => {
                    &mut params[spec.offset..spec.offset + spec.len()]
                }
                sparsenet::runtime::Store::State => {
                    &mut state[spec.offset..spec.offset + spec.len()]
                }
            };
            for (d, v) in dst.iter_mut().zip(vals.iter()) {
                *d = T::from_f64c(*v);
            }
        }
        assert_eq!(
            w.names().len(),
            M::tensors().len(),
            "fixture and model tensor counts"
        );
    }
    let x = io.get("input");
    let x: Array4<T> = x.mapv(T::from_f64c).into_dimensionality().unwrap();
    let to64 = |a: &Array2<T>| a.iter().map(|v| v.to_f64c()).collect::<Vec<_>>();
    let eval = model.forward(x.view(), Mode::Eval).unwrap();
    let eval = rel_err(&to64(&eval), io.get("logits_eval").as_slice().unwrap());
    let train = model.forward(x.view(), Mode::Train).unwrap();
    let train = rel_err(&to64(&train), io.get("logits_train").as_slice().unwrap());
    let mut running = 0.0f64;
    for spec in M::tensors()
        .iter()
        .filter(|s| s.store == sparsenet::runtime::Store::State)
    {
        let ours: Vec<f64> = model.state()[spec.offset..spec.offset + spec.len()]
            .iter()
            .map(|v| v.to_f64c())
            .collect();
        let want = io.get(&format!("updated.{}", spec.name));
        running = running.max(rel_err(&ours, want.as_slice().unwrap()));
    }
    // The training pass on the same weights and running statistics as MXNet's.
    let mut model2 = M::new(0);
    model2.params_mut().copy_from_slice(model.params());
    {
        let (_, state) = model2.stores_mut();
        for spec in M::tensors()
            .iter()
            .filter(|s| s.store == sparsenet::runtime::Store::State)
        {
            for (d, v) in state[spec.offset..spec.offset + spec.len()]
                .iter_mut()
                .zip(w.get(spec.name).iter())
            {
                *d = T::from_f64c(*v);
            }
        }
    }
    let labels: Vec<usize> = io.get("labels").iter().map(|&v| v as usize).collect();
    let mut grads = vec![T::zero(); M::PARAMETERS];
    let mut loss_value = 0.0;
    let dx = model2
        .forward_backward(x.view(), Mode::Train, &mut grads, &mut |logits| {
            let (l, d) = cross_entropy(logits, &labels);
            loss_value = l;
            d
        })
        .unwrap();
    let loss = (loss_value - io.get("loss_train")[[0]]).abs() / io.get("loss_train")[[0]].abs();
    let mut grad = rel_err(
        &dx.iter().map(|v| v.to_f64c()).collect::<Vec<_>>(),
        io.get("grad.input").as_slice().unwrap(),
    );
    let mut grad_at = "input".to_string();
    // Gradients that BatchNorm invariance makes (nearly) zero: biases right
    // before a training-mode BN are exactly 0, and the trailing BN's gamma of
    // a seed 2018-02-20 unit only matters through the next BN's epsilon
    // (~1e-6 against gradients of ~1). Their value is a cancellation of O(1)
    // terms that no f32 computation resolves to 1e-3 of itself. So each
    // tensor's error is measured against its own scale, floored at 1e-3 of
    // the network's largest gradient in f32 and at 1e-6 of it in f64.
    let global = M::tensors()
        .iter()
        .filter(|s| s.store == sparsenet::runtime::Store::Param)
        .map(|s| {
            io.get(&format!("grad.{}", s.name))
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
        })
        .fold(0.0f64, f64::max);
    let floor = if std::mem::size_of::<T>() == 4 {
        1e-3 * global
    } else {
        1e-6 * global
    };
    for spec in M::tensors()
        .iter()
        .filter(|s| s.store == sparsenet::runtime::Store::Param)
    {
        let ours: Vec<f64> = grads[spec.offset..spec.offset + spec.len()]
            .iter()
            .map(|v| v.to_f64c())
            .collect();
        let want = io.get(&format!("grad.{}", spec.name));
        let want = want.as_slice().unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(floor);
        let diff = ours
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let e = diff / scale;
        if e > grad {
            grad = e;
            grad_at = spec.name.to_string();
        }
    }
    Report {
        eval,
        train,
        running,
        loss,
        grad,
        grad_at,
    }
}

macro_rules! parity {
    ($test:ident, $ty:ident, $cfg:literal) => {
        #[test]
        fn $test() {
            let r32 = run::<f32, $ty<f32>>($cfg);
            let r64 = run::<f64, $ty<f64>>($cfg);
            eprintln!(
                "{}: f32 eval {:.2e} train {:.2e} running {:.2e} loss {:.2e} grad {:.2e} ({}) | f64 eval {:.2e} train {:.2e} running {:.2e} loss {:.2e} grad {:.2e} ({})",
                $cfg, r32.eval, r32.train, r32.running, r32.loss, r32.grad, r32.grad_at,
                r64.eval, r64.train, r64.running, r64.loss, r64.grad, r64.grad_at
            );
            assert!(r32.loss < 1e-4 && r64.loss < 1e-10, "{}: loss differs from MXNet", $cfg);
            assert!(r32.grad < 1e-3, "{}: f32 gradient of {} differs from MXNet autograd", $cfg, r32.grad_at);
            assert!(r64.grad < 1e-7, "{}: f64 gradient of {} differs from MXNet autograd", $cfg, r64.grad_at);
            assert!(r32.eval < 1e-4 && r32.train < 1e-4, "{}: f32 logits differ from MXNet", $cfg);
            // MXNet keeps BN momentum as a C float (0.9f32), which an f64 run
            // cannot reproduce exactly: 1e-6 covers it.
            assert!(r32.running < 1e-5 && r64.running < 1e-6, "{}: running statistics", $cfg);
            assert!(r64.eval < 1e-10 && r64.train < 1e-10, "{}: f64 logits differ from MXNet", $cfg);
        }
    };
}

parity!(seed_2018_02_20_depth22_growth4, V2D22K4, "v2_d22_k4");
parity!(seed_2018_02_20_depth16_growth6, V2D16K6, "v2_d16_k6");
parity!(
    seed_2018_02_20_bottleneck_depth40_growth4,
    V2BcD40K4,
    "v2_bc_d40_k4"
);
parity!(
    seed_2018_02_20_bottleneck_depth28_growth6,
    V2BcD28K6,
    "v2_bc_d28_k6"
);
parity!(
    seed_2018_02_20_grayscale_two_stages,
    V2D10K5Mnist,
    "v2_d10_k5_mnist"
);
parity!(
    seed_2018_01_30_three_blocks_growth4,
    V1B3L6K4C8,
    "v1_b3_l6_k4_c8"
);
parity!(
    seed_2018_01_30_two_blocks_growth6,
    V1B2L5K6C5,
    "v1_b2_l5_k6_c5"
);
