//! CPU kernels called by generated models, generic over [`Float`].
//!
//! Every kernel that reads activations takes a *list* of source buffers: the
//! concatenation of a SparseNet layer's inputs is never built. Channel `c` of
//! the virtual concatenation is channel `c - offset` of whichever source holds
//! it, and an optional per-channel [`Pre`] (the folded BatchNorm affine plus
//! ReLU) is applied as each value is read.

use crate::cpu::conv::direct::{self, Direct, Epilogue};
use crate::cpu::conv::matmul::{matmul, Mat};
use crate::cpu::conv::winograd::{Affine, Input, PreparedConv};
use crate::cpu::parallel::scratch::{stale4, zeros4, Scratch};
use crate::cpu::parallel::SharedMut;
use crate::Float;
use ndarray::parallel::prelude::*;
use ndarray::{s, Array2, Array4, ArrayView2, Axis};
use std::any::TypeId;

/// The per-channel transform applied to inputs as they are read:
/// `y = relu?(scale[c] * x + shift[c])`. This is BatchNorm folded into one
/// affine map, with the ReLU that usually follows it.
///
/// It also keeps what backward needs to recompute the normalised input
/// instead of storing it: the mean and 1/std used, and whether they were
/// batch statistics (training mode) or fixed running statistics.
#[derive(Clone, Debug)]
pub struct Pre<T> {
    pub scale: Vec<T>,
    pub shift: Vec<T>,
    pub relu: bool,
    pub mean: Vec<T>,
    pub inv_std: Vec<T>,
    /// True when `mean`/`inv_std` are this batch's statistics, so gradients
    /// flow through them too.
    pub batch_stats: bool,
}

impl<T: Float> Pre<T> {
    /// A transform with fixed scale and shift (no BatchNorm behind it).
    pub fn affine(scale: Vec<T>, shift: Vec<T>, relu: bool) -> Self {
        let c = scale.len();
        Pre {
            scale,
            shift,
            relu,
            mean: vec![T::zero(); c],
            inv_std: vec![T::one(); c],
            batch_stats: false,
        }
    }

    /// Applies channel `c`'s transform to a whole plane (a tight loop the
    /// compiler vectorises).
    #[inline]
    pub(crate) fn apply_plane(&self, c: usize, src: &[T], dst: &mut [T]) {
        let (s, t) = (self.scale[c], self.shift[c]);
        if self.relu {
            let zero = T::zero();
            for (d, &v) in dst.iter_mut().zip(src) {
                let y = s * v + t;
                // `<=` so that NaN passes through (a `>` test would zero it).
                *d = if y <= zero { zero } else { y };
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = s * v + t;
            }
        }
    }

    /// The transform in the direct kernels' type (`f32` models only).
    pub(crate) fn as_affine(&self) -> Affine<'_> {
        Affine {
            scale: as_f32(&self.scale),
            shift: as_f32(&self.shift),
            relu: self.relu,
        }
    }

    #[inline(always)]
    pub(crate) fn apply(&self, c: usize, v: T) -> T {
        let y = self.scale[c] * v + self.shift[c];
        if self.relu && y < T::zero() {
            T::zero()
        } else {
            y
        }
    }
}

/// Reads channel planes of a virtual concatenation, with the [`Pre`] transform.
#[inline(always)]
pub(crate) fn read<T: Float>(pre: Option<&Pre<T>>, c: usize, v: T) -> T {
    match pre {
        Some(p) => p.apply(c, v),
        None => v,
    }
}

/// Calls `f(global_channel, plane)` for every channel plane of image `n`
/// across the sources, in concatenation order.
#[inline]
pub(crate) fn for_each_plane<T: Float>(
    srcs: &[&Array4<T>],
    n: usize,
    mut f: impl FnMut(usize, &[T]),
) {
    let mut gc = 0;
    for src in srcs {
        let (_, c, h, w) = src.dim();
        let img = src.slice(s![n, .., .., ..]);
        let data = img
            .to_slice()
            .expect("activation buffers are always in standard layout");
        for ci in 0..c {
            f(gc + ci, &data[ci * h * w..(ci + 1) * h * w]);
        }
        gc += c;
    }
}

