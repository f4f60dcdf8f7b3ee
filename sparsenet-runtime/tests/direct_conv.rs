//! The f32 direct convolution path (AVX2 + FMA, stride 1) against the
//! general im2col + GEMM path run in f64 on the same values: forward output,
//! input gradient, weight and bias gradients, through the full glue (two
//! concatenated sources, the BN-ReLU transform applied while padding, both
//! output mappings, batch chunking). The f64 path is the one the
//! finite-difference checks in `gradcheck.rs` cover.
//!
//! On a machine without AVX2 and FMA both element types take the general
//! path and the comparison still holds (it then checks f32 against f64).

use ndarray::Array4;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparsenet_runtime::__private::*;
use sparsenet_runtime::*;

fn to32(a: &Array4<f64>) -> Array4<f32> {
    a.mapv(|v| v as f32)
}

fn worst(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y).abs()))
        / scale
}

#[test]
fn direct_f32_convolution_matches_the_general_path() {
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
        let e = worst(y32.as_slice().unwrap(), y64.as_slice().unwrap());
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
                worst(dz32.dz.as_slice().unwrap(), dz64.dz.as_slice().unwrap()),
            ),
            ("weight gradient", worst(&dw32, &dw64)),
            ("bias gradient", worst(&db32, &db64)),
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
                worst(f1.as_slice().unwrap(), g1.as_slice().unwrap()),
            ),
            ("gamma/beta gradient", worst(&dbn32, &dbn64)),
        ];
        if c2 > 0 {
            checks.push((
                "source 1 gradient",
                worst(f2.as_slice().unwrap(), g2.as_slice().unwrap()),
            ));
        }
        for (name, e) in checks {
            assert!(e < 1e-5, "{what}: {name} differs by {e:.2e} (relative)");
        }
    }
}
