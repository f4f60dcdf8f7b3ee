//! Finite-difference gradient checks (f64) for every kernel's backward.
//!
//! Each check builds a scalar L = sum(r * f(inputs)) with fixed random
//! weights r, takes the analytic gradient from the backward kernel, and
//! compares it with central differences on every input coordinate.

use ndarray::{Array2, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsenet_runtime::__private::*;
use sparsenet_runtime::*;

fn rand4(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Array4<f64> {
    Array4::from_shape_fn(shape, |_| rng.gen_range(-1.0..1.0))
}

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// Compares analytic and numeric gradients; reports the worst relative error.
fn assert_close(what: &str, analytic: &[f64], numeric: &[f64]) {
    let scale = numeric.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    let worst = analytic
        .iter()
        .zip(numeric)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(
        worst < 1e-6,
        "{what}: analytic vs finite-difference gradient differ by {worst:.2e} (relative)"
    );
}

/// Central differences of `f` with respect to every entry of `x`.
fn numeric(x: &mut [f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    (0..x.len())
        .map(|i| {
            let v = x[i];
            x[i] = v + h;
            let up = f(x);
            x[i] = v - h;
            let down = f(x);
            x[i] = v;
            (up - down) / (2.0 * h)
        })
        .collect()
}

fn dot4(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A BN(+ReLU) Pre built from gamma/beta and either the batch statistics of
/// `srcs` (training) or fixed statistics (eval), as `Ctx::bn` builds it.
fn make_pre(
    srcs: &[&Array4<f64>],
    gb: &[f64],
    train: bool,
    relu: bool,
    fixed: &(Vec<f64>, Vec<f64>),
) -> Pre<f64> {
    let c = gb.len() / 2;
    let eps = 1e-5;
    let (mean, var): (Vec<f64>, Vec<f64>) = if train {
        let mut m = Vec::new();
        let mut v = Vec::new();
        for s in srcs {
            let st = batch_stats(s);
            m.extend(st.mean);
            v.extend(st.var);
        }
        (m, v)
    } else {
        fixed.clone()
    };
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f64> = (0..c).map(|i| gb[i] * inv_std[i]).collect();
    let shift: Vec<f64> = (0..c).map(|i| gb[c + i] - mean[i] * scale[i]).collect();
    Pre {
        scale,
        shift,
        relu,
        mean,
        inv_std,
        batch_stats: train,
    }
}

/// Checks op o pre over two sources: gradients for both sources, gamma/beta
/// and the op's own parameters. `op` runs forward; `back` gives dz and
/// accumulates the op's parameter gradients.
fn check_op(
    name: &str,
    shapes: [(usize, usize, usize, usize); 2],
    op_params: usize,
    op: &dyn Fn(&[&Array4<f64>], Option<&Pre<f64>>, &[f64]) -> Array4<f64>,
    back: &dyn Fn(
        &[&Array4<f64>],
        Option<&Pre<f64>>,
        &[f64],
        &Array4<f64>,
        &mut [f64],
    ) -> InputGrad<f64>,
) {
    for (train, relu, with_pre) in [
        (true, true, true),
        (true, false, true),
        (false, true, true),
        (false, false, false),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let a = rand4(&mut rng, shapes[0]);
        let b = rand4(&mut rng, shapes[1]);
        let c = shapes[0].1 + shapes[1].1;
        let mut gb = rand_vec(&mut rng, c, 0.5, 1.5);
        gb.extend(rand_vec(&mut rng, c, -0.3, 0.3));
        let fixed = (
            rand_vec(&mut rng, c, -0.3, 0.3),
            rand_vec(&mut rng, c, 0.5, 2.0),
        );
        let mut p = rand_vec(&mut rng, op_params, -0.5, 0.5);
        let out_shape = op(&[&a, &b], None, &p).raw_dim();
        let r = Array4::from_shape_fn(out_shape, |_| rng.gen_range(-1.0..1.0));
        let label = format!("{name} (train {train}, relu {relu}, bn {with_pre})");
        let loss = |a: &Array4<f64>, b: &Array4<f64>, gb: &[f64], p: &[f64]| {
            let pre = with_pre.then(|| make_pre(&[a, b], gb, train, relu, &fixed));
            dot4(&op(&[a, b], pre.as_ref(), p), &r)
        };
        // Analytic.
        let pre = with_pre.then(|| make_pre(&[&a, &b], &gb, train, relu, &fixed));
        let mut dp = vec![0.0; op_params];
        let dz = back(&[&a, &b], pre.as_ref(), &p, &r, &mut dp);
        let mut dgb = vec![0.0; 2 * c];
        // Source 0 as its first writer (a stale buffer of NaNs: every
        // element must be stored), source 1 adding to a buffer that holds
        // 0.25 already.
        let mut da = a.mapv(|_| f64::NAN);
        let mut db = b.mapv(|_| 0.25);
        pre_backward(
            &[&a, &b],
            dz,
            pre.as_ref(),
            with_pre.then_some(&mut dgb[..]),
            &mut [&mut da, &mut db],
            &[true, false],
        );
        db.mapv_inplace(|v| v - 0.25);
        // Numeric.
        let mut a_flat = a.clone();
        let na = numeric(a_flat.as_slice_mut().unwrap(), |x| {
            loss(
                &Array4::from_shape_vec(a.raw_dim(), x.to_vec()).unwrap(),
                &b,
                &gb,
                &p,
            )
        });
        assert_close(&format!("{label}: source 0"), da.as_slice().unwrap(), &na);
        let mut b_flat = b.clone();
        let nb = numeric(b_flat.as_slice_mut().unwrap(), |x| {
            loss(
                &a,
                &Array4::from_shape_vec(b.raw_dim(), x.to_vec()).unwrap(),
                &gb,
                &p,
            )
        });
        assert_close(&format!("{label}: source 1"), db.as_slice().unwrap(), &nb);
        if with_pre {
            let ngb = numeric(&mut gb.clone(), |x| loss(&a, &b, x, &p));
            assert_close(&format!("{label}: gamma/beta"), &dgb, &ngb);
        }
        if op_params > 0 {
            let np = numeric(&mut p, |x| loss(&a, &b, &gb, x));
            assert_close(&format!("{label}: op parameters"), &dp, &np);
        }
    }
}

#[test]
fn conv2d_3x3_gradients() {
    let g = ConvGeom {
        out_channels: 3,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    let nw = 3 * 5 * 9;
    check_op(
        "conv3x3",
        [(2, 2, 5, 4), (2, 3, 5, 4)],
        nw + 3,
        &|s, pre, p| conv2d(s, pre, &p[..nw], Some(&p[nw..]), g),
        &|s, pre, p, dy, dp| {
            let (dw, db) = dp.split_at_mut(nw);
            conv2d_backward(s, pre, &p[..nw], dy, g, dw, Some(db))
        },
    );
}

#[test]
fn conv2d_strided_7x7_and_1x1_gradients() {
    let g = ConvGeom {
        out_channels: 2,
        kernel: 7,
        stride: 2,
        pad: 3,
    };
    let nw = 2 * 3 * 49;
    check_op(
        "conv7x7/2",
        [(2, 1, 9, 8), (2, 2, 9, 8)],
        nw,
        &|s, pre, p| conv2d(s, pre, p, None, g),
        &|s, pre, p, dy, dp| conv2d_backward(s, pre, p, dy, g, dp, None),
    );
    let g = ConvGeom {
        out_channels: 4,
        kernel: 1,
        stride: 1,
        pad: 0,
    };
    let nw = 4 * 5;
    check_op(
        "conv1x1",
        [(3, 3, 3, 3), (3, 2, 3, 3)],
        nw,
        &|s, pre, p| conv2d(s, pre, p, None, g),
        &|s, pre, p, dy, dp| conv2d_backward(s, pre, p, dy, g, dp, None),
    );
}

#[test]
fn pooling_gradients() {
    check_op(
        "avgpool2x2",
        [(2, 2, 4, 6), (2, 1, 4, 6)],
        0,
        &|s, pre, _| avg_pool(s, pre, 2, 2),
        &|s, _, _, dy, _| avg_pool_backward(dy, 2, 2, (s[0].dim().2, s[0].dim().3)).into(),
    );
    check_op(
        "maxpool3x3/2",
        [(2, 2, 7, 6), (2, 1, 7, 6)],
        0,
        &|s, pre, _| max_pool(s, pre, 3, 2, 1),
        &|s, pre, _, dy, _| max_pool_backward(s, pre, dy, 3, 2, 1).into(),
    );
}

#[test]
fn affine_gradients() {
    check_op(
        "affine (stored BN)",
        [(3, 2, 3, 3), (3, 2, 3, 3)],
        0,
        &|s, pre, _| match pre {
            Some(p) => affine(s, p),
            None => affine(s, &Pre::affine(vec![1.0; 4], vec![0.0; 4], false)),
        },
        &|_, _, _, dy, _| dy.clone().into(),
    );
}

#[test]
fn gap_dense_gradients() {
    let classes = 3;
    let nw = classes * 5;
    check_op(
        "global-avg-pool + dense",
        [(2, 2, 3, 4), (2, 3, 3, 4)],
        nw + classes,
        &|s, pre, p| {
            let logits = gap_dense(s, pre, &p[..nw], Some(&p[nw..]), classes).1;
            let n = logits.nrows();
            logits.into_shape_with_order((n, classes, 1, 1)).unwrap()
        },
        &|s, pre, p, dy, dp| {
            let n = dy.dim().0;
            let dl: Array2<f64> = dy.clone().into_shape_with_order((n, classes)).unwrap();
            let (dw, db) = dp.split_at_mut(nw);
            gap_dense_backward(s, pre, &p[..nw], &dl, dw, db).into()
        },
    );
}

#[test]
fn dropout_gradient_is_the_same_mask() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = rand4(&mut rng, (2, 3, 4, 4));
    let mut y = x.clone();
    sparsenet_runtime::__private::apply_dropout_mask(y.as_slice_mut().unwrap(), 0.3, 99);
    // y is linear in x with the mask as the Jacobian's diagonal.
    let mut g = Array4::<f64>::ones(x.raw_dim());
    dropout_backward(&mut g, 0.3, 99);
    for ((xv, yv), gv) in x.iter().zip(&y).zip(&g) {
        assert!((yv - gv * xv).abs() < 1e-12);
    }
    let dropped = g.iter().filter(|&&v| v == 0.0).count() as f64 / g.len() as f64;
    assert!((0.1..0.5).contains(&dropped), "dropped fraction {dropped}");
}
