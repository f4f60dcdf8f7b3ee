//! The layer kernels through their full glue, f32 on the active
//! instruction set against the same layers in f64 (im2col + GEMM, the path
//! `gradcheck.rs` checks by finite differences).
//!
//! Convolution (was `tests/direct_conv.rs`): forward output, input gradient,
//! weight and bias gradients, through two concatenated sources, the BN-ReLU
//! transform applied while padding, both output mappings, batch chunking.
//! On `scalar` both element types take the general path and the comparison
//! checks f32 against f64.
//!
//! The inference chain (was `tests/conv_chain.rs`: `conv_chain`, 1x1
//! bottleneck, BN-ReLU, kxk convolution, trailing BN, each image start to
//! end, transforms applied as outputs are stored) against the same steps
//! run one after the other (`conv2d`, `conv2d`, `affine`) in f64. Covers both
//! thread splits (batch 1 splits each image's channels, larger batches split
//! images), the shapes the direct chain takes (widths 8, 16, 32) and those it
//! hands to the step-by-step path (width 7, a stride-2 convolution), with and
//! without bottleneck, biases and trailing transform.

use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsenet_runtime::__private::*;

fn to32(a: &Array4<f64>) -> Array4<f32> {
    a.mapv(|v| v as f32)
}

fn worst_rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()))
        / scale
}

