//! Backward kernels, one per forward kernel in [`crate::cpu::layers::forward`].
//!
//! Nothing but the sources of each node is kept from the forward pass: the
//! BN-ReLU outputs and the im2col matrices are recomputed from the sources
//! and the node's [`Pre`] (the memory-efficient DenseNet approach), and each
//! op first produces the gradient `dz` with respect to its (virtual,
//! transformed) concatenated input; [`pre_backward`] then takes it through
//! ReLU and BatchNorm and accumulates it into each source's gradient.

use crate::cpu::conv::direct::{self, flipped_kernel, Direct};
use crate::cpu::conv::matmul::{matmul, Mat};
use crate::cpu::conv::pointwise_wgrad;
use crate::cpu::conv::winograd::{Input, PreparedConv, WeightGrad};
use crate::cpu::layers::forward::concat_channels;
use crate::cpu::layers::forward::{
    as_f32, as_f32_mut, channel_planes, for_each_plane, gather_into, gather_unfold, im2col, read,
    use_direct, ConvGeom, PoolWindow, Pre, LANES,
};
use crate::cpu::parallel::scratch::{stale4, zeros4, Scratch};
use crate::Float;
use ndarray::parallel::prelude::*;
use ndarray::{linalg::general_mat_mul, s, Array2, Array4, ArrayView2, Axis};

/// The gradient with respect to a node's transformed, concatenated input, as
/// a backward kernel hands it to [`pre_backward`]: `dz` itself and, when the
/// kernel computed them on the way (while each image's gradient was in
/// cache), the per-channel BatchNorm sums over it that `pre_backward` would
/// otherwise compute in a pass of its own.
pub struct InputGrad<T> {
    pub dz: Array4<T>,
    /// Per concatenated channel: the sums over the batch of `da` and of
    /// `da * xhat` (see [`pre_backward`]).
    bn_sums: Option<Vec<(f64, f64)>>,
}

impl<T> From<Array4<T>> for InputGrad<T> {
    fn from(dz: Array4<T>) -> Self {
        InputGrad { dz, bn_sums: None }
    }
}

/// A gradient buffer shaped like `x` with unspecified (stale) contents, for
/// a source whose first [`pre_backward`] call stores rather than adds.
pub fn stale_like<T: Float>(x: &Array4<T>) -> Array4<T> {
    crate::cpu::parallel::scratch::stale4(x.dim())
}