/// Shape of a convolution, fixed at compile time by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub const fn out_size(&self, size: usize) -> usize {
        (size + 2 * self.pad - self.kernel) / self.stride + 1
    }
}

/// Total channels of a virtual concatenation.
pub fn concat_channels<T>(srcs: &[&Array4<T>]) -> usize {
    srcs.iter().map(|s| s.dim().1).sum()
}

/// 2-D convolution over the virtual concatenation of `srcs`, with `pre`
/// applied on the fly. Zero padding is applied after `pre` (padding pads the
/// normalised, rectified input, as in BN -> ReLU -> Conv). `weight` is OIHW,
/// `bias` has `out_channels` entries. Images run in parallel; each thread
/// transforms one image's input planes into a scratch buffer, unfolds it
/// (3x3 and strided convolutions) and multiplies with the weights.
pub fn conv2d<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    bias: Option<&[T]>,
    g: ConvGeom,
) -> Array4<T> {
    if g.stride == 1 && use_direct::<T>() {
        let ep = OwnedEpilogue::new(bias, None, g.out_channels);
        return conv2d_direct(srcs, pre, weight, g, ep.as_ref().map(OwnedEpilogue::view));
    }
    let (n, _, h, w) = srcs[0].dim();
    let cin = concat_channels(srcs);
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    let kdim = cin * g.kernel * g.kernel;
    let wmat = Mat::rows(weight, g.out_channels, kdim);
    let mut out = zeros4((n, g.out_channels, ho, wo));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each_init(
            || {
                (
                    Scratch::with_capacity(cin * h * w),
                    Scratch::with_capacity(kdim * ho * wo),
                )
            },
            |(xin, col), (b, mut ob)| {
                let rhs = gather_unfold(srcs, pre, b, g, &mut xin.0, &mut col.0);
                let o = ob.as_slice_mut().expect("contiguous");
                matmul(o, wmat, Mat::rows(rhs, kdim, ho * wo), false);
                if let Some(bias) = bias {
                    add_bias(o, bias, ho * wo);
                }
            },
        );
    out
}

/// Adds `bias[o]` to every value of output plane `o` (planes of `hw`).
fn add_bias<T: Float>(out: &mut [T], bias: &[T], hw: usize) {
    for (plane, &b) in out.chunks_exact_mut(hw).zip(bias) {
        for v in plane {
            *v += b;
        }
    }
}

/// Whether stride-1 convolutions in `T` take the direct kernels of
/// [`crate::cpu::conv::direct`] (f32 on AVX2 + FMA) instead of im2col + GEMM.
pub(crate) fn use_direct<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && direct::enabled()
}

/// `s` as `f32`, for a `T` that [`use_direct`] found to be `f32`.
pub(crate) fn as_f32<T: 'static>(s: &[T]) -> &[f32] {
    assert_eq!(
        TypeId::of::<T>(),
        TypeId::of::<f32>(),
        "element type is f32"
    );
    // SAFETY: T is f32 (checked), so the layouts are the same.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

/// `s` as `f32`, for a `T` that [`use_direct`] found to be `f32`.
pub(crate) fn as_f32_mut<T: 'static>(s: &mut [T]) -> &mut [f32] {
    assert_eq!(
        TypeId::of::<T>(),
        TypeId::of::<f32>(),
        "element type is f32"
    );
    // SAFETY: T is f32 (checked), so the layouts are the same; the borrow
    // is exclusive and carried over.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// [`conv2d`] for stride 1 through the direct kernels: each image's