pub fn direct_f32_convolution_matches_the_general_path() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (channels of two sources, out channels, h, w, kernel, pad, batch):
    // rows mapping (width 8, 16, 32), flat mapping (7, 5, 28), 1x1 and 5x5,
    // channel counts that leave partial tiles and span cache blocks.
    let cases = [
        ((5, 7), 12, 8, 8, 3, 1, 3),
        ((24, 9), 13, 7, 7, 3, 1, 2),
        ((3, 4), 96, 5, 5, 1, 0, 2),
        ((40, 33), 24, 8, 16, 1, 0, 3),
        ((4, 2), 5, 9, 6, 5, 2, 2),
        ((3, 0), 16, 28, 28, 3, 1, 2),
        ((100, 60), 12, 32, 32, 3, 1, 2),
        ((30, 50), 96, 8, 8, 1, 0, 1),
        ((30, 20), 24, 7, 7, 3, 1, 1),
        ((12, 20), 24, 8, 16, 3, 1, 2),
        ((9, 0), 48, 16, 8, 3, 1, 3),
        ((20, 40), 60, 16, 16, 1, 0, 2),
    ];
    for ((c1, c2), oc, h, w, k, pad, n) in cases {
        let mut rand4 =
            |c: usize| Array4::from_shape_fn((n, c, h, w), |_| rng.gen_range(-1.0..1.0f64));
        let (x1, x2) = (rand4(c1), rand4(c2.max(1)));
        let srcs64: Vec<&Array4<f64>> = if c2 == 0 { vec![&x1] } else { vec![&x1, &x2] };
        let cin: usize = srcs64.iter().map(|s| s.dim().1).sum();
        let scale: Vec<f64> = (0..cin).map(|_| rng.gen_range(0.5..1.5)).collect();
        let shift: Vec<f64> = (0..cin).map(|_| rng.gen_range(-0.3..0.3)).collect();
        // Batch-statistics BatchNorm constants, so that the BN backward
        // (whose sums the direct path computes inside the convolution's
        // backward) takes its full form; they need not match the data for
        // comparing the two paths.
        let mut pre64 = Pre::affine(scale.clone(), shift.clone(), true);
        pre64.mean = (0..cin).map(|_| rng.gen_range(-0.2..0.2)).collect();
        pre64.inv_std = (0..cin).map(|_| rng.gen_range(0.5..2.0)).collect();
        pre64.batch_stats = true;
        let pre32 = Pre {
            scale: pre64.scale.iter().map(|&v| v as f32).collect(),
            shift: pre64.shift.iter().map(|&v| v as f32).collect(),
            relu: true,
            mean: pre64.mean.iter().map(|&v| v as f32).collect(),
            inv_std: pre64.inv_std.iter().map(|&v| v as f32).collect(),
            batch_stats: true,
        };
        let weight: Vec<f64> = (0..oc * cin * k * k)
            .map(|_| rng.gen_range(-0.3..0.3))
            .collect();
        let bias: Vec<f64> = (0..oc).map(|_| rng.gen_range(-0.5..0.5)).collect();
        let w32: Vec<f32> = weight.iter().map(|&v| v as f32).collect();
        let b32: Vec<f32> = bias.iter().map(|&v| v as f32).collect();
        let g = ConvGeom {
            out_channels: oc,
            kernel: k,
            stride: 1,
            pad,
        };
        let what = format!("{cin}->{oc} {h}x{w} k{k} pad {pad}");

        let y64 = conv2d(&srcs64, Some(&pre64), &weight, Some(&bias), g);
        let (x1f, x2f) = (to32(&x1), to32(&x2));
        let srcs32: Vec<&Array4<f32>> = if c2 == 0 {
            vec![&x1f]
        } else {
            vec![&x1f, &x2f]
        };
        let y32 = conv2d(&srcs32, Some(&pre32), &w32, Some(&b32), g);
        assert_eq!(y32.dim(), y64.dim(), "{what}: output shape");
        let e = worst_rel(y32.as_slice().unwrap(), y64.as_slice().unwrap());
        assert!(e < 1e-5, "{what}: forward differs by {e:.2e} (relative)");

        let dy = y64.mapv(|_| rng.gen_range(-1.0..1.0));
        let (mut dw64, mut db64) = (vec![0.0; weight.len()], vec![0.0; oc]);
        let dz64 = conv2d_backward(
            &srcs64,
            Some(&pre64),
            &weight,
            &dy,
            g,
            &mut dw64,
            Some(&mut db64),
        );
        let (mut dw32, mut db32) = (vec![0.0f32; weight.len()], vec![0.0f32; oc]);
        let dz32 = conv2d_backward(
            &srcs32,
            Some(&pre32),
            &w32,
            &to32(&dy),
            g,
            &mut dw32,
            Some(&mut db32),
        );
        for (name, e) in [
            (
                "input gradient",
                worst_rel(dz32.dz.as_slice().unwrap(), dz64.dz.as_slice().unwrap()),
            ),
            ("weight gradient", worst_rel(&dw32, &dw64)),
            ("bias gradient", worst_rel(&db32, &db64)),
        ] {
            assert!(e < 1e-5, "{what}: {name} differs by {e:.2e} (relative)");
        }

        // On through ReLU and BatchNorm into the sources and gamma/beta.
        let (mut g1, mut g2) = (x1.mapv(|_| f64::NAN), x2.mapv(|_| f64::NAN));
        let mut dbn64 = vec![0.0; 2 * cin];
        let mut d64: Vec<&mut Array4<f64>> = if c2 == 0 {
            vec![&mut g1]
        } else {
            vec![&mut g1, &mut g2]
        };
        let first = vec![true; d64.len()];
        pre_backward(
            &srcs64,
            dz64,
            Some(&pre64),
            Some(&mut dbn64),
            &mut d64,
            &first,
        );
        let (mut f1, mut f2) = (to32(&x1), to32(&x2));
        let mut dbn32 = vec![0.0f32; 2 * cin];
        let mut d32: Vec<&mut Array4<f32>> = if c2 == 0 {
            vec![&mut f1]
        } else {
            vec![&mut f1, &mut f2]
        };
        pre_backward(
            &srcs32,
            dz32,
            Some(&pre32),
            Some(&mut dbn32),
            &mut d32,
            &first,
        );
        let mut checks = vec![
            (
                "source 0 gradient",
                worst_rel(f1.as_slice().unwrap(), g1.as_slice().unwrap()),
            ),
            ("gamma/beta gradient", worst_rel(&dbn32, &dbn64)),
        ];
        if c2 > 0 {
            checks.push((
                "source 1 gradient",
                worst_rel(f2.as_slice().unwrap(), g2.as_slice().unwrap()),
            ));
        }
        for (name, e) in checks {
            assert!(e < 1e-5, "{what}: {name} differs by {e:.2e} (relative)");
        }
    }
}