/// Convolution backward. Accumulates into `dweight` (OIHW) and `dbias`, and
/// returns the gradient with respect to the transformed, concatenated input
/// (with its BatchNorm sums when the direct kernels computed it).
///
/// The batch is split into one chunk per worker thread; each chunk sums its
/// own weight gradient and the chunks' sums are added in chunk order, so the
/// result is deterministic for a given thread count.
pub fn conv2d_backward<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    dy: &Array4<T>,
    g: ConvGeom,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
) -> InputGrad<T> {
    if g.stride == 1 && g.pad < g.kernel && use_direct::<T>() {
        return conv2d_backward_direct(srcs, pre, weight, dy, g, dweight, dbias);
    }
    let (n, _, h, w) = srcs[0].dim();
    let cin = concat_channels(srcs);
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    let (oc, kdim, hw_out) = (g.out_channels, cin * g.kernel * g.kernel, ho * wo);
    let wmat = Mat::rows(weight, oc, kdim);
    let plain = g.kernel == 1 && g.stride == 1 && g.pad == 0;
    let k = g.kernel;
    // A stride-1 convolution's input gradient is itself a convolution: of dy
    // (padded by k-1-pad) with the flipped, transposed kernel. Unfolding dy
    // (Cout*k*k rows) instead of scattering an unfolded gradient (Cin*k*k
    // rows) back with col2im moves far less memory when Cin > Cout, and gives
    // the product a depth of Cout*k*k instead of Cout.
    let transposed = !plain && g.stride == 1 && g.pad < k;
    let tgeom = ConvGeom {
        out_channels: cin,
        kernel: k,
        stride: 1,
        pad: k - 1 - g.pad.min(k - 1),
    };
    let wflip: Vec<T> = if transposed {
        flipped_kernel(weight, oc, cin, k * k)
    } else {
        Vec::new()
    };
    let mut dz = zeros4((n, cin, h, w));
    let chunk = n.div_ceil(rayon::current_num_threads()).max(1);
    let dy_all = dy.as_slice().expect("contiguous");
    let partials: Vec<(Vec<T>, Vec<T>)> = dz
        .axis_chunks_iter_mut(Axis(0), chunk)
        .into_par_iter()
        .enumerate()
        .map(|(ci, mut dzc)| {
            let mut dw = vec![T::zero(); oc * kdim];
            let mut db = vec![T::zero(); oc];
            let mut xin = Scratch::with_capacity(cin * h * w);
            let mut col = Scratch::with_capacity(if plain { 0 } else { kdim * hw_out });
            let dcol_len = if transposed {
                oc * k * k * h * w
            } else if plain {
                0
            } else {
                kdim * hw_out
            };
            let mut dcol = Scratch::with_capacity(dcol_len);
            dcol.0.resize(dcol_len, T::zero());
            for (lb, mut dzb) in dzc.axis_iter_mut(Axis(0)).enumerate() {
                let b = ci * chunk + lb;
                let dyb = &dy_all[b * oc * hw_out..(b + 1) * oc * hw_out];
                let rhs = gather_unfold(srcs, pre, b, g, &mut xin.0, &mut col.0);
                // dW += dy_b (O x HW) * unfolded^T (HW x K)
                matmul(
                    &mut dw,
                    Mat::rows(dyb, oc, hw_out),
                    Mat::rows(rhs, kdim, hw_out).t(),
                    true,
                );
                for (d, row) in db.iter_mut().zip(dyb.chunks_exact(hw_out)) {
                    *d += row.iter().copied().sum::<T>();
                }
                let dzb = dzb.as_slice_mut().expect("contiguous");
                if plain {
                    // dz_b = W^T (K x O) * dy_b (O x HW)
                    matmul(dzb, wmat.t(), Mat::rows(dyb, oc, hw_out), false);
                } else if transposed {
                    // dz_b = wflip (Cin x O*k*k) * unfold(dy_b) (O*k*k x HW)
                    im2col(dyb, oc, ho, wo, tgeom, &mut dcol.0);
                    let ok2 = oc * k * k;
                    matmul(
                        dzb,
                        Mat::rows(&wflip, cin, ok2),
                        Mat::rows(&dcol.0, ok2, h * w),
                        false,
                    );
                } else {
                    matmul(&mut dcol.0, wmat.t(), Mat::rows(dyb, oc, hw_out), false);
                    col2im(&dcol.0, cin, h, w, g, dzb);
                }
            }
            (dw, db)
        })
        .collect();
    add_partials(partials, dweight, dbias);
    dz.into()
}

/// Output positions (in vectors of 8) that one weight-gradient call should
/// see at least: fewer, and loading and storing a tile's accumulators costs
/// as much as its products.
const MIN_POSITIONS: usize = 32;

/// Adds the chunks' weight and bias gradients, in chunk order.
fn add_partials<T: Float>(
    partials: Vec<(Vec<T>, Vec<T>)>,
    dweight: &mut [T],
    mut dbias: Option<&mut [T]>,
) {
    for (dw, db) in partials {
        for (d, v) in dweight.iter_mut().zip(dw) {
            *d += v;
        }
        if let Some(dbias) = dbias.as_deref_mut() {
            for (d, v) in dbias.iter_mut().zip(db) {
                *d += v;
            }
        }
    }
}

