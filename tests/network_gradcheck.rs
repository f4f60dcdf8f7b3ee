//! Finite-difference checks (f64) of whole generated networks' unrolled
//! backward pass, for the layer forms the MXNet fixtures do not cover: the
//! paper style without conv biases, the ImageNet stem with its max-pool,
//! dense aggregation, per-stage growth, dropout, and eval-mode backward.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsenet::prelude::*;
use sparsenet::runtime::Float;

sparsenet! {
    struct TinyImageNet {
        style: paper, input: [2, 15, 13], classes: 3, units: [2, 3], growth: [3, 4],
        bottleneck: true, aggregation: dense, stem: imagenet(4), dropout: 0.2,
    }
    struct TinySeedV1 { style: seed_2018_01_30, input: [1, 8, 8], classes: 4, blocks: 2, units: 5, growth: 2, stem: bn_relu_conv3x3(3) }
    struct TinySparse { style: paper, input: [3, 8, 8], classes: 5, units: [6, 2], growth: 3, aggregation: exponential(3) }
}

/// max that propagates NaN (f64::max would hide it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn check<M: Model<f64>>(mode: Mode) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut m = M::new(3);
    // Move BN parameters and running statistics off their defaults.
    for v in m.params_mut() {
        *v += rng.gen_range(-0.2..0.2);
    }
    for t in M::tensors()
        .iter()
        .filter(|t| t.store == sparsenet::runtime::Store::State)
    {
        let range = if t.name.ends_with("running_var") {
            0.5..2.0
        } else {
            -0.3..0.3
        };
        for v in &mut m.state_mut()[t.offset..t.offset + t.len()] {
            *v = rng.gen_range(range.clone());
        }
    }
    let [c, h, w] = M::INPUT;
    let x = Array4::<f64>::from_shape_fn((2, c, h, w), |_| rng.gen_range(-1.0..1.0));
    let r = Array2::<f64>::from_shape_fn((2, M::CLASSES), |_| rng.gen_range(-1.0..1.0));
    let state0 = m.state().to_vec();
    let loss = |m: &mut M, x: &Array4<f64>| {
        m.reseed(5);
        m.state_mut().copy_from_slice(&state0);
        let y = m.forward(x.view(), mode).unwrap();
        (&y * &r).sum()
    };
    let mut grads = vec![0.0; M::PARAMETERS];
    m.reseed(5);
    m.state_mut().copy_from_slice(&state0);
    let dx = m
        .forward_backward(x.view(), mode, &mut grads, &mut |_| r.clone())
        .unwrap();
    let h = 1e-6;
    let mut worst = 0.0f64;
    let scale = grads.iter().fold(1e-3f64, |a, v| a.max(v.abs()));
    // Every 7th parameter plus the first and last of each tensor.
    let mut idx: Vec<usize> = (0..M::PARAMETERS).step_by(7).collect();
    for t in M::tensors()
        .iter()
        .filter(|t| t.store == sparsenet::runtime::Store::Param)
    {
        idx.push(t.offset);
        idx.push(t.offset + t.len() - 1);
    }
    for i in idx {
        let v = m.params()[i];
        m.params_mut()[i] = v + h;
        let up = loss(&mut m, &x);
        m.params_mut()[i] = v - h;
        let down = loss(&mut m, &x);
        m.params_mut()[i] = v;
        let num = (up - down) / (2.0 * h);
        worst = nan_max(worst, (num - grads[i]).abs() / scale);
    }
    let xscale = dx.iter().fold(1e-3f64, |a, v| a.max(v.abs()));
    let mut xp = x.clone();
    for i in (0..x.len()).step_by(3) {
        let v = xp.as_slice().unwrap()[i];
        xp.as_slice_mut().unwrap()[i] = v + h;
        let up = loss(&mut m, &xp);
        xp.as_slice_mut().unwrap()[i] = v - h;
        let down = loss(&mut m, &xp);
        xp.as_slice_mut().unwrap()[i] = v;
        let num = (up - down) / (2.0 * h);
        worst = nan_max(worst, (num - dx.as_slice().unwrap()[i]).abs() / xscale);
    }
    eprintln!(
        "{} {mode:?}: worst relative gradient error {worst:.2e}",
        M::NAME
    );
    assert!(
        worst < 1e-6 && dx.iter().all(|v| v.is_finite()),
        "{} {mode:?}: finite differences disagree ({worst:.2e})",
        M::NAME
    );
    assert!(grads.iter().all(|g| g.to_f64c().is_finite()));
}

#[test]
fn imagenet_stem_dense_dropout_network() {
    check::<TinyImageNet<f64>>(Mode::Train);
    check::<TinyImageNet<f64>>(Mode::Eval);
}

#[test]
fn seed_2018_01_30_network() {
    check::<TinySeedV1<f64>>(Mode::Train);
    check::<TinySeedV1<f64>>(Mode::Eval);
}

#[test]
fn exponential_base_3_network() {
    check::<TinySparse<f64>>(Mode::Train);
    check::<TinySparse<f64>>(Mode::Eval);
}