/// transformed input is written once into zero-padded planes, which the
/// kernel reads in place of an unfolded matrix. `ep` (the bias, and in
/// inference maybe the transform of the output) is applied as outputs are
/// stored.
pub(crate) fn conv2d_direct<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    g: ConvGeom,
    ep: Option<Epilogue>,
) -> Array4<T> {
    let (n, _, h, w) = srcs[0].dim();
    let (cin, oc) = (concat_channels(srcs), g.out_channels);
    let d = Direct::for_conv(h, w, g.kernel, g.pad, cin);
    let conv = PreparedConv::new(&d, as_f32(weight), cin, oc, n);
    // Every element is written below.
    let mut out = stale4((n, oc, d.ho, d.wo));
    if n < crate::cpu::parallel::threads::available() {
        // Fewer images than threads (batch-1 inference): the threads
        // share each image, split by output channels.
        let mut xin = Scratch::<T>::stale(d.input_len(cin));
        for (b, mut ob) in out.axis_iter_mut(Axis(0)).enumerate() {
            xin.0.resize(d.input_len(cin), T::zero());
            gather_into_split(srcs, pre, b, &d, &mut xin.0);
            let x = as_f32(&xin.0);
            let o = as_f32_mut(ob.as_slice_mut().expect("contiguous"));
            conv.run_split(Input::Padded(x), o, ep);
        }
        return out;
    }
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each_init(
            // Stale contents: the gather and the kernel write every
            // element, and rayon calls this once per piece of work it
            // splits off. The Winograd path gathers nothing.
            || {
                let gathered = if conv.is_winograd() {
                    0
                } else {
                    d.input_len(cin)
                };
                (
                    Scratch::<T>::stale(gathered),
                    Scratch::<f32>::stale(conv.scratch_len(oc)),
                )
            },
            |(xin, grid), (b, mut ob)| {
                let o = as_f32_mut(ob.as_slice_mut().expect("contiguous"));
                if conv.is_winograd() {
                    // Straight from the sources: the transform reads them
                    // through `pre` a few rows at a time.
                    let planes = channel_planes(srcs, b);
                    let input = Input::Planes {
                        planes: &planes,
                        pre: pre.map(Pre::as_affine),
                    };
                    conv.run(input, 0, oc, o, &mut grid.0, ep);
                } else {
                    gather_padded(srcs, pre, b, &d, &mut xin.0);
                    conv.run(Input::Padded(as_f32(&xin.0)), 0, oc, o, &mut grid.0, ep);
                }
            },
        );
    out
}

/// Image `b`'s channel planes across the sources, in concatenation order,
/// as `f32` (the direct kernels' type).
pub(crate) fn channel_planes<'a, T: Float>(srcs: &[&'a Array4<T>], b: usize) -> Vec<&'a [f32]> {
    let mut planes = Vec::with_capacity(concat_channels(srcs));
    for src in srcs {
        let (_, c, h, w) = src.dim();
        let all = as_f32(
            src.as_slice()
                .expect("activation buffers are always in standard layout"),
        );
        planes.extend(all[b * c * h * w..(b + 1) * c * h * w].chunks_exact(h * w));
    }
    planes
}

/// A convolution's bias and a fixed per-channel transform `post` of its
/// output folded into one [`Epilogue`]: `post(sum + bias)` is
/// `post.scale * sum + (post.scale * bias + post.shift)`. `None` when there
/// is neither. Only for `f32` (the direct kernels' type).
pub(crate) struct OwnedEpilogue {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl OwnedEpilogue {
    pub(crate) fn new<T: Float>(
        bias: Option<&[T]>,
        post: Option<&Pre<T>>,
        channels: usize,
    ) -> Option<Self> {
        let zeros;
        let bias = match bias {
            Some(b) => as_f32(b),
            None if post.is_none() => return None,
            None => {
                zeros = vec![0.0; channels];
                &zeros[..]
            }
        };
        assert_eq!(bias.len(), channels, "one bias per output channel");
        Some(match post {
            None => OwnedEpilogue {
                scale: vec![1.0; channels],
                shift: bias.to_vec(),
                relu: false,
            },
            Some(p) => {
                assert!(
                    !p.batch_stats,
                    "an output transform folded into the convolution uses fixed statistics"
                );
                let (s, t) = (as_f32(&p.scale), as_f32(&p.shift));
                assert_eq!(s.len(), channels, "one transform per output channel");
                OwnedEpilogue {
                    scale: s.to_vec(),
                    shift: (0..channels).map(|c| s[c] * bias[c] + t[c]).collect(),
                    relu: p.relu,
                }
            }
        })
    }

    pub(crate) fn view(&self) -> Epilogue<'_> {
        Epilogue {
            scale: &self.scale,
            shift: &self.shift,
            relu: self.relu,
        }
    }
}

/// Image `b` of the transformed concatenation written into the direct
/// kernels' input layout `d` (zero-padded planes, or pointwise blocks; see
/// [`crate::cpu::conv::direct`]).
pub(crate) fn gather_padded<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    b: usize,
    d: &Direct,
    xin: &mut Vec<T>,
) {
    xin.resize(d.input_len(concat_channels(srcs)), T::zero());
    gather_into(srcs, pre, b, d, xin);
}

