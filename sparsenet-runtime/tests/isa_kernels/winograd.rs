//! The Winograd convolutions (F(2x2, 3x3) and F(4x4, 3x3): forward, split
//! over the threads, from planes through a BN-ReLU, weight gradient)
//! against the definition in f64, and which layers take them. The harness
//! switches Winograd on, whatever `SPARSENET_WINOGRAD` says.

use crate::direct::{padded, values};
use sparsenet_runtime::__private::direct::{Direct, Epilogue};
use sparsenet_runtime::__private::winograd::*;

/// A 3x3 pad-1 convolution from its definition, in f64, NCHW.
fn reference(x: &[f32], cin: usize, h: usize, w: usize, wt: &[f32], cout: usize) -> Vec<f64> {
    crate::direct::reference(x, cin, h, w, wt, cout, 3, 1).0
}

pub fn winograd_matches_the_definition() {
    // (cin, cout, h, w, tile side with large tiles allowed): each
    // tiling above, channel counts that leave partial tiles of the
    // products.
    for (cin, cout, h, w, m) in [
        (96, 24, 32, 32, 4),
        (24, 96, 32, 32, 4),
        (17, 16, 32, 64, 4),
        (24, 96, 16, 16, 4),
        (17, 16, 16, 16, 4),
        (16, 19, 24, 24, 2),
        (21, 16, 8, 32, 4),
        (40, 20, 64, 48, 4),
    ] {
        for large in [false, true] {
            let m = if large { m } else { 2 };
            matches_the_definition(cin, cout, h, w, large, m);
        }
    }
}