/// [`conv2d_backward`] for stride 1 (and `pad < kernel`) through the direct
/// kernels: the weight gradient reads the padded transformed input in place
/// of an unfolded matrix, and the input gradient is the direct forward
/// kernel run over the zero-padded output gradient with the flipped kernel.
/// Chunked over the batch like the general path, with the same
/// deterministic combination of the chunks' sums. With a BatchNorm in
/// `pre`, also sums each image's `dz` for [`pre_backward`] right after
/// computing it, while it is in cache (one pass less over every source and
/// over `dz`).
fn conv2d_backward_direct<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    dy: &Array4<T>,
    g: ConvGeom,
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
) -> InputGrad<T> {
    let (n, _, h, w) = srcs[0].dim();
    let (cin, oc, kk) = (concat_channels(srcs), g.out_channels, g.kernel * g.kernel);
    let d = Direct::for_conv(h, w, g.kernel, g.pad, cin);
    let dt = Direct::for_conv(d.ho, d.wo, g.kernel, g.kernel - 1 - g.pad, oc);
    debug_assert_eq!((dt.ho, dt.wo), (h, w));
    let flipped = flipped_kernel(as_f32(weight), oc, cin, kk);
    let input_grad = PreparedConv::new(&dt, &flipped, oc, cin, n);
    // A 3x3 layer's weight gradient through Winograd where the geometry
    // allows; otherwise `pointwise_wgrad` (1x1) or the lane kernel.
    let winograd_wgrad = WeightGrad::new(&d, cin, oc, n);
    let (hw_in, hw_out) = (h * w, d.ho * d.wo);
    // Every element is written below.
    let mut dz = crate::cpu::parallel::scratch::stale4((n, cin, h, w));
    let chunk = n.div_ceil(rayon::current_num_threads()).max(1);
    let dy_all = as_f32(dy.as_slice().expect("contiguous"));
    // Per chunk: (weight gradient, bias gradient), BN sums per channel.
    type ChunkSums<T> = ((Vec<T>, Vec<T>), Vec<(f64, f64)>);
    let partials: Vec<ChunkSums<T>> = dz
        .axis_chunks_iter_mut(Axis(0), chunk)
        .into_par_iter()
        .enumerate()
        .map(|(ci, mut dzc)| {
            let mut dw = vec![T::zero(); oc * cin * kk];
            let mut db = vec![T::zero(); oc];
            let mut sums = vec![(0.0f64, 0.0f64); if pre.is_some() { cin } else { 0 }];
            // A 1x1 layer's weight gradient goes through `pointwise_wgrad`
            // (image by image, from the transposed output gradient), a 3x3
            // one through `winograd::WeightGrad` where it takes the
            // geometry (image by image too), any other through
            // `direct::weight_grad`'s lane sums.
            let pointwise = kk == 1;
            let wino = winograd_wgrad.as_ref();
            let mut wacc = Scratch::<f32>::zeros(wino.map_or(0, WeightGrad::acc_len));
            let mut wscratch = Scratch::<f32>::stale(wino.map_or(0, WeightGrad::scratch_len));
            let mut lanes = Scratch::<f32>::zeros(if pointwise || wino.is_some() {
                0
            } else {
                direct::lanes_len(oc, cin, kk)
            });
            let mut acc = Scratch::<f32>::zeros(if pointwise {
                pointwise_wgrad::acc_len(cin, oc)
            } else {
                0
            });
            let mut dyt = Scratch::<f32>::stale(if pointwise {
                pointwise_wgrad::dyt_len(&dt, oc)
            } else {
                0
            });
            // The lane kernel takes `group` images per call, so that small
            // planes still give each tile a long run of positions: their
            // inputs (and, in the flat mapping, their output gradients in
            // the grid layout) sit side by side.
            let group = if pointwise || wino.is_some() {
                1
            } else {
                (MIN_POSITIONS / d.offs_len()).clamp(1, dzc.dim().0)
            };
            let (x_img, dy_img) = (d.input_len(cin), oc * d.out_plane);
            // (Unused where the weight gradient reads the sources themselves.)
            let mut xin = Scratch::<T>::stale(if wino.is_some() { 0 } else { group * x_img });
            let mut dyg = Scratch::<f32>::stale(if d.rows || wino.is_some() {
                0
            } else {
                group * dy_img
            });
            // Fully written for every image before they are read.
            let mut dyp = Scratch::<f32>::stale(dt.input_len(oc));
            let mut dzg = Scratch::<f32>::stale(input_grad.scratch_len(cin));
            let (b0, dzc_len) = (ci * chunk, dzc.dim().0);
            for (lb, mut dzb) in dzc.axis_iter_mut(Axis(0)).enumerate() {
                let b = b0 + lb;
                let dyb = &dy_all[b * oc * hw_out..(b + 1) * oc * hw_out];
                let slot = lb % group;
                if wino.is_none() {
                    gather_into(
                        srcs,
                        pre,
                        b,
                        &d,
                        &mut xin.0[slot * x_img..(slot + 1) * x_img],
                    );
                }
                dt.fill_planes(dyb, &mut dyp.0);
                if let Some(wg) = wino {
                    // Straight from the sources, through `pre` (see
                    // `winograd::Input::Planes`).
                    let planes = channel_planes(srcs, b);
                    let input = Input::Planes {
                        planes: &planes,
                        pre: pre.map(Pre::as_affine),
                    };
                    wg.image(&d, input, dyb, &mut wacc.0, &mut wscratch.0);
                } else if pointwise {
                    pointwise_wgrad::transpose(&dt, &dyp.0, oc, &mut dyt.0);
                    pointwise_wgrad::weight_grad(&d, as_f32(&xin.0), cin, &dyt.0, oc, &mut acc.0);
                } else if !d.rows {
                    let grid = &mut dyg.0[slot * dy_img..(slot + 1) * dy_img];
                    for (src, plane) in dyb
                        .chunks_exact(hw_out)
                        .zip(grid.chunks_exact_mut(d.out_plane))
                    {
                        d.expand(src, plane);
                    }
                }
                let last = lb + 1 == dzc_len;
                if !pointwise && wino.is_none() && (slot + 1 == group || last) {
                    let images = slot + 1;
                    let b_first = b + 1 - images;
                    let dyk: &[f32] = if d.rows {
                        &dy_all[b_first * dy_img..(b + 1) * dy_img]
                    } else {
                        &dyg.0
                    };
                    direct::weight_grad(&d, as_f32(&xin.0), cin, dyk, oc, &mut lanes.0, images);
                }
                for (s, row) in db.iter_mut().zip(dyb.chunks_exact(hw_out)) {
                    *s += T::from_f64c(crate::cpu::layers::forward::lane_sum(row, |v| v) as f64);
                }
                let dzb = dzb.as_slice_mut().expect("contiguous");
                let dzf = as_f32_mut(&mut *dzb);
                input_grad.run(Input::Padded(&dyp.0), 0, cin, dzf, &mut dzg.0, None);
                if let Some(p) = pre {
                    for_each_plane(srcs, b, |c, xs| {
                        let (a, ax) = bn_plane_sums(p, c, xs, &dzb[c * hw_in..(c + 1) * hw_in]);
                        sums[c].0 += a;
                        sums[c].1 += ax;
                    });
                }
            }
            if let Some(wg) = wino {
                wg.fold(&mut wacc.0, as_f32_mut(&mut dw));
            } else if pointwise {
                pointwise_wgrad::fold(&mut acc.0, cin, oc, as_f32_mut(&mut dw));
            } else {
                direct::fold_lanes(&lanes.0, oc, cin, kk, as_f32_mut(&mut dw));
            }
            ((dw, db), sums)
        })
        .collect();
    // Chunk by chunk, in order (deterministic for a given thread count).
    let mut bn_sums = pre.map(|_| vec![(0.0f64, 0.0f64); cin]);
    let mut wb = Vec::with_capacity(partials.len());
    for (dwb, sums) in partials {
        wb.push(dwb);
        if let Some(total) = bn_sums.as_mut() {
            for (t, s) in total.iter_mut().zip(sums) {
                t.0 += s.0;
                t.1 += s.1;
            }
        }
    }
    add_partials(wb, dweight, dbias);
    InputGrad { dz, bn_sums }
}