/// [`gather_padded`] into a slice of [`Direct::input_len`] elements.
pub(crate) fn gather_into<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    b: usize,
    d: &Direct,
    dst: &mut [T],
) {
    assert_eq!(
        dst.len(),
        d.input_len(concat_channels(srcs)),
        "input buffer size"
    );
    for_each_plane(srcs, b, |c, plane| match pre {
        Some(p) => d.fill(c, plane, dst, |s, t| p.apply_plane(c, s, t)),
        None => d.fill(c, plane, dst, |s, t| t.copy_from_slice(s)),
    });
}

/// [`gather_into`] for a batch of one: the channels split over the threads
/// (the batch-1 team, [`crate::cpu::parallel::team`]), which otherwise wait while the
/// calling thread gathers each layer's input alone.
pub(crate) fn gather_into_split<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    b: usize,
    d: &Direct,
    dst: &mut [T],
) {
    let cin = concat_channels(srcs);
    let parts = crate::cpu::parallel::threads::available().min(cin);
    if parts <= 1 {
        return gather_into(srcs, pre, b, d, dst);
    }
    assert_eq!(dst.len(), d.input_len(cin), "input buffer size");
    let per = cin.div_ceil(parts);
    let (len, base) = (dst.len(), SharedMut(dst.as_mut_ptr()));
    crate::cpu::parallel::team::for_each_part(cin.div_ceil(per), &|i| {
        let mine = i * per..cin.min((i + 1) * per);
        for_each_plane(srcs, b, |c, plane| {
            if !mine.contains(&c) {
                return;
            }
            // SAFETY: `dst` outlives the call and is not otherwise used
            // meanwhile; channel c is filled by this part alone.
            unsafe {
                match pre {
                    Some(p) => {
                        d.fill_channel_of(c, plane, base.at(0), len, |s, t| p.apply_plane(c, s, t))
                    }
                    None => {
                        d.fill_channel_of(c, plane, base.at(0), len, |s, t| t.copy_from_slice(s))
                    }
                }
            }
        });
    });
}

/// Image `b` of the transformed concatenation as the right-hand side of a
/// convolution's product: the planes themselves for a 1x1/1 convolution,
/// else their im2col unfolding (Cin * k * k, Ho * Wo).
pub(crate) fn gather_unfold<'a, T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    b: usize,
    g: ConvGeom,
    xin: &'a mut Vec<T>,
    col: &'a mut Vec<T>,
) -> &'a [T] {
    let (_, _, h, w) = srcs[0].dim();
    let cin = concat_channels(srcs);
    xin.resize(cin * h * w, T::zero());
    for_each_plane(srcs, b, |c, plane| {
        let dst = &mut xin[c * h * w..(c + 1) * h * w];
        match pre {
            Some(p) => p.apply_plane(c, plane, dst),
            None => dst.copy_from_slice(plane),
        }
    });
    if g.kernel == 1 && g.stride == 1 && g.pad == 0 {
        return &xin[..];
    }
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    col.resize(cin * g.kernel * g.kernel * ho * wo, T::zero());
    im2col(xin, cin, h, w, g, col);
    &col[..]
}

/// Unfolds `x` (Cin planes of h x w) into `col` (Cin * k * k, Ho * Wo).
pub(crate) fn im2col<T: Float>(
    x: &[T],
    cin: usize,
    h: usize,
    w: usize,
    g: ConvGeom,
    col: &mut [T],
) {
    let (k, stride, pad) = (g.kernel, g.stride, g.pad);
    let (ho, wo) = (g.out_size(h), g.out_size(w));
    for c in 0..cin {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut col[((c * k + ky) * k + kx) * ho * wo..][..ho * wo];
                for oy in 0..ho {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    let dst = &mut row[oy * wo..(oy + 1) * wo];
                    if iy < 0 || iy >= h as isize {
                        dst.fill(T::zero());
                        continue;
                    }
                    let line = &plane[iy as usize * w..(iy as usize + 1) * w];
                    if stride == 1 {
                        // Contiguous run: ox in [lo, hi) maps to ix = ox + kx - pad.
                        let lo = pad.saturating_sub(kx).min(wo);
                        let hi = (w + pad).saturating_sub(kx).min(wo).max(lo);
                        dst[..lo].fill(T::zero());
                        if hi > lo {
                            dst[lo..hi].copy_from_slice(&line[lo + kx - pad..hi + kx - pad]);
                        }
                        dst[hi..].fill(T::zero());
                        continue;
                    }
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        *d = if ix < 0 || ix >= w as isize {
                            T::zero()
                        } else {
                            line[ix as usize]
                        };
                    }
                }
            }
        }
    }
}