/// One case of [`winograd_matches_the_definition`], through tiles of
/// side `m`.
fn matches_the_definition(cin: usize, cout: usize, h: usize, w: usize, large: bool, m: usize) {
    {
        let d = Direct::new(h, w, 3, 1);
        let x = values(cin * h * w, 0.3);
        let wt = values(cout * cin * 9, 1.7);
        let want = reference(&x, cin, h, w, &wt, cout);
        // Per output, the sum of its terms' magnitudes: the scale of
        // the rounding of any f32 sum of them.
        let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
        let mass = reference(&abs(&x), cin, h, w, &abs(&wt), cout);
        let xp = padded(&d, &x, cin);
        let conv = PreparedConv::with_tiles(&d, &wt, cin, cout, 64, large);
        let tiles = conv.tile_size();
        assert_eq!(tiles, Some(m), "{:?} takes {m}x{m} tiles", (h, w, large));
        // Measured worst error / mass over these cases: 1.9e-7 (2x2),
        // 1.4e-6 (4x4, whose coefficients run to 8 and 1/24).
        let tol = if m == 2 { 1e-6 } else { 5e-6 };
        let scale: Vec<f32> = (0..cout).map(|o| 0.5 + o as f32 * 0.1).collect();
        let shift: Vec<f32> = (0..cout).map(|o| o as f32 * 0.2 - 1.0).collect();
        let mut scratch = vec![f32::NAN; 3];
        // All channels, no epilogue; then channels 1.. (or all of a
        // single one) with an epilogue and ReLU, into a stale buffer.
        let mut out = vec![f32::NAN; cout * h * w];
        conv.run(Input::Padded(&xp), 0, cout, &mut out, &mut scratch, None);
        // The image's blocks split over the threads: the same numbers.
        let mut split = vec![f32::NAN; cout * h * w];
        conv.run_split(Input::Padded(&xp), &mut split, None);
        assert_eq!(
            bits(&split),
            bits(&out),
            "{:?} split by blocks",
            (cin, cout, h, w)
        );
        // From the planes as they are, a strip at a time: the same
        // numbers to the bit; through a BN-ReLU, those of the padded
        // transformed planes.
        let planes: Vec<&[f32]> = x.chunks_exact(h * w).collect();
        let mut from_planes = vec![f32::NAN; cout * h * w];
        let input = Input::Planes {
            planes: &planes,
            pre: None,
        };
        conv.run(input, 0, cout, &mut from_planes, &mut scratch, None);
        assert_eq!(
            bits(&from_planes),
            bits(&out),
            "{:?} from planes",
            (cin, cout, h, w)
        );
        let (a_scale, a_shift) = affine_values(cin);
        let pre = Affine {
            scale: &a_scale,
            shift: &a_shift,
            relu: true,
        };
        let xt = apply(&pre, &x, h * w);
        let mut want_t = vec![f32::NAN; cout * h * w];
        let xtp = padded(&d, &xt, cin);
        conv.run(
            Input::Padded(&xtp),
            0,
            cout,
            &mut want_t,
            &mut scratch,
            None,
        );
        let input = Input::Planes {
            planes: &planes,
            pre: Some(pre),
        };
        conv.run(input, 0, cout, &mut from_planes, &mut scratch, None);
        assert_eq!(
            bits(&from_planes),
            bits(&want_t),
            "{:?} from planes through a BN-ReLU",
            (cin, cout, h, w)
        );
        let c0 = if cout > 1 { 1 } else { 0 };
        let cn = cout - c0;
        let mut part = vec![f32::NAN; cn * h * w];
        let ep = Epilogue {
            scale: &scale[c0..],
            shift: &shift[c0..],
            relu: true,
        };
        conv.run(
            Input::Padded(&xp),
            c0,
            cn,
            &mut part,
            &mut scratch,
            Some(ep),
        );
        let mut worst = 0.0f64;
        for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
            let err = (g as f64 - r).abs() / mass[i];
            worst = worst.max(err);
            assert!(
                err <= tol,
                "{:?} element {i}: {g} vs {r} (terms' magnitudes {})",
                (cin, cout, h, w, m),
                mass[i]
            );
        }
        eprintln!(
            "{:?}: worst error / terms' magnitudes {worst:.2e}",
            (cin, cout, h, w, m)
        );
        for (i, &g) in part.iter().enumerate() {
            let o = c0 + i / (h * w);
            let r = (want[c0 * h * w + i] * scale[o] as f64 + shift[o] as f64).max(0.0);
            let bound = tol * mass[c0 * h * w + i] * scale[o] as f64 + 1e-6 * r.abs();
            assert!(
                (g as f64 - r).abs() <= bound,
                "{:?} channels {c0}.. with the epilogue, element {i}: {g} vs {r}",
                (cin, cout, h, w, m)
            );
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A BN-ReLU's scale and shift for `cin` channels, some of each sign.
fn affine_values(cin: usize) -> (Vec<f32>, Vec<f32>) {
    (
        (0..cin).map(|c| 0.8 + 0.05 * (c % 7) as f32).collect(),
        (0..cin).map(|c| 0.1 * (c % 3) as f32 - 0.1).collect(),
    )
}

/// `pre` applied to each plane of `x` (`hw` floats each).
fn apply(pre: &Affine, x: &[f32], hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (c, (s, d)) in x.chunks_exact(hw).zip(out.chunks_exact_mut(hw)).enumerate() {
        pre.row(c, s, d);
    }
    out
}

pub fn weight_gradient_matches_the_definition() {
    // (cin, cout, h, w): channel counts that are and are not whole
    // vectors or tiles of the products; two images summed; through
    // 2x2 tiles, then 4x4 (where rows have 4 tiles too).
    let cases = [(96, 24, 32, 32), (17, 16, 16, 16), (16, 19, 8, 32)];
    for ((cin, cout, h, w), large) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
        let d = Direct::new(h, w, 3, 1);
        let wg = WeightGrad::with_tiles(&d, cin, cout, 64, large).expect("takes the Winograd path");
        assert_eq!(wg.tile_size(), if large { 4 } else { 2 });
        // Measured worst error / mass: 2.0e-6 (2x2), 4.6e-6 (4x4).
        let tol = if large { 2e-5 } else { 1e-5 };
        let mut acc = vec![0.0; wg.acc_len()];
        // The same sums from the images' planes through a BN-ReLU, and
        // from their padded transformed planes: equal to the bit.
        let (mut acc_planes, mut acc_padded) = (acc.clone(), acc.clone());
        let (a_scale, a_shift) = affine_values(cin);
        let pre = Affine {
            scale: &a_scale,
            shift: &a_shift,
            relu: true,
        };
        let mut scratch = vec![f32::NAN; 5];
        let mut want = vec![1.0f64; cout * cin * 9];
        // Per weight, the sum of the terms' magnitudes: the scale of
        // the rounding of any f32 sum of them.
        let mut mass = vec![0.0f64; cout * cin * 9];
        for img in 0..2 {
            let x = values(cin * h * w, 0.3 + img as f32);
            let dy = values(cout * h * w, 2.1 + img as f32);
            let xp = padded(&d, &x, cin);
            wg.image(&d, Input::Padded(&xp), &dy, &mut acc, &mut scratch);
            let planes: Vec<&[f32]> = x.chunks_exact(h * w).collect();
            let input = Input::Planes {
                planes: &planes,
                pre: Some(pre),
            };
            wg.image(&d, input, &dy, &mut acc_planes, &mut scratch);
            let xtp = padded(&d, &apply(&pre, &x, h * w), cin);
            wg.image(&d, Input::Padded(&xtp), &dy, &mut acc_padded, &mut scratch);
            for o in 0..cout {
                for c in 0..cin {
                    for t in 0..9 {
                        let (ky, kx) = (t / 3, t % 3);
                        let (mut s, mut m) = (0.0, 0.0);
                        for y in 0..h {
                            for xo in 0..w {
                                let (iy, ix) = ((y + ky) as isize - 1, (xo + kx) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let p = dy[(o * h + y) * w + xo] as f64
                                    * x[(c * h + iy as usize) * w + ix as usize] as f64;
                                s += p;
                                m += p.abs();
                            }
                        }
                        want[(o * cin + c) * 9 + t] += s;
                        mass[(o * cin + c) * 9 + t] += m;
                    }
                }
            }
        }
        assert_eq!(
            bits(&acc_planes),
            bits(&acc_padded),
            "{:?} from planes through a BN-ReLU",
            (cin, cout, h, w)
        );
        let mut dw = vec![1.0f32; cout * cin * 9];
        wg.fold(&mut acc, &mut dw);
        assert!(acc.iter().all(|&a| a == 0.0), "fold zeroes the accumulator");
        let mut worst = 0.0f64;
        for (i, (&g, &r)) in dw.iter().zip(&want).enumerate() {
            let rel = (g as f64 - r).abs() / (1.0 + mass[i]);
            worst = worst.max(rel);
            assert!(
                rel <= tol,
                "{:?} element {i}: {g} vs {r} (terms' magnitudes {})",
                (cin, cout, h, w),
                mass[i]
            );
        }
        eprintln!(
            "{:?}: worst error / terms' magnitudes {worst:.2e}",
            (cin, cout, h, w, wg.tile_size())
        );
    }
}

pub fn other_geometries_take_the_direct_kernel() {
    let d = Direct::new(28, 28, 3, 1);
    let wt = values(16 * 16 * 9, 0.1);
    assert!(!PreparedConv::new(&d, &wt, 16, 16, 64).is_winograd());
    let d = Direct::new(32, 32, 3, 1);
    // Fewer images than threads: split by output channels, direct.
    if sparsenet_runtime::__private::threads::available() > 1 {
        assert!(!PreparedConv::new(&d, &wt, 16, 16, 1).is_winograd());
    }
    assert!(PreparedConv::new(&d, &wt, 16, 16, 4).is_winograd());
    // Too few input or output channels for the transforms to pay.
    let wt = values(12 * 48 * 9, 0.1);
    assert!(!PreparedConv::new(&d, &wt, 48, 12, 64).is_winograd());
    assert!(!PreparedConv::new(&d, &wt, 12, 48, 64).is_winograd());
    assert!(WeightGrad::new(&d, 48, 12, 64).is_none());
    assert!(WeightGrad::new(&d, 48, 16, 64).is_some());
}
