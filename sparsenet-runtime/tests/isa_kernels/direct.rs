//! The direct convolution kernels against their definitions: forward (both
//! output mappings, the pointwise layout), the input gradient as the
//! adjoint of forward, the lane weight gradient.

#![allow(clippy::too_many_arguments)]

use sparsenet_runtime::__private::direct::*;

/// Plain stride-1 convolution from its definition, in f64.
pub fn reference(
    x: &[f32],
    cin: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    cout: usize,
    k: usize,
    pad: usize,
) -> (Vec<f64>, usize, usize) {
    let (ho, wo) = (h + 2 * pad - k + 1, w + 2 * pad - k + 1);
    let mut out = vec![0.0; cout * ho * wo];
    for o in 0..cout {
        for y in 0..ho {
            for xo in 0..wo {
                let mut s = 0.0f64;
                for c in 0..cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (y + ky, xo + kx);
                            if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                continue;
                            }
                            s += wt[((o * cin + c) * k + ky) * k + kx] as f64
                                * x[(c * h + iy - pad) * w + ix - pad] as f64;
                        }
                    }
                }
                out[(o * ho + y) * wo + xo] = s;
            }
        }
    }
    (out, ho, wo)
}

/// Both layouts where a 1x1 kernel allows the pointwise one.
fn layouts(h: usize, w: usize, k: usize, pad: usize, chans: usize) -> Vec<Direct> {
    let mut v = vec![Direct::new(h, w, k, pad)];
    if k == 1 && pad == 0 {
        v.push(Direct::pointwise(h, w, chans));
    }
    v
}

pub fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.731 + seed).sin() * 1.3)
        .collect()
}

pub fn padded(d: &Direct, x: &[f32], cin: usize) -> Vec<f32> {
    let mut xp = vec![f32::NAN; d.input_len(cin)];
    for c in 0..cin {
        d.fill(
            c,
            &x[c * d.h * d.w..(c + 1) * d.h * d.w],
            &mut xp,
            |s, t| t.copy_from_slice(s),
        );
    }
    xp
}

fn nchw(d: &Direct, out: &[f32], cout: usize) -> Vec<f32> {
    if d.rows {
        return out[..cout * d.ho * d.wo].to_vec();
    }
    let mut dst = vec![0.0; cout * d.ho * d.wo];
    for o in 0..cout {
        d.compact(
            &out[o * d.out_plane..(o + 1) * d.out_plane],
            &mut dst[o * d.ho * d.wo..(o + 1) * d.ho * d.wo],
        );
    }
    dst
}

// (cin, cout, h, w, k, pad): both mappings, tile remainders in channels
// and vectors, 1x1, 3x3 and 5x5 kernels, valid and same padding.
const CASES: [(usize, usize, usize, usize, usize, usize); 12] = [
    (70, 30, 4, 8, 3, 1),
    (300, 26, 3, 5, 1, 0),
    (5, 12, 8, 16, 3, 1),
    (7, 13, 7, 5, 3, 1),
    (3, 4, 4, 8, 3, 1),
    (9, 24, 3, 3, 3, 1),
    (6, 7, 6, 6, 1, 0),
    (5, 7, 3, 5, 1, 0),
    (40, 14, 4, 6, 1, 0),
    (4, 9, 8, 8, 1, 0),
    (2, 5, 9, 11, 5, 2),
    (3, 2, 10, 10, 3, 0),
];

pub fn forward_matches_the_definition() {
    for (cin, cout, h, w, k, pad) in CASES {
        for d in layouts(h, w, k, pad, cin) {
            let x = values(cin * h * w, 0.3);
            let wt = values(cout * cin * k * k, 1.7);
            let (want, _, _) = reference(&x, cin, h, w, &wt, cout, k, pad);
            let mut out = vec![f32::NAN; cout * d.out_plane];
            forward(&d, &padded(&d, &x, cin), cin, &wt, cout, &mut out);
            let got = nchw(&d, &out, cout);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "case {:?} (pointwise layout: {}) element {i}: {g} vs {r}",
                    (cin, cout, h, w, k, pad),
                    d.is_pointwise()
                );
            }
        }
    }
}