/// Average pooling with a `k` x `k` window and stride `stride`, no padding,
/// over the virtual concatenation with `pre` applied.
pub fn avg_pool<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    k: usize,
    stride: usize,
) -> Array4<T> {
    let (_, _, h, w) = srcs[0].dim();
    let (ho, wo) = ((h - k) / stride + 1, (w - k) / stride + 1);
    let inv = T::one() / T::from_usize(k * k).expect("small integer");
    map_planes(srcs, (ho, wo), |c, plane, dst| {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut acc = T::zero();
                for ky in 0..k {
                    for kx in 0..k {
                        acc += read(pre, c, plane[(oy * stride + ky) * w + ox * stride + kx]);
                    }
                }
                dst[oy * wo + ox] = acc * inv;
            }
        }
    })
}

/// Max pooling with a `k` x `k` window, stride and padding (padded positions
/// never win, as in PyTorch and MXNet), with `pre` applied.
pub fn max_pool<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    k: usize,
    stride: usize,
    pad: usize,
) -> Array4<T> {
    let (_, _, h, w) = srcs[0].dim();
    let (ho, wo) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let window = PoolWindow {
        k,
        stride,
        pad,
        h,
        w,
    };
    map_planes(srcs, (ho, wo), |c, plane, dst| {
        for oy in 0..ho {
            for ox in 0..wo {
                dst[oy * wo + ox] = window.first_max(plane, pre, c, oy, ox).0;
            }
        }
    })
}

/// A max-pooling window's geometry over h x w planes.
pub(crate) struct PoolWindow {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
}

impl PoolWindow {
    /// The first maximum of output (`oy`, `ox`)'s window over `plane`
    /// (channel `c`, `pre` applied): its value and its index in the plane;
    /// minus infinity and `None` for a window of padding only.
    pub(crate) fn first_max<T: Float>(
        &self,
        plane: &[T],
        pre: Option<&Pre<T>>,
        c: usize,
        oy: usize,
        ox: usize,
    ) -> (T, Option<usize>) {
        let (h, w) = (self.h as isize, self.w as isize);
        let mut best = (T::neg_infinity(), None);
        for ky in 0..self.k {
            let iy = (oy * self.stride + ky) as isize - self.pad as isize;
            if iy < 0 || iy >= h {
                continue;
            }
            for kx in 0..self.k {
                let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                if ix < 0 || ix >= w {
                    continue;
                }
                let i = (iy * w + ix) as usize;
                let v = read(pre, c, plane[i]);
                // A NaN is the window's maximum (as in PyTorch), never
                // skipped: a NaN input must not vanish in inference.
                if v.is_nan() {
                    return (v, Some(i));
                }
                if v > best.0 {
                    best = (v, Some(i));
                }
            }
        }
        best
    }
}

/// Materialises `pre` applied to the sources (a BatchNorm whose output must
/// be stored, such as the trailing BN of a seed 2018-02-20 unit).
pub fn affine<T: Float>(srcs: &[&Array4<T>], pre: &Pre<T>) -> Array4<T> {
    let (_, _, h, w) = srcs[0].dim();
    map_planes(srcs, (h, w), |c, plane, dst| pre.apply_plane(c, plane, dst))
}

/// A new array of one `ho x wo` output plane per channel of the sources'
/// concatenation, each written in full by `f(channel, source plane,
/// output plane)`, image by image on the threads: the element-wise and
/// pooling passes of a step (trailing BN, pooling) would otherwise run on
/// the calling thread while the workers wait.
fn map_planes<T: Float>(
    srcs: &[&Array4<T>],
    (ho, wo): (usize, usize),
    f: impl Fn(usize, &[T], &mut [T]) + Sync,
) -> Array4<T> {
    let n = srcs[0].dim().0;
    // Every element is written by `f`.
    let mut out = stale4((n, concat_channels(srcs), ho, wo));
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(b, mut ob)| {
            let ob = ob.as_slice_mut().expect("contiguous");
            for_each_plane(srcs, b, |c, plane| {
                f(c, plane, &mut ob[c * ho * wo..(c + 1) * ho * wo])
            });
        });
    out
}

