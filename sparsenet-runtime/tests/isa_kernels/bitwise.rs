//! Every kernel gives the same numbers on the instruction set under test as
//! on `portable8`, to the bit. The data layouts are the same on every set
//! (positions in groups of 8) and each kernel sums in the same order
//! whatever its vector width and tile shape, so the sets may differ in
//! speed only. On `avx2` this checks that the portable arrays model the
//! instructions exactly (FMA rounding, the NaN-keeping ReLU, the shuffles);
//! on `portable4` and `portable16` that NEON's and AVX-512's widths and
//! tile shapes change no sum; on `neon` and `avx512`, their intrinsics.

use crate::direct::{padded, values};
use ndarray::Array4;
use sparsenet_runtime::__private::direct::{self, Direct, Epilogue};
use sparsenet_runtime::__private::winograd::{Affine, Input, PreparedConv, WeightGrad};
use sparsenet_runtime::__private::*;
use sparsenet_runtime::cpu::{self, Isa};

/// `f` on the active set and on `portable8`, as bit patterns.
fn both(what: &str, f: impl Fn() -> Vec<f32>) {
    let here = cpu::isa();
    let got = f();
    cpu::set_isa(Isa::Portable8).expect("portable sets run everywhere");
    let want = f();
    cpu::set_isa(here).expect("the set under test");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} on {here} but {} on portable8",
            got[i], want[i]
        );
    }
    assert_eq!(bits(&got), bits(&want));
}

pub fn direct_kernels_equal_portable8() {
    // (cin, cout, h, w, k, pad): rows mapping of width 32 (pairs of
    // groups side by side) and of width 8 (not), the flat mapping, 1x1 in
    // the pointwise layout, partial channel tiles.
    for (cin, cout, h, w, k, pad) in [
        (37, 13, 8, 32, 3, 1),
        (20, 7, 8, 8, 3, 1),
        (9, 24, 7, 7, 3, 1),
        (50, 29, 16, 16, 1, 0),
        (6, 5, 5, 3, 1, 0),
    ] {
        for d in [
            Direct::new(h, w, k, pad),
            Direct::for_conv(h, w, k, pad, cin),
        ] {
            let x = padded(&d, &values(cin * h * w, 0.2), cin);
            let wt = values(cout * cin * k * k, 1.1);
            let scale = values(cout, 2.0);
            let shift = values(cout, 3.0);
            let what = format!("{:?} pointwise {}", (cin, cout, h, w, k), d.is_pointwise());
            both(&format!("forward {what}"), || {
                let mut out = vec![f32::NAN; cout * d.out_plane];
                let ep = Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu: true,
                };
                direct::forward_ep(&d, &x, cin, &wt, cout, &mut out, Some(ep));
                out
            });
            let dy = values(2 * cout * d.out_plane, 0.7);
            let x2 = [x.clone(), x.clone()].concat();
            both(&format!("lane weight gradient {what}"), || {
                let mut lanes = vec![0.0; direct::lanes_len(cout, cin, k * k)];
                direct::weight_grad(&d, &x2, cin, &dy, cout, &mut lanes, 2);
                lanes
            });
            if d.is_pointwise() {
                let dt = Direct::pointwise(h, w, cout);
                let dyp = padded(&dt, &values(cout * h * w, 0.9), cout);
                both(&format!("1x1 weight gradient {what}"), || {
                    let mut dyt = vec![f32::NAN; pointwise_wgrad::dyt_len(&dt, cout)];
                    pointwise_wgrad::transpose(&dt, &dyp, cout, &mut dyt);
                    let mut acc = vec![0.0; pointwise_wgrad::acc_len(cin, cout)];
                    pointwise_wgrad::weight_grad(&d, &x, cin, &dyt, cout, &mut acc);
                    [dyt, acc].concat()
                });
            }
        }
    }
}