/// Scatter-adds an unfolded gradient (Cin * k * k, Ho * Wo) back onto the
/// input planes: the adjoint of `im2col`.
fn col2im<T: Float>(dcol: &[T], cin: usize, h: usize, w: usize, g: ConvGeom, dz: &mut [T]) {
    let (k, stride, pad) = (g.kernel, g.stride, g.pad);
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    for c in 0..cin {
        let plane = &mut dz[c * h * w..(c + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &dcol[((c * k + ky) * k + kx) * ho * wo..][..ho * wo];
                for oy in 0..ho {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let line = &mut plane[iy as usize * w..(iy as usize + 1) * w];
                    let src = &row[oy * wo..(oy + 1) * wo];
                    if stride == 1 {
                        let lo = pad.saturating_sub(kx).min(wo);
                        let hi = (w + pad).saturating_sub(kx).min(wo).max(lo);
                        if hi > lo {
                            for (d, &v) in line[lo + kx - pad..hi + kx - pad]
                                .iter_mut()
                                .zip(&src[lo..hi])
                            {
                                *d += v;
                            }
                        }
                        continue;
                    }
                    for (ox, &v) in src.iter().enumerate() {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if ix >= 0 && ix < w as isize {
                            line[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Average pooling backward: spreads each output gradient over its window.
pub fn avg_pool_backward<T: Float>(
    dy: &Array4<T>,
    k: usize,
    stride: usize,
    in_size: (usize, usize),
) -> Array4<T> {
    let (n, c, ho, wo) = dy.dim();
    let (h, w) = in_size;
    let mut dz = stale4((n, c, h, w));
    let inv = T::one() / T::from_usize(k * k).expect("small integer");
    // Image by image on the threads, each zeroing its own part first.
    dz.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut db)| {
            db.fill(T::zero());
            for ch in 0..c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let g = dy[[b, ch, oy, ox]] * inv;
                        for ky in 0..k {
                            for kx in 0..k {
                                db[[ch, oy * stride + ky, ox * stride + kx]] += g;
                            }
                        }
                    }
                }
            }
        });
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
    let mut dz = zeros4((n, cin, h, w));
    let window = PoolWindow {
        k,
        stride,
        pad,
        h,
        w,
    };
    for b in 0..n {
        let dyb = dy.slice(s![b, .., .., ..]);
        let mut dzb = dz.slice_mut(s![b, .., .., ..]);
        let dzb = dzb.as_slice_mut().expect("contiguous");
        for_each_plane(srcs, b, |c, plane| {
            for oy in 0..ho {
                for ox in 0..wo {
                    if let (_, Some(at)) = window.first_max(plane, pre, c, oy, ox) {
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
    let mut dw =
        ndarray::ArrayViewMut2::from_shape((classes, cin), dweight).expect("dweight matches");
    general_mat_mul(T::one(), &dlogits.t(), &feat, T::one(), &mut dw);
    for (d, col) in dbias.iter_mut().zip(dlogits.columns()) {
        *d += col.sum();
    }
    let wmat = ArrayView2::from_shape((classes, cin), weight).expect("weight matches");
    let dfeat = dlogits.dot(&wmat);
    let mut dz = zeros4((n, cin, h, w));
    for b in 0..n {
        for c in 0..cin {
            let g = dfeat[[b, c]] * inv;
            dz.slice_mut(s![b, c, .., ..]).fill(g);
        }
    }
    dz
}

/// Sums over one plane of the ReLU-masked gradient `da` (zero where the
/// BN-ReLU output is zero, `dz` elsewhere) and of `da * xhat`, for channel
/// `c` of `pre`: `xs` the plane's source values, `gs` its `dz`. Within the
/// plane in `T` over LANES independent partial sums (vectorised; see
/// `lane_sum`), returned in f64 for summing across planes.
fn bn_plane_sums<T: Float>(p: &Pre<T>, c: usize, xs: &[T], gs: &[T]) -> (f64, f64) {
    crate::cpu::simd::vectorized!(<T: Float> (
        p: &'k Pre<T> = p,
        c: usize = c,
        xs: &'k [T] = xs,
        gs: &'k [T] = gs,
    ) -> (f64, f64) {
        bn_plane_sums_loop(p, c, xs, gs)
    })
}

#[inline(always)]
fn bn_plane_sums_loop<T: Float>(p: &Pre<T>, c: usize, xs: &[T], gs: &[T]) -> (f64, f64) {
    let (scale, shift, mean, inv_std) = (p.scale[c], p.shift[c], p.mean[c], p.inv_std[c]);
    let zero = T::zero();
    let da = |xv: T, g: T| {
        if p.relu && scale * xv + shift <= zero {
            zero
        } else {
            g
        }
    };
    let (mut sa, mut sax) = ([zero; LANES], [zero; LANES]);
    let (xc, gc) = (xs.chunks_exact(LANES), gs.chunks_exact(LANES));
    let (mut ta, mut tax) = (zero, zero);
    for (&xv, &g) in xc.remainder().iter().zip(gc.remainder()) {
        let a = da(xv, g);
        ta += a;
        tax += a * (xv - mean);
    }
    for (xl, gl) in xc.zip(gc) {
        for l in 0..LANES {
            let a = da(xl[l], gl[l]);
            sa[l] += a;
            sax[l] += a * (xl[l] - mean);
        }
    }
    for l in 0..LANES {
        ta += sa[l];
        tax += sax[l];
    }
    (ta.to_f64c(), (tax * inv_std).to_f64c())
}

/// Takes `dz`, the gradient with respect to `pre(concat(srcs))`, back
/// through ReLU and BatchNorm (batch statistics or fixed ones, as `pre`
/// says), accumulating gamma/beta gradients into `dbn` (gamma then beta, as
/// in the parameter store) and each source's gradient into `dsrcs`.
/// Without `pre`, `dz` is split and added to the sources as it is.
///
/// `first[i]` says this is the first call to write `dsrcs[i]` (the plan
/// knows): it stores instead of adding, so the buffer needs no zeroing.
/// Every element of every source is written. `dz` is recycled.
pub fn pre_backward<T: Float>(
    srcs: &[&Array4<T>],
    dz: InputGrad<T>,
    pre: Option<&Pre<T>>,
    dbn: Option<&mut [T]>,
    dsrcs: &mut [&mut Array4<T>],
    first: &[bool],
) {
    assert_eq!(first.len(), dsrcs.len(), "one first-write flag per source");
    let (n, _, h, w) = srcs[0].dim();
    let hw = h * w;
    let cin = concat_channels(srcs);
    let InputGrad { dz, bn_sums } = dz;
    let dzs = dz.as_slice().expect("contiguous");
    // (source index, channel within source) of every concatenated channel.
    let chan: Vec<(usize, usize)> = srcs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| (0..s.dim().1).map(move |ci| (si, ci)))
        .collect();
    let xs: Vec<&[T]> = srcs
        .iter()
        .map(|s| s.as_slice().expect("contiguous"))
        .collect();
    let x_plane = |b: usize, c: usize| {
        let (si, ci) = chan[c];
        let cs = srcs[si].dim().1;
        &xs[si][(b * cs + ci) * hw..(b * cs + ci + 1) * hw]
    };
    let dz_plane = |b: usize, c: usize| &dzs[(b * cin + c) * hw..(b * cin + c + 1) * hw];
    // Per-channel sums of da and da * xhat (training-mode BN needs them for
    // dx; gamma and beta gradients are these sums), in f64: from the
    // backward kernel when it computed them, else here, one channel per
    // task so the result does not depend on the thread count.
    let sums: Vec<(f64, f64)> = match (pre, bn_sums) {
        (Some(_), Some(s)) => {
            assert_eq!(s.len(), cin, "one pair of BN sums per channel");
            s
        }
        (Some(p), None) => (0..cin)
            .into_par_iter()
            .map(|c| {
                (0..n).fold((0.0, 0.0), |(a, ax), b| {
                    let (pa, pax) = bn_plane_sums(p, c, x_plane(b, c), dz_plane(b, c));
                    (a + pa, ax + pax)
                })
            })
            .collect(),
        (None, _) => Vec::new(),
    };
    if let (Some(dbn), Some(_)) = (dbn, pre) {
        for (c, &(sum_da, sum_da_xhat)) in sums.iter().enumerate() {
            dbn[c] += T::from_f64c(sum_da_xhat);
            dbn[cin + c] += T::from_f64c(sum_da);
        }
    }
    // dx, image by image in parallel: every image owns its slices of the
    // source gradients.
    let mut per_image: Vec<Vec<ndarray::ArrayViewMut3<'_, T>>> =
        (0..n).map(|_| Vec::new()).collect();
    for d in dsrcs.iter_mut() {
        for (b, view) in d.axis_iter_mut(Axis(0)).enumerate() {
            per_image[b].push(view);
        }
    }
    let m = (n * hw) as f64;
    // An installed BatchNorm hook may give other means (under synchronised
    // BatchNorm the whole global batch's; the gamma and beta gradients above
    // stay this pass's sums: the ranks' gradients are summed afterwards).
    let global = match pre {
        Some(p) if p.batch_stats => crate::cpu::bn_hook::hooked_backward_means(&sums, m),
        _ => None,
    };
    // One image's source gradients, every channel.
    let image_dx = |b: usize, views: &mut [ndarray::ArrayViewMut3<'_, T>]| {
        for c in 0..cin {
            let (si, ci) = chan[c];
            let dx = views[si].slice_mut(s![ci, .., ..]);
            let dx = dx.into_slice().expect("contiguous");
            let (xv, gv) = (x_plane(b, c), dz_plane(b, c));
            match pre {
                None => {
                    if first[si] {
                        dx.copy_from_slice(gv);
                    } else {
                        for (d, &g) in dx.iter_mut().zip(gv) {
                            *d += g;
                        }
                    }
                }
                Some(p) => {
                    let (scale, shift, mean, inv_std) =
                        (p.scale[c], p.shift[c], p.mean[c], p.inv_std[c]);
                    let (mean_da, mean_da_xhat) = if let Some(g) = &global {
                        (T::from_f64c(g[c].0), T::from_f64c(g[c].1))
                    } else if p.batch_stats {
                        (T::from_f64c(sums[c].0 / m), T::from_f64c(sums[c].1 / m))
                    } else {
                        (T::zero(), T::zero())
                    };
                    let k = BnBackward {
                        relu: p.relu,
                        scale,
                        shift,
                        mean,
                        inv_std,
                        mean_da,
                        mean_da_xhat,
                    };
                    k.plane(dx, xv, gv, first[si]);
                }
            }
        }
    };
    per_image
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut views)| image_dx(b, &mut views));
    crate::cpu::parallel::scratch::recycle(dz);
}

/// One channel's constants for the ReLU + BatchNorm backward of
/// [`pre_backward`].
#[derive(Clone, Copy)]
struct BnBackward<T> {
    relu: bool,
    scale: T,
    shift: T,
    mean: T,
    inv_std: T,
    /// Means over the batch of da and da * xhat (zero for fixed statistics).
    mean_da: T,
    mean_da_xhat: T,
}

impl<T: Float> BnBackward<T> {
    /// `dx = scale * (da - mean_da - xhat * mean_da_xhat)` over one plane,
    /// with `da` the output gradient `g` where the ReLU passed it; stored
    /// into `dx` or added to it.
    fn plane(&self, dx: &mut [T], xv: &[T], gv: &[T], store: bool) {
        crate::cpu::simd::vectorized!(<T: Float> (
            k: &'k BnBackward<T> = self,
            dx: &'k mut [T] = dx,
            xv: &'k [T] = xv,
            gv: &'k [T] = gv,
            store: bool = store,
        ) -> () {
            k.plane_loop(dx, xv, gv, store)
        })
    }

    #[inline(always)]
    fn plane_loop(&self, dx: &mut [T], xv: &[T], gv: &[T], store: bool) {
        // Copied out of `self`, so that the loops keep them in registers
        // (read through `&self` they were reloaded at every element, and
        // the loop stayed scalar).
        let BnBackward {
            relu,
            scale,
            shift,
            mean,
            inv_std,
            mean_da,
            mean_da_xhat,
        } = *self;
        let grad = |x: T, g: T| {
            let a = if relu && scale * x + shift <= T::zero() {
                T::zero()
            } else {
                g
            };
            let xhat = (x - mean) * inv_std;
            scale * (a - mean_da - xhat * mean_da_xhat)
        };
        if store {
            for ((d, &x), &g) in dx.iter_mut().zip(xv).zip(gv) {
                *d = grad(x, g);
            }
        } else {
            for ((d, &x), &g) in dx.iter_mut().zip(xv).zip(gv) {
                *d += grad(x, g);
            }
        }
    }
}

/// Backward of dropout: the same mask (regenerated from its seed) applied
/// to the gradient.
pub fn dropout_backward<T: Float>(dy: &mut Array4<T>, p: f64, seed: u64) {
    if p > 0.0 && seed != 0 {
        crate::cpu::ctx::apply_dropout_mask(dy.as_slice_mut().expect("contiguous"), p, seed);
    }
}