/// Global average pooling of the sources (with `pre`), followed by a dense
/// layer: `weight` is (classes, channels), `bias` has `classes` entries.
/// Returns the pooled features and the logits.
pub fn gap_dense<T: Float>(
    srcs: &[&Array4<T>],
    pre: Option<&Pre<T>>,
    weight: &[T],
    bias: Option<&[T]>,
    classes: usize,
) -> (Array2<T>, Array2<T>) {
    let (n, _, h, w) = srcs[0].dim();
    let c_all = concat_channels(srcs);
    let inv = T::one() / T::from_usize(h * w).expect("small integer");
    let mut feat = Array2::<T>::zeros((n, c_all));
    for b in 0..n {
        for_each_plane(srcs, b, |c, plane| {
            let mut acc = T::zero();
            for &v in plane {
                acc += read(pre, c, v);
            }
            feat[[b, c]] = acc * inv;
        });
    }
    let wmat = ArrayView2::from_shape((classes, c_all), weight).expect("weight matches plan");
    let mut logits = feat.dot(&wmat.t());
    if let Some(bias) = bias {
        for mut row in logits.rows_mut() {
            for (v, &bv) in row.iter_mut().zip(bias) {
                *v += bv;
            }
        }
    }
    (feat, logits)
}

/// Per-channel batch statistics of one buffer: mean and biased variance over
/// (N, H, W), in one pass over shifted values (see [`batch_stats`]).
#[derive(Clone, Debug)]
pub struct Stats<T> {
    pub mean: Vec<T>,
    pub var: Vec<T>,
    /// Number of values per channel (N * H * W).
    pub count: usize,
}

pub fn batch_stats<T: Float>(x: &Array4<T>) -> Stats<T> {
    let (n, c, h, w) = x.dim();
    let data = x.as_slice().expect("activation buffers are contiguous");
    let hw = h * w;
    let count = n * hw;
    let per_channel: Vec<(T, T)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let plane = |b: usize| &data[(b * c + ci) * hw..(b * c + ci + 1) * hw];
            // One pass over the channel, its values shifted by the first
            // plane's mean: the shift is within a fraction of a standard
            // deviation of the channel's mean, so the sum of squares minus
            // the squared sum loses no more than the two-pass form did
            // (sums within a plane in T, in lanes; across planes in f64).
            let shift = lane_sum(plane(0), |v| v) / T::from_f64c(hw as f64);
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for b in 0..n {
                let (a, q) = shifted_sums(plane(b), shift);
                s1 += a;
                s2 += q;
            }
            let d = s1 / count as f64;
            let var = (s2 / count as f64 - d * d).max(0.0);
            (T::from_f64c(shift.to_f64c() + d), T::from_f64c(var))
        })
        .collect();
    Stats {
        mean: per_channel.iter().map(|p| p.0).collect(),
        var: per_channel.iter().map(|p| p.1).collect(),
        count,
    }
}

/// `(sum (v - shift), sum (v - shift)^2)` over one plane, vectorised for
/// the active instruction set (see [`crate::cpu::simd::vectorized`]).
fn shifted_sums<T: Float>(xs: &[T], shift: T) -> (f64, f64) {
    crate::cpu::simd::vectorized!(<T: Float> (xs: &'k [T] = xs, shift: T = shift) -> (f64, f64) {
        shifted_sums_loop(xs, shift)
    })
}

