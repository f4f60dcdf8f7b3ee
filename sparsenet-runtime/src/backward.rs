//! Backward kernels, one per forward kernel in [`crate::kernels`].
//!
//! Nothing but the sources of each node is kept from the forward pass: the
//! BN-ReLU outputs and the im2col matrices are recomputed from the sources
//! and the node's [`Pre`] (the memory-efficient DenseNet approach), and each
//! op first produces the gradient `dz` with respect to its (virtual,
//! transformed) concatenated input; [`pre_backward`] then takes it through
//! ReLU and BatchNorm and accumulates it into each source's gradient.

use crate::kernels::{for_each_plane, im2col, read, ConvGeom, Pre};
use crate::{concat_channels, Float};
use ndarray::{linalg::general_mat_mul, s, Array2, Array4, ArrayView2};

/// A zero gradient buffer shaped like `x`.
pub fn zeros_like<T: Float>(x: &Array4<T>) -> Array4<T> {
    Array4::zeros(x.raw_dim())
}

/// Convolution backward. Accumulates into `dweight` (OIHW) and `dbias`, and
/// returns the gradient with respect to the transformed, concatenated input.
pub fn conv2d_backward<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    dy: &Array4<T>,
    g: ConvGeom,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
) -> Array4<T> {
    let (n, _, h, w) = srcs[0].dim();
    let cin = concat_channels(srcs);
    let (k, stride, pad) = (g.kernel, g.stride, g.pad);
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    let kdim = cin * k * k;
    let wmat = ArrayView2::from_shape((g.out_channels, kdim), weight).expect("weight matches the plan");
    let mut dw = ndarray::ArrayViewMut2::from_shape((g.out_channels, kdim), dweight).expect("dweight matches");
    let mut dz = Array4::<T>::zeros((n, cin, h, w));
    let mut col = Array2::<T>::zeros((kdim, ho * wo));
    let mut dcol = Array2::<T>::zeros((kdim, ho * wo));
    let mut db = dbias;
    for b in 0..n {
        let dyb = dy.slice(s![b, .., .., ..]);
        let dyb = dyb.into_shape_with_order((g.out_channels, ho * wo)).expect("contiguous");
        im2col(srcs, pre, b, g, col.as_slice_mut().expect("contiguous"));
        general_mat_mul(T::one(), &dyb, &col.t(), T::one(), &mut dw);
        if let Some(db) = db.as_deref_mut() {
            for (d, row) in db.iter_mut().zip(dyb.rows()) {
                *d += row.sum();
            }
        }
        general_mat_mul(T::one(), &wmat.t(), &dyb, T::zero(), &mut dcol);
        // col2im: scatter-add dcol back onto the input positions.
        let dcol = dcol.as_slice().expect("contiguous");
        let mut dzb = dz.slice_mut(s![b, .., .., ..]);
        let dzb = dzb.as_slice_mut().expect("contiguous");
        for c in 0..cin {
            let plane = &mut dzb[c * h * w..(c + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &dcol[((c * k + ky) * k + kx) * ho * wo..][..ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let line = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                        for ox in 0..wo {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix >= 0 && ix < w as isize {
                                line[ix as usize] += row[oy * wo + ox];
                            }
                        }
                    }
                }
            }
        }
    }
    dz
}

/// Average pooling backward: spreads each output gradient over its window.
pub fn avg_pool_backward<T: Float>(dy: &Array4<T>, k: usize, stride: usize, in_size: (usize, usize)) -> Array4<T> {
    let (n, c, ho, wo) = dy.dim();
    let (h, w) = in_size;
    let mut dz = Array4::<T>::zeros((n, c, h, w));
    let inv = T::one() / T::from_usize(k * k).expect("small integer");
    for b in 0..n {
        for ch in 0..c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let g = dy[[b, ch, oy, ox]] * inv;
                    for ky in 0..k {
                        for kx in 0..k {
                            dz[[b, ch, oy * stride + ky, ox * stride + kx]] += g;
                        }
                    }
                }
            }
        }
    }
    dz
}

/// Max pooling backward: routes each output gradient to the (first) maximum
/// of its window, recomputed from the sources.
pub fn max_pool_backward<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    dy: &Array4<T>,
    k: usize,
    stride: usize,
    pad: usize,
) -> Array4<T> {
    let (n, _, h, w) = srcs[0].dim();
    let (_, _, ho, wo) = dy.dim();
    let cin = concat_channels(srcs);
    let mut dz = Array4::<T>::zeros((n, cin, h, w));
    for b in 0..n {
        let dyb = dy.slice(s![b, .., .., ..]);
        let mut dzb = dz.slice_mut(s![b, .., .., ..]);
        let dzb = dzb.as_slice_mut().expect("contiguous");
        for_each_plane(srcs, b, |c, plane| {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = T::neg_infinity();
                    let mut at = usize::MAX;
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let i = iy as usize * w + ix as usize;
                            let v = read(pre, c, plane[i]);
                            if v > best {
                                best = v;
                                at = i;
                            }
                        }
                    }
                    if at != usize::MAX {
                        dzb[c * h * w + at] += dyb[[c, oy, ox]];
                    }
                }
            }
        });
    }
    dz
}