pub fn input_gradient_is_the_adjoint_of_forward() {
    // <conv(x), dy> == <x, conv_T(dy)> for random x and dy.
    for (cin, cout, h, w, k, pad) in CASES {
        if pad >= k {
            continue;
        }
        let x = values(cin * h * w, 0.1);
        let wt = values(cout * cin * k * k, 2.9);
        let (y, ho, wo) = reference(&x, cin, h, w, &wt, cout, k, pad);
        let dy = values(cout * ho * wo, 4.2);
        let lhs: f64 = y.iter().zip(&dy).map(|(&a, &b)| a * b as f64).sum();
        for dt in layouts(ho, wo, k, k - 1 - pad, cout) {
            assert_eq!((dt.ho, dt.wo), (h, w));
            let mut dx = vec![f32::NAN; cin * dt.out_plane];
            forward(
                &dt,
                &padded(&dt, &dy, cout),
                cout,
                &flipped_kernel(&wt, cout, cin, k * k),
                cin,
                &mut dx,
            );
            let dx = nchw(&dt, &dx, cin);
            let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()),
                "case {:?} (pointwise layout: {}): {lhs} vs {rhs}",
                (cin, cout, h, w, k, pad),
                dt.is_pointwise()
            );
        }
    }
}

pub fn weight_gradient_matches_the_definition() {
    for (cin, cout, h, w, k, pad) in CASES {
        for d in layouts(h, w, k, pad, cin) {
            let x = values(cin * h * w, 0.5);
            let dy = values(cout * d.ho * d.wo, 3.3);
            // dW[o][c][t] = sum_p dy[o][p] * x_padded[c][p + tap]
            let kk = k * k;
            let mut want = vec![0.0f64; cout * cin * kk];
            for o in 0..cout {
                for c in 0..cin {
                    for t in 0..kk {
                        let (ky, kx) = (t / k, t % k);
                        let mut s = 0.0;
                        for y in 0..d.ho {
                            for xo in 0..d.wo {
                                let (iy, ix) = (y + ky, xo + kx);
                                if iy < pad || ix < pad || iy - pad >= h || ix - pad >= w {
                                    continue;
                                }
                                s += dy[(o * d.ho + y) * d.wo + xo] as f64
                                    * x[(c * h + iy - pad) * w + ix - pad] as f64;
                            }
                        }
                        want[(o * cin + c) * kk + t] = s;
                    }
                }
            }
            let dyk = if d.rows {
                dy.clone()
            } else {
                let mut g = vec![f32::NAN; cout * d.out_plane];
                for o in 0..cout {
                    d.expand(
                        &dy[o * d.ho * d.wo..(o + 1) * d.ho * d.wo],
                        &mut g[o * d.out_plane..(o + 1) * d.out_plane],
                    );
                }
                g
            };
            let mut dw = vec![1.0f32; cout * cin * kk];
            let mut lanes = vec![0.0; lanes_len(cout, cin, kk)];
            let xp = padded(&d, &x, cin);
            // One image, then the same image once more and twice more as a
            // batch of two, into the same lanes: four times the sums.
            weight_grad(&d, &xp, cin, &dyk, cout, &mut lanes, 1);
            let two_x = [xp.clone(), xp].concat();
            let two_dy = [dyk.clone(), dyk].concat();
            weight_grad(&d, &two_x, cin, &two_dy, cout, &mut lanes, 1);
            weight_grad(&d, &two_x, cin, &two_dy, cout, &mut lanes, 2);
            fold_lanes(&lanes, cout, cin, kk, &mut dw);
            for (i, (&g, &r)) in dw.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - 1.0 - 4.0 * r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "case {:?} (pointwise layout: {}) element {i}: {g} vs 1 + 4 * {r}",
                    (cin, cout, h, w, k, pad),
                    d.is_pointwise()
                );
            }
        }
    }
}