#[inline(always)]
fn shifted_sums_loop<T: Float>(xs: &[T], shift: T) -> (f64, f64) {
    let zero = T::zero();
    let (mut s1, mut s2) = ([zero; LANES], [zero; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let (mut t1, mut t2) = (zero, zero);
    for &v in chunks.remainder() {
        let d = v - shift;
        t1 += d;
        t2 += d * d;
    }
    for ch in chunks {
        for l in 0..LANES {
            let d = ch[l] - shift;
            s1[l] += d;
            s2[l] += d * d;
        }
    }
    for l in 0..LANES {
        t1 += s1[l];
        t2 += s2[l];
    }
    (t1.to_f64c(), t2.to_f64c())
}

/// Number of independent partial sums in [`lane_sum`] and friends.
pub(crate) const LANES: usize = 16;

/// `sum f(v)` over `xs`, in [`LANES`] independent partial sums: a single
/// running float sum is a chain of dependent adds that the compiler may not
/// reorder, a few times slower than the memory it reads.
#[inline(always)]
pub(crate) fn lane_sum<T: Float>(xs: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for l in 0..LANES {
            acc[l] += f(ch[l]);
        }
    }
    let mut s = tail.iter().fold(T::zero(), |a, &v| a + f(v));
    for v in acc {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col straight from its definition, one element at a time.
    fn im2col_reference(x: &[f64], cin: usize, h: usize, w: usize, g: ConvGeom) -> Vec<f64> {
        let (k, s, p) = (g.kernel, g.stride, g.pad);
        let (ho, wo) = (g.out_size(h), g.out_size(w));
        let mut col = vec![0.0; cin * k * k * ho * wo];
        for c in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let (iy, ix) = (
                                (oy * s + ky) as isize - p as isize,
                                (ox * s + kx) as isize - p as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                col[(((c * k + ky) * k + kx) * ho + oy) * wo + ox] =
                                    x[(c * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    /// f32 batch statistics against the f64 two-pass definition over the
    /// same values, including a channel whose mean is 10^4 standard
    /// deviations from zero (where the sum of squares minus the squared sum,
    /// unshifted, would keep no correct digit).
    #[test]
    fn batch_stats_match_their_definition() {
        let (n, c, h, w) = (5, 3, 7, 9);
        let moments = [(0.0f64, 1.0f64), (100.0, 0.01), (-3.0, 2.0)];
        let x = Array4::<f32>::from_shape_fn((n, c, h, w), |(b, ci, y, xx)| {
            let u = ((b * 131 + y * 17 + xx * 7 + ci) % 29) as f64 / 29.0 - 0.5;
            (moments[ci].0 + moments[ci].1 * 3.4 * u) as f32
        });
        let st = batch_stats(&x);
        assert_eq!(st.count, n * h * w);
        for ci in 0..c {
            let vals: Vec<f64> = x
                .slice(ndarray::s![.., ci, .., ..])
                .iter()
                .map(|&v| v as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
            // The mean to 1e-6 standard deviations, or to the f32 rounding
            // of the mean itself where that is coarser.
            let tol = 1e-6 * var.sqrt() + 2.0 * m.abs() * f32::EPSILON as f64;
            let (em, ev) = (
                (st.mean[ci] as f64 - m).abs(),
                (st.var[ci] as f64 - var).abs() / var,
            );
            assert!(
                em < tol && ev < 1e-5,
                "channel {ci}: mean off by {em:.1e} (bar {tol:.1e}), variance by {ev:.1e}"
            );
        }
    }

    #[test]
    fn im2col_matches_its_definition() {
        // (kernel, stride, pad, h, w): same-size convolutions (including
        // planes narrower than the kernel), valid and strided ones.
        let cases = [
            (3, 1, 1, 5, 7),
            (3, 1, 1, 1, 1),
            (3, 1, 1, 2, 1),
            (5, 1, 2, 4, 6),
            (7, 1, 3, 2, 3),
            (1, 1, 0, 3, 4),
            (3, 1, 0, 5, 5),
            (3, 2, 1, 6, 5),
            (7, 2, 3, 9, 8),
        ];
        for (k, s, p, h, w) in cases {
            let g = ConvGeom {
                out_channels: 1,
                kernel: k,
                stride: s,
                pad: p,
            };
            let cin = 3;
            let x: Vec<f64> = (0..cin * h * w)
                .map(|i| (i as f64 * 0.37).sin() + 2.0)
                .collect();
            let want = im2col_reference(&x, cin, h, w, g);
            let mut col = vec![f64::NAN; want.len()];
            im2col(&x, cin, h, w, g, &mut col);
            assert_eq!(col, want, "k {k} stride {s} pad {p} on {h}x{w}");
        }
    }
}