/// Largest difference relative to the largest reference value.
fn worst(a: &Array4<f32>, b: &Array4<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()))
        / scale
}

/// A fixed-statistics (eval-mode) transform of `c` channels, in both types.
fn pre(rng: &mut ChaCha8Rng, c: usize, relu: bool) -> (Pre<f64>, Pre<f32>) {
    let scale: Vec<f64> = (0..c).map(|_| rng.gen_range(0.5..1.5)).collect();
    let shift: Vec<f64> = (0..c).map(|_| rng.gen_range(-0.3..0.3)).collect();
    let p32 = Pre::affine(
        scale.iter().map(|&v| v as f32).collect(),
        shift.iter().map(|&v| v as f32).collect(),
        relu,
    );
    (Pre::affine(scale, shift, relu), p32)
}

fn values(rng: &mut ChaCha8Rng, len: usize, r: f64) -> (Vec<f64>, Vec<f32>) {
    let v: Vec<f64> = (0..len).map(|_| rng.gen_range(-r..r)).collect();
    let v32 = v.iter().map(|&x| x as f32).collect();
    (v, v32)
}

pub fn conv_chain_matches_the_steps_one_after_the_other() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    // (source channels, bottleneck channels (0: none), out channels, h, w,
    //  kernel, pad, stride, bias, trailing transform, batch)
    let cases = [
        ((40, 32), 96, 24, 32, 32, 3, 1, 1, true, true, 3),
        ((40, 32), 96, 24, 32, 32, 3, 1, 1, true, true, 1),
        ((24, 0), 48, 12, 16, 16, 3, 1, 1, false, true, 2),
        ((30, 50), 96, 24, 8, 8, 3, 1, 1, true, false, 1),
        ((30, 50), 20, 13, 8, 8, 3, 1, 1, false, false, 3),
        ((7, 5), 16, 10, 8, 8, 1, 0, 1, true, true, 2),
        ((20, 4), 32, 12, 7, 7, 3, 1, 1, true, true, 2),
        ((20, 4), 0, 12, 8, 8, 3, 1, 1, true, true, 3),
        ((20, 4), 0, 24, 16, 16, 3, 1, 1, true, true, 1),
        ((20, 4), 0, 12, 7, 7, 3, 1, 1, false, true, 2),
        ((20, 4), 16, 12, 8, 8, 3, 1, 2, true, true, 2),
    ];
    for (i, ((c1, c2), cm, oc, h, w, k, pad, stride, bias, post, n)) in
        cases.into_iter().enumerate()
    {
        let mut rand4 =
            |c: usize| Array4::from_shape_fn((n, c, h, w), |_| rng.gen_range(-1.0..1.0f64));
        let (x1, x2) = (rand4(c1), rand4(c2.max(1)));
        let srcs64: Vec<&Array4<f64>> = if c2 == 0 { vec![&x1] } else { vec![&x1, &x2] };
        let x1f = x1.mapv(|v| v as f32);
        let x2f = x2.mapv(|v| v as f32);
        let srcs32: Vec<&Array4<f32>> = if c2 == 0 {
            vec![&x1f]
        } else {
            vec![&x1f, &x2f]
        };
        let cin = c1 + c2;
        // The bottleneck reads its sources through BN (no ReLU, as in the
        // seed's units), the convolution through BN-ReLU.
        let (pre_a64, pre_a32) = pre(&mut rng, cin, false);
        let conv_in = if cm > 0 { cm } else { cin };
        let (pre_b64, pre_b32) = pre(&mut rng, conv_in, true);
        let (post64, post32) = pre(&mut rng, oc, false);
        let (wa64, wa32) = values(&mut rng, cm * cin, 0.3);
        let (ba64, ba32) = values(&mut rng, cm, 0.5);
        let (wb64, wb32) = values(&mut rng, oc * conv_in * k * k, 0.2);
        let (bb64, bb32) = values(&mut rng, oc, 0.5);
        let g1 = ConvGeom {
            out_channels: cm,
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let g = ConvGeom {
            out_channels: oc,
            kernel: k,
            stride,
            pad,
        };

        // The reference: the steps one after the other, in f64.
        let mid = (cm > 0).then(|| {
            conv2d(
                &srcs64,
                Some(&pre_a64),
                &wa64,
                bias.then_some(&ba64[..]),
                g1,
            )
        });
        let conv_srcs: Vec<&Array4<f64>> = match &mid {
            Some(m) => vec![m],
            None => srcs64.clone(),
        };
        let conv_pre = if cm > 0 { &pre_b64 } else { &pre_a64 };
        let y = conv2d(
            &conv_srcs,
            Some(conv_pre),
            &wb64,
            bias.then_some(&bb64[..]),
            g,
        );
        let want = if post { affine(&[&y], &post64) } else { y };

        let bottleneck = (cm > 0).then(|| ConvStep {
            pre: Some(&pre_a32),
            weight: &wa32[..],
            bias: bias.then_some(&ba32[..]),
            geom: g1,
        });
        let conv = ConvStep {
            pre: Some(if cm > 0 { &pre_b32 } else { &pre_a32 }),
            weight: &wb32[..],
            bias: bias.then_some(&bb32[..]),
            geom: g,
        };
        let got = conv_chain(&srcs32, bottleneck, conv, post.then_some(&post32));
        let err = worst(&got, &want);
        assert!(err < 2e-5, "case {i}: relative error {err:e}");

        // f64 takes the step-by-step path: the same values as the reference.
        let bottleneck64 = (cm > 0).then(|| ConvStep {
            pre: Some(&pre_a64),
            weight: &wa64[..],
            bias: bias.then_some(&ba64[..]),
            geom: g1,
        });
        let conv64 = ConvStep {
            pre: Some(conv_pre),
            weight: &wb64[..],
            bias: bias.then_some(&bb64[..]),
            geom: g,
        };
        let got64 = conv_chain(&srcs64, bottleneck64, conv64, post.then_some(&post64));
        assert_eq!(got64, want, "case {i}: f64 chain");
    }
}