/// Global average pool + dense backward. Accumulates into `dweight`
/// (classes, channels) and `dbias`; returns the gradient with respect to
/// the transformed, concatenated input.
pub fn gap_dense_backward<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    dlogits: &Array2<T>,
    dweight: &mut [T],
    dbias: &mut [T],
) -> Array4<T> {
    let (n, _, h, w) = srcs[0].dim();
    let cin = concat_channels(srcs);
    let classes = dlogits.dim().1;
    let inv = T::one() / T::from_usize(h * w).expect("small integer");
    let mut feat = Array2::<T>::zeros((n, cin));
    for b in 0..n {
        for_each_plane(srcs, b, |c, plane| {
            let mut acc = T::zero();
            for &v in plane {
                acc += read(pre, c, v);
            }
            feat[[b, c]] = acc * inv;
        });
    }
    let mut dw = ndarray::ArrayViewMut2::from_shape((classes, cin), dweight).expect("dweight matches");
    general_mat_mul(T::one(), &dlogits.t(), &feat, T::one(), &mut dw);
    for (d, col) in dbias.iter_mut().zip(dlogits.columns()) {
        *d += col.sum();
    }
    let wmat = ArrayView2::from_shape((classes, cin), weight).expect("weight matches");
    let dfeat = dlogits.dot(&wmat);
    let mut dz = Array4::<T>::zeros((n, cin, h, w));
    for b in 0..n {
        for c in 0..cin {
            let g = dfeat[[b, c]] * inv;
            dz.slice_mut(s![b, c, .., ..]).fill(g);
        }
    }
    dz
}

/// Takes `dz`, the gradient with respect to `pre(concat(srcs))`, back
/// through ReLU and BatchNorm (batch statistics or fixed ones, as `pre`
/// says), accumulating gamma/beta gradients into `dbn` (gamma then beta, as
/// in the parameter store) and each source's gradient into `dsrcs`.
/// Without `pre`, `dz` is split and added to the sources as it is.
pub fn pre_backward<T: Float>(
    srcs: &[&Array4<T>],
    dz: &Array4<T>,
    pre: Option<&Pre<T>>,
    dbn: Option<&mut [T]>,
    dsrcs: &mut [&mut Array4<T>],
) {
    let (n, _, h, w) = srcs[0].dim();
    let hw = h * w;
    let cin = concat_channels(srcs);
    let dz = dz.as_slice().expect("contiguous");
    let mut dbn = dbn;
    let mut c0 = 0;
    for (src, dsrc) in srcs.iter().zip(dsrcs.iter_mut()) {
        let cs = src.dim().1;
        let x = src.as_slice().expect("contiguous");
        let dx = dsrc.as_slice_mut().expect("contiguous");
        for ci in 0..cs {
            let c = c0 + ci;
            let zoff = |b: usize| (b * cin + c) * hw;
            let xoff = |b: usize| (b * cs + ci) * hw;
            let Some(p) = pre else {
                for b in 0..n {
                    for (d, &g) in dx[xoff(b)..xoff(b) + hw].iter_mut().zip(&dz[zoff(b)..zoff(b) + hw]) {
                        *d += g;
                    }
                }
                continue;
            };
            let (scale, shift, mean, inv_std) = (p.scale[c], p.shift[c], p.mean[c], p.inv_std[c]);
            // da = dz masked by the ReLU, recomputed from x.
            let da = |xv: T, g: T| if p.relu && scale * xv + shift <= T::zero() { T::zero() } else { g };
            let mut sum_da = 0.0f64;
            let mut sum_da_xhat = 0.0f64;
            for b in 0..n {
                let xs = &x[xoff(b)..xoff(b) + hw];
                let gs = &dz[zoff(b)..zoff(b) + hw];
                for (&xv, &g) in xs.iter().zip(gs) {
                    let a = da(xv, g);
                    sum_da += a.to_f64c();
                    sum_da_xhat += (a * (xv - mean) * inv_std).to_f64c();
                }
            }
            if let Some(dbn) = dbn.as_deref_mut() {
                dbn[c] += T::from_f64c(sum_da_xhat);
                dbn[cin + c] += T::from_f64c(sum_da);
            }
            let m = (n * hw) as f64;
            let (mean_da, mean_da_xhat) = if p.batch_stats {
                (T::from_f64c(sum_da / m), T::from_f64c(sum_da_xhat / m))
            } else {
                (T::zero(), T::zero())
            };
            for b in 0..n {
                let xs = &x[xoff(b)..xoff(b) + hw];
                let gs = &dz[zoff(b)..zoff(b) + hw];
                let ds = &mut dx[xoff(b)..xoff(b) + hw];
                for ((d, &xv), &g) in ds.iter_mut().zip(xs).zip(gs) {
                    let a = da(xv, g);
                    let xhat = (xv - mean) * inv_std;
                    *d += scale * (a - mean_da - xhat * mean_da_xhat);
                }
            }
        }
        c0 += cs;
    }
}

/// Backward of dropout: the same mask (regenerated from its seed) applied
/// to the gradient.
pub fn dropout_backward<T: Float>(dy: &mut Array4<T>, p: f64, seed: u64) {
    if p > 0.0 && seed != 0 {
        crate::ctx::apply_dropout_mask(dy.as_slice_mut().expect("contiguous"), p, seed);
    }
}