pub fn winograd_equals_portable8() {
    for (cin, cout, h, w) in [(24, 17, 32, 32), (19, 16, 16, 16), (16, 20, 8, 24)] {
        let d = Direct::new(h, w, 3, 1);
        let x = values(cin * h * w, 0.4);
        let wt = values(cout * cin * 9, 1.3);
        let planes: Vec<&[f32]> = x.chunks_exact(h * w).collect();
        let scale: Vec<f32> = (0..cin).map(|c| 0.7 + 0.1 * (c % 5) as f32).collect();
        let shift: Vec<f32> = (0..cin).map(|c| 0.2 * (c % 3) as f32 - 0.2).collect();
        let pre = Affine {
            scale: &scale,
            shift: &shift,
            relu: true,
        };
        for large in [false, true] {
            let what = format!("{:?} large tiles {large}", (cin, cout, h, w));
            both(&format!("Winograd forward {what}"), || {
                let conv = PreparedConv::with_tiles(&d, &wt, cin, cout, 64, large);
                assert!(conv.is_winograd(), "{what} takes the Winograd path");
                let mut out = vec![f32::NAN; cout * h * w];
                let input = Input::Planes {
                    planes: &planes,
                    pre: Some(pre),
                };
                conv.run(input, 0, cout, &mut out, &mut Vec::new(), None);
                out
            });
            let dy = values(cout * h * w, 2.2);
            both(&format!("Winograd weight gradient {what}"), || {
                let Some(wg) = WeightGrad::with_tiles(&d, cin, cout, 64, large) else {
                    return Vec::new();
                };
                let mut acc = vec![0.0; wg.acc_len()];
                let input = Input::Planes {
                    planes: &planes,
                    pre: Some(pre),
                };
                wg.image(&d, input, &dy, &mut acc, &mut Vec::new());
                let mut dw = vec![0.0; cout * cin * 9];
                wg.fold(&mut acc, &mut dw);
                dw
            });
        }
    }
}

pub fn layers_equal_portable8() {
    // A training step's convolution through its glue (batch statistics,
    // BN-ReLU read on the fly, forward, both gradients, the BN backward),
    // and an inference unit fused into one chain.
    let (n, cin, oc, h, w) = (3, 20, 24, 16, 16);
    let x = Array4::from_shape_vec((n, cin, h, w), values(n * cin * h * w, 0.5)).unwrap();
    let wt = values(oc * cin * 9, 0.8);
    let g = ConvGeom {
        out_channels: oc,
        kernel: 3,
        stride: 1,
        pad: 1,
    };
    both("training convolution", || {
        let stats = batch_stats(&x);
        let mut pre = Pre::affine(values(cin, 1.0), values(cin, 4.0), true);
        pre.mean = stats.mean.clone();
        pre.inv_std = stats.var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
        pre.batch_stats = true;
        let y = conv2d(&[&x], Some(&pre), &wt, None, g);
        let dy = y.mapv(|v| (v * 3.0).sin());
        let mut dw = vec![0.0f32; wt.len()];
        let dz = conv2d_backward(&[&x], Some(&pre), &wt, &dy, g, &mut dw, None);
        let mut dx = stale_like(&x);
        let mut dbn = vec![0.0f32; 2 * cin];
        pre_backward(
            &[&x],
            dz,
            Some(&pre),
            Some(&mut dbn),
            &mut [&mut dx],
            &[true],
        );
        [
            stats.mean,
            stats.var,
            y.into_raw_vec_and_offset().0,
            dw,
            dbn,
            dx.into_raw_vec_and_offset().0,
        ]
        .concat()
    });
    let bottleneck = values(48 * cin, 0.6);
    both("inference chain", || {
        let pre_a = Pre::affine(values(cin, 1.5), values(cin, 2.5), false);
        let pre_b = Pre::affine(values(48, 1.7), values(48, 2.7), true);
        let wb = values(oc * 48 * 9, 0.3);
        let step1 = ConvStep {
            pre: Some(&pre_a),
            weight: &bottleneck,
            bias: None,
            geom: ConvGeom {
                out_channels: 48,
                kernel: 1,
                stride: 1,
                pad: 0,
            },
        };
        let step2 = ConvStep {
            pre: Some(&pre_b),
            weight: &wb,
            bias: None,
            geom: g,
        };
        conv_chain(&[&x], Some(step1), step2, None)
            .into_raw_vec_and_offset()
            .0
    });
}

pub fn batch1_splits_equal_one_image_per_thread() {
    // A batch of one splits each layer over the threads (output positions
    // for few output channels, channels or Winograd blocks for more); a
    // batch of two runs each image whole on a thread. The same sums either
    // way: equal to the bit.
    for (cin, oc, h, w) in [
        (30, 12, 32, 32),
        (20, 12, 8, 8),
        (40, 24, 16, 16),
        (33, 12, 16, 8),
    ] {
        let one = Array4::from_shape_vec((1, cin, h, w), values(cin * h * w, 0.1)).unwrap();
        let two = ndarray::concatenate(ndarray::Axis(0), &[one.view(), one.view()]).unwrap();
        let wt = values(oc * cin * 9, 0.4);
        let pre = Pre::affine(values(cin, 1.2), values(cin, 2.2), true);
        let g = ConvGeom {
            out_channels: oc,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let a = conv2d(&[&one], Some(&pre), &wt, None, g);
        let b = conv2d(&[&two], Some(&pre), &wt, None, g);
        let bits = |v: ndarray::ArrayView3<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(a.index_axis(ndarray::Axis(0), 0)),
            bits(b.index_axis(ndarray::Axis(0), 1)),
            "{:?}: batch 1 split against a whole image",
            (cin, oc, h, w)
        );
    }
}