pub fn pointwise_into_stores_inside_the_zero_border() {
    // A 1x1 convolution stored into the padded planes of a 3x3 one, then
    // the border zeroed: the planes are exactly what gathering the 1x1's
    // NCHW output into that layout writes.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (h, w, cin, cm) = (8, 16, 20, 13);
    let x: Vec<f32> = (0..cin * h * w).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let wt: Vec<f32> = (0..cm * cin).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let pw = direct::Direct::pointwise(h, w, cin);
    let mut xin = vec![0.0f32; pw.input_len(cin)];
    for c in 0..cin {
        pw.fill(c, &x[c * h * w..(c + 1) * h * w], &mut xin, |s, t| {
            t.copy_from_slice(s)
        });
    }
    let mid = direct::Direct::new(h, w, 3, 1);
    let into = direct::Direct::pointwise_into(h, w, cin, &mid).expect("width 16 maps");
    // NaNs everywhere first: every element must be stored or zeroed.
    let mut planes = vec![f32::NAN; cm * mid.plane];
    direct::forward(&into, &xin, cin, &wt, cm, &mut planes);
    mid.zero_border(&mut planes);
    let mut nchw = vec![0.0f32; cm * h * w];
    direct::forward(&pw, &xin, cin, &wt, cm, &mut nchw);
    let mut want = vec![f32::NAN; cm * mid.plane];
    for c in 0..cm {
        mid.fill(c, &nchw[c * h * w..(c + 1) * h * w], &mut want, |s, t| {
            t.copy_from_slice(s)
        });
    }
    assert_eq!(planes, want);
    assert!(direct::Direct::pointwise_into(7, 7, cin, &direct::Direct::new(7, 7, 3, 1)).is_none());
}
