//! Direct stride-1 convolution for `f32` on x86-64 with AVX2 and FMA: no
//! im2col matrix and no GEMM packing.
//!
//! Why: a SparseNet layer's convolution has few output channels (the growth
//! rate, 12-24) and a deep reduction (every concatenated channel times k*k).
//! Through im2col + GEMM, a third of the time went into building the unfolded
//! matrix and the GEMM's packing of it; the multiply itself was a third.
//! Here the input planes are written once, zero-padded (with the BN-ReLU
//! transform applied, by the caller), and the micro-kernel reads the k*k
//! shifted windows straight from them: a stride-1 window of 8 consecutive
//! outputs is 8 consecutive padded inputs.
//!
//! Layout of a padded plane: `hp x wp` (the input plus `pad` zeros on every
//! side) and a little zero slack, `plane` floats per channel. Output vectors
//! are mapped in one of two ways, chosen by [`Direct::new`]:
//! - rows: when the output width is a multiple of 8, every vector of 8
//!   outputs lies in one output row, and is stored straight into the NCHW
//!   output;
//! - flat: otherwise, outputs are computed on the padded grid (row stride
//!   `wp`, so a vector may run past the row end into columns that are thrown
//!   away) into a grid-shaped buffer that [`Direct::compact`] copies out.
//!
//! 1x1 convolutions use a second input layout instead of padded planes
//! ([`Direct::pointwise`]): positions in blocks of 16, every channel's 16
//! values one after another within a block, so that a position tile reads
//! one contiguous run of memory. [`Direct::for_conv`] picks the layout and
//! [`Direct::fill`] writes either.
//!
//! The three products of a convolution layer map onto two kernels:
//! forward (`out = W * x`), the input gradient (a forward convolution of the
//! padded output gradient with the flipped, transposed kernel), and the
//! weight gradient (`dW += dy . x`, reduced over output positions). A 1x1
//! layer's weight gradient has a kernel of its own,
//! [`crate::cpu::conv::pointwise_wgrad`].
//!
//! Every entry point checks its buffer lengths before any unsafe access.

// The micro-kernels index register-tile arrays by position on purpose: the
// loops are unrolled over constant bounds and the arrays live in registers.
#![allow(clippy::needless_range_loop)]

use crate::cpu::simd::{self, F32s, Kernel, Simd};
use std::ops::Range;
use std::sync::OnceLock;

/// Output channels per forward tile and vectors (of 8 outputs) per tile:
/// 6 x 2 = 12 accumulators, 2 input loads and 6 broadcasts per 12 FMAs.
const FQ: usize = 6;
/// [`forward`]'s output channels per tile: callers that split a convolution
/// by output channels split at multiples of it.
pub const OUT_TILE: usize = FQ;
const FP: usize = 2;
/// Forward cache blocking: channel tiles per group, and the bytes of
/// weights a group of tiles reads per block of input channels.
const FG: usize = 4;
const FW_BYTES: usize = 24 * 1024;
/// How many position tiles ahead [`forward`] prefetches its output lines.
const PF_AHEAD: usize = 2;
/// Weight-gradient tile: 3 output channels by 4 input rows (channel, tap):
/// 12 accumulators, 7 loads per 12 FMAs.
const WQ: usize = 3;
const WR: usize = 4;
/// The weight gradient's position blocks: output-gradient bytes per block
/// (all channels), and the fewest vectors of 8 positions per block (each
/// block loads and stores every tile's accumulators once).
const WG_DY_BYTES: usize = 128 * 1024;
const WG_MIN_BLOCK: usize = 32;

/// What [`forward_ep`] applies to every output value before storing it, per
/// output channel `o`: `y = scale[o] * sum + shift[o]`, then `max(y, 0)` when
/// `relu`. A convolution's bias, and in inference the BatchNorm (and ReLU)
/// that reads its output next, fold into one of these, so that the output
/// is transformed while it is still in registers instead of in another pass.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// The epilogue of output channels `from..from + n`.
    pub fn channels(&self, from: usize, n: usize) -> Epilogue<'a> {
        Epilogue {
            scale: &self.scale[from..from + n],
            shift: &self.shift[from..from + n],
            relu: self.relu,
        }
    }
}

/// Whether the direct kernels run: the active instruction set has vector
/// kernels ([`crate::cpu::simd::Isa::has_kernels`]) and they are not
/// switched off with `SPARSENET_CONV=gemm` (to measure what they gain).
pub fn enabled() -> bool {
    static REQUESTED: OnceLock<bool> = OnceLock::new();
    *REQUESTED.get_or_init(|| std::env::var("SPARSENET_CONV").map_or(true, |v| v != "gemm"))
        && cpu_supported()
}

/// Whether the active instruction set runs the vector kernels (every set
/// but `scalar`).
pub(crate) fn cpu_supported() -> bool {
    simd::active().has_kernels()
}

/// Geometry of one stride-1 convolution over padded planes.
#[derive(Clone, Debug)]
pub struct Direct {
    pub k: usize,
    pub pad: usize,
    /// Input size without padding.
    pub h: usize,
    pub w: usize,
    /// Padded input width (the row stride of a padded plane).
    pub wp: usize,
    /// Output size.
    pub ho: usize,
    pub wo: usize,
    /// Floats per padded input plane (`hp * wp` and the slack the flat
    /// mapping reads past the end).
    pub plane: usize,
    /// Floats per output plane in the kernels' output layout.
    pub out_plane: usize,
    /// True for the rows mapping, false for the flat one.
    pub rows: bool,
    /// Per vector of 8 outputs: offset of its first input in a padded plane,
    /// offset of its first output in an output plane.
    offs: Vec<(u32, u32)>,
    /// Offset of each of the k*k taps in a padded plane.
    taps: Vec<u32>,
    /// Zero for the padded-planes layout; for the pointwise layout (see
    /// [`Direct::pointwise`]), the number of channels in a tile block.
    chans: usize,
}

/// Pixels per tile block of the pointwise layout (two vectors: the forward
/// kernel's position tile).
const BLOCK: usize = 8 * FP;

impl Direct {
    pub fn new(h: usize, w: usize, k: usize, pad: usize) -> Self {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        assert!(k >= 1 && hp >= k && wp >= k, "kernel fits the padded input");
        let (ho, wo) = (hp - k + 1, wp - k + 1);
        let rows = wo.is_multiple_of(8);
        let (offs, plane, out_plane) = if rows {
            let offs = (0..ho * wo / 8)
                .map(|v| {
                    let (y, x0) = (8 * v / wo, 8 * v % wo);
                    ((y * wp + x0) as u32, (y * wo + x0) as u32)
                })
                .collect();
            (offs, hp * wp, ho * wo)
        } else {
            let nv = (ho * wp).div_ceil(8);
            let offs = (0..nv).map(|v| ((8 * v) as u32, (8 * v) as u32)).collect();
            let reach = 8 * nv + (k - 1) * wp + (k - 1);
            (offs, (hp * wp).max(reach), 8 * nv)
        };
        // An odd number of cache lines per plane: with a power-of-two stride
        // (a 32x32 plane is 4 KiB) the same position in every channel maps
        // to one L1 set, and a tile reading all channels thrashes it.
        let lines = plane.div_ceil(16);
        let plane = 16 * (lines + (lines + 1) % 2);
        let taps = (0..k * k).map(|t| ((t / k) * wp + t % k) as u32).collect();
        Direct {
            k,
            pad,
            h,
            w,
            wp,
            ho,
            wo,
            plane,
            out_plane,
            rows,
            offs,
            taps,
            chans: 0,
        }
    }

    /// A 1x1 convolution over `chans` input channels, in the pointwise
    /// layout: the pixels in blocks of `BLOCK` (16), and within a block every
    /// channel's `BLOCK` (16) values one after the other. A position tile then
    /// reads one contiguous run of memory instead of one cache line in each
    /// of `chans` planes, which the hardware prefetchers cannot follow.
    /// In this layout `plane` is the distance between channels in a block.
    pub fn pointwise(h: usize, w: usize, chans: usize) -> Self {
        assert!(chans > 0, "a convolution has input channels");
        let hw = h * w;
        let rows = hw.is_multiple_of(8);
        let nv = hw.div_ceil(8);
        let offs = (0..nv)
            .map(|v| {
                (
                    ((v / FP) * chans * BLOCK + (v % FP) * 8) as u32,
                    (8 * v) as u32,
                )
            })
            .collect();
        Direct {
            k: 1,
            pad: 0,
            h,
            w,
            wp: w,
            ho: h,
            wo: w,
            plane: BLOCK,
            out_plane: if rows { hw } else { 8 * nv },
            rows,
            offs,
            taps: vec![0],
            chans,
        }
    }

    /// The layout for a stride-1 convolution over `chans` channels: the
    /// pointwise one for 1x1 kernels without padding, else padded planes.
    pub fn for_conv(h: usize, w: usize, k: usize, pad: usize, chans: usize) -> Self {
        if k == 1 && pad == 0 {
            Direct::pointwise(h, w, chans)
        } else {
            Direct::new(h, w, k, pad)
        }
    }

    /// A matrix product in the forward kernel's terms, `out[o][t] =
    /// sum_c w[o][c] x[c][t]` over rows of `n` floats (`n` a multiple of 8)
    /// that lie `in_stride` floats apart in `x` and `out_stride` in `out`:
    /// a 1x1 "convolution" over `n` positions. The Winograd path's
    /// per-position products ([`crate::cpu::conv::winograd`]) run through
    /// [`forward_ep`] with it.
    pub fn matrix(n: usize, in_stride: usize, out_stride: usize) -> Self {
        assert!(n > 0 && n.is_multiple_of(8), "rows of whole vectors");
        assert!(in_stride >= n && out_stride >= n, "rows do not overlap");
        Direct {
            k: 1,
            pad: 0,
            h: 1,
            w: n,
            wp: n,
            ho: 1,
            wo: n,
            plane: in_stride,
            out_plane: out_stride,
            rows: true,
            offs: (0..n / 8)
                .map(|v| ((8 * v) as u32, (8 * v) as u32))
                .collect(),
            taps: vec![0],
            chans: 0,
        }
    }

    /// Whether this is the pointwise layout ([`Direct::pointwise`]) rather
    /// than padded planes.
    pub fn is_pointwise(&self) -> bool {
        self.chans != 0
    }

    /// A 1x1 convolution over `chans` channels in the pointwise layout
    /// whose output goes straight into the padded planes of `next` (the
    /// input layout of the convolution that reads it): output vector `v`
    /// is stored at its pixel's place inside the zero border, and output
    /// planes are `next.plane` apart. The border itself is left alone (see
    /// [`Direct::zero_border`]). `None` unless `next` is a padded-planes
    /// layout of the same h x w and rows are whole vectors (w a multiple
    /// of 8), so that no vector straddles two rows.
    pub fn pointwise_into(h: usize, w: usize, chans: usize, next: &Direct) -> Option<Self> {
        if next.chans != 0 || next.h != h || next.w != w || !w.is_multiple_of(8) {
            return None;
        }
        let mut d = Direct::pointwise(h, w, chans);
        let (p, wp) = (next.pad, next.wp);
        for (v, o) in d.offs.iter_mut().enumerate() {
            let (y, x) = (8 * v / w, 8 * v % w);
            o.1 = ((y + p) * wp + x + p) as u32;
        }
        d.out_plane = next.plane;
        Some(d)
    }

    /// Zeros everything of each padded plane in `planes` but the h x w
    /// interior: the border, and the slack after the last row.
    pub fn zero_border(&self, planes: &mut [f32]) {
        assert_eq!(self.chans, 0, "a padded-planes layout");
        let (p, w, wp) = (self.pad, self.w, self.wp);
        for plane in planes.chunks_exact_mut(self.plane) {
            // From the end of one interior row to the start of the next:
            // the right border of the one and the left border of the next.
            plane[..p * wp + p].fill(0.0);
            for y in 0..self.h - 1 {
                let end = (y + p) * wp + p + w;
                if p == 1 {
                    // Two stores, not a call to memset per row.
                    plane[end] = 0.0;
                    plane[end + 1] = 0.0;
                } else {
                    plane[end..end + 2 * p].fill(0.0);
                }
            }
            plane[(p + self.h - 1) * wp + p + w..].fill(0.0);
        }
    }

    /// Vectors of 8 outputs per image.
    pub fn offs_len(&self) -> usize {
        self.offs.len()
    }

    /// Floats of an input buffer of `chans` channels in this layout.
    pub fn input_len(&self, chans: usize) -> usize {
        if self.chans == 0 {
            chans * self.plane
        } else {
            assert_eq!(
                chans, self.chans,
                "pointwise layout built for this many channels"
            );
            (self.h * self.w).div_ceil(BLOCK) * BLOCK * chans
        }
    }

    /// Writes channel `c` (an h x w plane, `src`) into the input buffer
    /// `buf` in this layout, zeros around it, applying `f` to each run of
    /// values as it is copied.
    pub fn fill<T: Copy + num_traits::Zero>(
        &self,
        c: usize,
        src: &[T],
        buf: &mut [T],
        f: impl FnMut(&[T], &mut [T]),
    ) {
        // SAFETY: `buf` is borrowed mutably, so no one else touches it.
        unsafe { self.fill_channel_of(c, src, buf.as_mut_ptr(), buf.len(), f) }
    }

    /// [`Direct::fill`] through a pointer to the whole input buffer (`len`
    /// elements), touching only channel `c`'s elements, so that threads can
    /// fill different channels of one buffer at once.
    ///
    /// # Safety
    /// `buf` is valid for writes of `len` elements, and while this runs no
    /// other thread accesses channel `c`'s elements or holds a reference to
    /// the whole buffer.
    pub unsafe fn fill_channel_of<T: Copy + num_traits::Zero>(
        &self,
        c: usize,
        src: &[T],
        buf: *mut T,
        len: usize,
        mut f: impl FnMut(&[T], &mut [T]),
    ) {
        // A slice of the buffer: checked against `len`, disjoint from other
        // channels' slices.
        let part = |at: usize, n: usize| {
            assert!(at + n <= len, "channel {c} lies outside the input buffer");
            // SAFETY: within the buffer (checked), and channel c's alone.
            unsafe { std::slice::from_raw_parts_mut(buf.add(at), n) }
        };
        if self.chans == 0 {
            return self.pad_plane(src, part(c * self.plane, self.plane), f);
        }
        debug_assert!(src.len() == self.h * self.w && c < self.chans);
        for (t, run) in src.chunks(BLOCK).enumerate() {
            let dst = part((t * self.chans + c) * BLOCK, BLOCK);
            f(run, &mut dst[..run.len()]);
            dst[run.len()..].fill(T::zero());
        }
    }

    /// Copies consecutive h x w planes (`planes`, one per channel, as in
    /// NCHW) into the input buffer `buf` in this layout, zeros around them.
    pub fn fill_planes<T: Copy + num_traits::Zero>(&self, planes: &[T], buf: &mut [T]) {
        for (c, src) in planes.chunks_exact(self.h * self.w).enumerate() {
            self.fill(c, src, buf, |s, t| t.copy_from_slice(s));
        }
    }

    /// Writes plane `src` (h x w) into `dst` (one padded plane) with its zero
    /// border and slack, applying `f` to each row as it is copied.
    fn pad_plane<T: Copy + num_traits::Zero>(
        &self,
        src: &[T],
        dst: &mut [T],
        mut row: impl FnMut(&[T], &mut [T]),
    ) {
        let (p, w, wp) = (self.pad, self.w, self.wp);
        debug_assert!(src.len() == self.h * w && dst.len() == self.plane);
        dst[..p * wp].fill(T::zero());
        for y in 0..self.h {
            let line = &mut dst[(y + p) * wp..(y + p + 1) * wp];
            line[..p].fill(T::zero());
            row(&src[y * w..(y + 1) * w], &mut line[p..p + w]);
            line[p + w..].fill(T::zero());
        }
        dst[(p + self.h) * wp..].fill(T::zero());
    }

    /// Copies a grid-shaped output plane (flat mapping) into an NCHW plane.
    pub fn compact(&self, grid: &[f32], dst: &mut [f32]) {
        for y in 0..self.ho {
            dst[y * self.wo..(y + 1) * self.wo]
                .copy_from_slice(&grid[y * self.wp..y * self.wp + self.wo]);
        }
    }

    /// Writes an NCHW output-gradient plane into the grid layout (flat
    /// mapping), zeros in the thrown-away columns so they add nothing to the
    /// weight gradient.
    pub fn expand(&self, src: &[f32], grid: &mut [f32]) {
        grid.fill(0.0);
        for y in 0..self.ho {
            grid[y * self.wp..y * self.wp + self.wo]
                .copy_from_slice(&src[y * self.wo..(y + 1) * self.wo]);
        }
    }
}

/// [`forward_ep`] into `cout` NCHW planes of `ho * wo` floats whatever the
/// output mapping: straight in the rows mapping; in the flat one through
/// `grid` (resized as needed, contents stale) and compacted.
#[allow(clippy::too_many_arguments)]
pub fn forward_nchw(
    d: &Direct,
    x: &[f32],
    cin: usize,
    weight: &[f32],
    cout: usize,
    out: &mut [f32],
    grid: &mut Vec<f32>,
    ep: Option<Epilogue>,
) {
    if d.rows {
        return forward_ep(d, x, cin, weight, cout, out, ep);
    }
    grid.resize(cout * d.out_plane, 0.0);
    forward_ep(d, x, cin, weight, cout, grid, ep);
    for (gp, op) in grid
        .chunks_exact(d.out_plane)
        .zip(out.chunks_exact_mut(d.ho * d.wo))
    {
        d.compact(gp, op);
    }
}

/// `out = conv(x, W)` for one image: `x` holds `cin` input channels in the
/// layout of `d`, `weight` is OIHW (cout x cin x k x k), `out` holds `cout`
/// planes of `out_plane` floats (NCHW planes in the rows mapping, grid
/// planes in the flat one).
pub fn forward(d: &Direct, x: &[f32], cin: usize, weight: &[f32], cout: usize, out: &mut [f32]) {
    forward_ep(d, x, cin, weight, cout, out, None)
}

/// [`forward`] with `ep` applied to each output as it is stored.
pub fn forward_ep(
    d: &Direct,
    x: &[f32],
    cin: usize,
    weight: &[f32],
    cout: usize,
    out: &mut [f32],
    ep: Option<Epilogue>,
) {
    let f = Forward {
        d,
        x,
        cin,
        weight,
        cout,
        out: out.as_mut_ptr(),
        out_len: out.len(),
        ep,
        groups: 0..d.offs.len(),
    };
    f.check();
    simd::dispatch(f)
}

/// [`forward_ep`] for one image of a batch-1 pass, split over the threads
/// by output positions: for a layer of few output channels (the seed's
/// growth of 12 is two channel tiles, one part), where a split by output
/// channels leaves threads idle. Each part computes every channel of its
/// groups of 8 outputs, in the same order as one call does, so the numbers
/// are the same. The rows mapping only (the flat one stores into a grid).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_split_positions(
    d: &Direct,
    x: &[f32],
    cin: usize,
    weight: &[f32],
    cout: usize,
    out: &mut [f32],
    ep: Option<Epilogue>,
) {
    assert!(d.rows, "outputs stored straight into NCHW planes");
    let all = Forward {
        d,
        x,
        cin,
        weight,
        cout,
        out: out.as_mut_ptr(),
        out_len: out.len(),
        ep,
        groups: 0..d.offs.len(),
    };
    all.check();
    let groups = d.offs.len();
    // Whole position tiles of the widest set (4 groups) per part.
    let per = groups
        .div_ceil(crate::cpu::parallel::threads::available())
        .next_multiple_of(4);
    let (base, len) = (crate::cpu::parallel::SharedMut(out.as_mut_ptr()), out.len());
    crate::cpu::parallel::team::for_each_part(groups.div_ceil(per), &|i| {
        let part = Forward {
            d,
            x,
            cin,
            weight,
            cout,
            out: base.at(0),
            out_len: len,
            ep,
            groups: i * per..groups.min((i + 1) * per),
        };
        // SAFETY: checked above for all groups; the parts store to disjoint
        // outputs (their own groups), and `out` outlives the call.
        simd::dispatch(part)
    });
}

/// [`forward_ep`]'s arguments, checked, as a [`Kernel`]: the outputs of
/// position groups `groups` (of 8) of `out_len` floats at `out`, which the
/// call may write while no one else touches those groups' outputs.
pub(crate) struct Forward<'a> {
    pub(crate) d: &'a Direct,
    pub(crate) x: &'a [f32],
    pub(crate) cin: usize,
    pub(crate) weight: &'a [f32],
    pub(crate) cout: usize,
    pub(crate) out: *mut f32,
    pub(crate) out_len: usize,
    pub(crate) ep: Option<Epilogue<'a>>,
    pub(crate) groups: Range<usize>,
}

impl Forward<'_> {
    /// The checks that make [`forward_in`]'s accesses safe.
    pub(crate) fn check(&self) {
        let (d, cin, cout) = (self.d, self.cin, self.cout);
        let kk = d.k * d.k;
        if let Some(e) = &self.ep {
            assert!(
                e.scale.len() >= cout && e.shift.len() >= cout,
                "epilogue covers cout channels"
            );
        }
        assert!(self.x.len() >= d.input_len(cin), "input holds cin channels");
        assert!(
            self.weight.len() >= cout * cin * kk,
            "weight is cout x cin x k x k"
        );
        assert!(
            self.out_len >= cout * d.out_plane,
            "output holds cout planes"
        );
        assert!(self.groups.end <= d.offs.len(), "groups of the output");
        assert!(cpu_supported(), "an instruction set with vector kernels");
    }
}

impl Kernel for Forward<'_> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        forward_in::<S>(self)
    }
}

/// [`forward_ep`]'s body for set `S` (callers inside a kernel of `S` call it
/// directly).
///
/// # Safety
/// The CPU has `S`; the arguments passed [`Forward::check`].
#[inline(always)]
pub(crate) unsafe fn forward_in<S: Simd>(f: Forward) {
    let Forward {
        d,
        x,
        cin,
        weight,
        cout,
        out,
        ep,
        groups,
        ..
    } = f;
    let kk = d.k * d.k;
    // SAFETY (every access below): input reads stay below `cin * plane` by
    // construction of `offs`/`taps` in `Direct::new`; weight reads stay in
    // rows `< cout` (rows past `cout` in a partial tile read a valid row
    // again and are not stored); stores go to planes `q < cout` at offsets
    // below `out_plane`; epilogue reads stay below `cout`.
    let tiles = cout.div_ceil(FQ);
    // Cache blocking: a block of input channels and a group of channel
    // tiles whose weights (at most FW_BYTES) stay in L1 while every
    // position tile passes; within a position tile the group reuses
    // the input windows from L1. Blocks after the first add to the
    // output (which leaves every output's sum in the same order).
    let cb = (FW_BYTES / (FG * kk * FQ * 4)).clamp(1, cin);
    // Blocks of even size: 24 channels as one block of 24 rather than
    // 18 + 6 (each block after the first reads and writes the output
    // again).
    let cb = cin.div_ceil(cin.div_ceil(cb));
    let offs = &d.offs[groups];
    for c0 in (0..cin).step_by(cb) {
        let cn = cb.min(cin - c0);
        let xb = x.as_ptr().add(c0 * d.plane);
        for g0 in (0..tiles).step_by(FG) {
            let mut v = 0;
            while v < offs.len() {
                let tile = PositionTile::at(offs, v, <S::Wide as F32s>::LANES);
                // The output lines a few position tiles ahead, asked
                // for now: a freshly allocated output is in no cache,
                // and the hardware's stream prefetch does not follow
                // FQ * FG planes written at once.
                let ahead = offs.get(v + PF_AHEAD * FP).map(|o| o.1 as usize);
                for tile_q in g0..tiles.min(g0 + FG) {
                    let qn = FQ.min(cout - tile_q * FQ);
                    if let Some(at) = ahead {
                        let o = out.wrapping_add(tile_q * FQ * d.out_plane + at);
                        for q in 0..qn {
                            S::prefetch_write(o.wrapping_add(q * d.out_plane));
                            S::prefetch_write(o.wrapping_add(q * d.out_plane + 8));
                        }
                    }
                    let mut w = [weight.as_ptr(); FQ];
                    for (q, p) in w.iter_mut().enumerate() {
                        let o = tile_q * FQ + q.min(qn - 1);
                        *p = weight.as_ptr().add((o * cin + c0) * kk);
                    }
                    let t = Tile {
                        x: xb,
                        d,
                        cin: cn,
                        w,
                        out: out.add(tile_q * FQ * d.out_plane),
                        qn,
                        accumulate: c0 > 0,
                        // The epilogue goes with the last block's store.
                        ep: match &ep {
                            Some(e) if c0 + cn == cin => Some((
                                e.scale.as_ptr().add(tile_q * FQ),
                                e.shift.as_ptr().add(tile_q * FQ),
                                e.relu,
                            )),
                            _ => None,
                        },
                    };
                    t.run::<S>(kk, tile);
                }
                v += tile.groups();
            }
        }
    }
}

/// The registers of one position tile of [`forward_in`], starting at group
/// `v` (of 8 outputs): which vector type covers it and where each register
/// reads and writes. The layouts are in groups of 8 for every set; a
/// register of 16 lanes covers two groups that lie side by side (in input
/// and output), one of 4 lanes half a group.
#[derive(Clone, Copy)]
enum PositionTile {
    /// `R` registers of 8 lanes, one group each (`R` = 1 or 2).
    Eight(usize, [(usize, usize); 2]),
    /// 1 or 2 registers of 16 lanes, two groups each.
    Sixteen(usize, [(usize, usize); 2]),
    /// 2 or 4 registers of 4 lanes, half a group each.
    Four(usize, [(usize, usize); 4]),
}

impl PositionTile {
    /// The tile at group `v` for a set whose widest vector has `lanes`.
    #[inline(always)]
    fn at(offs: &[(u32, u32)], v: usize, lanes: usize) -> Self {
        let left = offs.len() - v;
        let o = |i: usize| (offs[v + i].0 as usize, offs[v + i].1 as usize);
        // Whether groups v + i and v + i + 1 lie side by side in the input
        // and in the output.
        let pair = |i: usize| {
            let (a, b) = (o(i), o(i + 1));
            b.0 == a.0 + 8 && b.1 == a.1 + 8
        };
        match lanes {
            16 if left >= 4 && pair(0) && pair(2) => PositionTile::Sixteen(2, [o(0), o(2)]),
            16 if left >= 2 && pair(0) => PositionTile::Sixteen(1, [o(0), o(0)]),
            4 if left >= 2 => {
                let (a, b) = (o(0), o(1));
                PositionTile::Four(4, [a, (a.0 + 4, a.1 + 4), b, (b.0 + 4, b.1 + 4)])
            }
            4 => {
                let a = o(0);
                PositionTile::Four(2, [a, (a.0 + 4, a.1 + 4), a, a])
            }
            _ if left >= 2 => PositionTile::Eight(2, [o(0), o(1)]),
            _ => PositionTile::Eight(1, [o(0), o(0)]),
        }
    }

    /// Groups of 8 outputs the tile covers.
    #[inline(always)]
    fn groups(&self) -> usize {
        match *self {
            PositionTile::Eight(r, _) => r,
            PositionTile::Sixteen(r, _) => 2 * r,
            PositionTile::Four(r, _) => r / 2,
        }
    }
}

/// One tile's operands in [`forward_in`]: FQ output channels (`qn` of them
/// real) over a position tile.
struct Tile<'a> {
    x: *const f32,
    d: &'a Direct,
    cin: usize,
    w: [*const f32; FQ],
    out: *mut f32,
    qn: usize,
    accumulate: bool,
    ep: Option<(*const f32, *const f32, bool)>,
}

impl Tile<'_> {
    /// Runs `fwd_tile` with the register type and count of `p` and, where
    /// they are 1 or 9, the tap count known at compile time (which unrolls
    /// the tap loop; a 1x1 kernel has none left), in a function of its own
    /// ([`Simd::outlined`]).
    #[inline(always)]
    unsafe fn run<S: Simd>(&self, kk: usize, p: PositionTile) {
        macro_rules! taps {
            ($wide:literal, $r:literal, $regs:expr) => {{
                let regs: [(usize, usize); $r] = std::array::from_fn(|i| $regs[i]);
                match kk {
                    1 => S::outlined(FwdTile::<$wide, $r, 1> { t: self, regs }),
                    9 => S::outlined(FwdTile::<$wide, $r, 9> { t: self, regs }),
                    _ => S::outlined(FwdTile::<$wide, $r, 0> { t: self, regs }),
                }
            }};
        }
        match p {
            PositionTile::Eight(1, r) => taps!(false, 1, r),
            PositionTile::Eight(_, r) => taps!(false, 2, r),
            PositionTile::Sixteen(1, r) => taps!(true, 1, r),
            PositionTile::Sixteen(_, r) => taps!(true, 2, r),
            PositionTile::Four(2, r) => taps!(true, 2, r),
            PositionTile::Four(_, r) => taps!(true, 4, r),
        }
    }
}

/// One call of [`fwd_tile`] as a [`Kernel`]: on the set's widest vectors
/// (`WIDE`) or its 8-lane ones, `R` of them, `KK` taps (0: not known at
/// compile time).
struct FwdTile<'t, 'a, const WIDE: bool, const R: usize, const KK: usize> {
    t: &'t Tile<'a>,
    regs: [(usize, usize); R],
}

impl<const WIDE: bool, const R: usize, const KK: usize> Kernel for FwdTile<'_, '_, WIDE, R, KK> {
    type Output = ();
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        if WIDE {
            fwd_tile::<S::Wide, R, KK>(self.t, self.regs)
        } else {
            fwd_tile::<S::W8, R, KK>(self.t, self.regs)
        }
    }
}

/// `FQ x R` accumulators of `V`: register `r` reads the input at offset
/// `regs[r].0` (plus the tap's) of each channel plane and stores at
/// `regs[r].1` of each output plane.
#[inline(always)]
unsafe fn fwd_tile<V: F32s, const R: usize, const KK: usize>(t: &Tile, regs: [(usize, usize); R]) {
    let Tile {
        x,
        d,
        cin,
        w,
        out,
        qn,
        accumulate,
        ep,
    } = *t;
    let mut acc = [[V::zero(); R]; FQ];
    if accumulate {
        for q in 0..qn {
            for r in 0..R {
                acc[q][r] = V::load(out.add(q * d.out_plane + regs[r].1));
            }
        }
    }
    let mut base = [x; R];
    for r in 0..R {
        base[r] = x.add(regs[r].0);
    }
    // KK: the number of taps when known at compile time, 0 when not.
    let taps: &[u32] = match KK {
        0 => &d.taps,
        1 => &[0],
        _ => &d.taps[..KK],
    };
    // `i` walks the (channel, tap) pairs: the position in every weight row.
    let mut i = 0;
    for c in 0..cin {
        let plane = c * d.plane;
        for &tap in taps {
            let at = plane + tap as usize;
            let mut xv = [V::zero(); R];
            for r in 0..R {
                xv[r] = V::load(base[r].add(at));
            }
            for q in 0..FQ {
                let wv = V::broadcast(w[q].add(i));
                for r in 0..R {
                    acc[q][r] = xv[r].mul_add(wv, acc[q][r]);
                }
            }
            i += 1;
        }
    }
    if let Some((scale, shift, relu)) = ep {
        for q in 0..qn {
            let s = V::broadcast(scale.add(q));
            let t = V::broadcast(shift.add(q));
            for r in 0..R {
                acc[q][r] = acc[q][r].mul_add(s, t);
                if relu {
                    acc[q][r] = acc[q][r].relu_keep_nan();
                }
            }
        }
    }
    for q in 0..qn {
        for r in 0..R {
            acc[q][r].store(out.add(q * d.out_plane + regs[r].1));
        }
    }
}

/// Floats of the lane accumulator that [`weight_grad`] sums into: one
/// vector of 8 partial sums per weight, padded to whole tiles.
pub fn lanes_len(cout: usize, cin: usize, kk: usize) -> usize {
    cout.div_ceil(WQ) * (cin * kk).div_ceil(WR) * WQ * WR * 8
}

/// `lanes += dy . x` summed over `images` images, kept as 8 partial sums
/// per weight (a horizontal sum per weight and call would cost as much as
/// the products on an 8x8 plane); [`fold_lanes`] adds them into the weight
/// gradient. `x` holds each image's `cin` input channels in the layout of
/// `d` ([`Direct::input_len`] floats per image), `dy` each image's `cout`
/// output-gradient planes in the kernels' output layout (`cout *
/// out_plane` floats per image; in the flat mapping zero outside the
/// output, see [`Direct::expand`]), `lanes` [`lanes_len`] floats. Several
/// images per call give small planes enough positions per tile.
pub fn weight_grad(
    d: &Direct,
    x: &[f32],
    cin: usize,
    dy: &[f32],
    cout: usize,
    lanes: &mut [f32],
    images: usize,
) {
    let kk = d.k * d.k;
    let (x_img, dy_img) = (d.input_len(cin), cout * d.out_plane);
    assert!(
        x.len() >= images * x_img,
        "input holds cin channels per image"
    );
    assert!(
        dy.len() >= images * dy_img,
        "output gradient holds cout planes per image"
    );
    assert!(
        lanes.len() >= lanes_len(cout, cin, kk),
        "lane accumulator size"
    );
    assert!(cpu_supported(), "an instruction set with vector kernels");
    simd::dispatch(WeightGradLanes {
        d,
        x,
        cin,
        dy,
        cout,
        lanes,
        images,
    })
}

/// [`weight_grad`]'s arguments, checked, as a [`Kernel`].
struct WeightGradLanes<'a> {
    d: &'a Direct,
    x: &'a [f32],
    cin: usize,
    dy: &'a [f32],
    cout: usize,
    lanes: &'a mut [f32],
    images: usize,
}

impl Kernel for WeightGradLanes<'_> {
    type Output = ();
    // SAFETY (every access): reads of `x` stay below `images * x_img` and
    // of `dy` below `images * dy_img` (offsets from `Direct::new`/
    // `pointwise` stay inside one image's buffers); rows past `cout` or
    // `j_all` read a valid row again into lanes that `fold_lanes` ignores;
    // each tile's lanes lie inside `lanes_len`.
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let WeightGradLanes {
            d,
            x,
            cin,
            dy,
            cout,
            lanes,
            images,
        } = self;
        let kk = d.k * d.k;
        let j_all = cin * kk;
        let otiles = cout.div_ceil(WQ);
        let (x_img, dy_img) = (d.input_len(cin), cout * d.out_plane);
        // Positions in blocks whose output gradient (all `cout` planes)
        // stays in L2 while every input row passes (a 1x1 layer's 96
        // planes of 32x32 would not; calls over several images are small
        // planes: one block). Within a block, input rows outer: a tile's
        // WR input rows stay in L1 while every output channel's gradient
        // streams past from L2.
        let pb = if images > 1 {
            d.offs.len()
        } else {
            (WG_DY_BYTES / (cout * 32)).max(WG_MIN_BLOCK)
        };
        for offs in d.offs.chunks(pb) {
            for (jt, j0) in (0..j_all).step_by(WR).enumerate() {
                let rn = WR.min(j_all - j0);
                let mut xp = [x.as_ptr(); WR];
                for (r, p) in xp.iter_mut().enumerate() {
                    let j = j0 + r.min(rn - 1);
                    *p = x.as_ptr().add((j / kk) * d.plane + d.taps[j % kk] as usize);
                }
                for (ot, o0) in (0..cout).step_by(WQ).enumerate() {
                    let qn = WQ.min(cout - o0);
                    let mut dyp = [dy.as_ptr(); WQ];
                    for (q, p) in dyp.iter_mut().enumerate() {
                        *p = dy.as_ptr().add((o0 + q.min(qn - 1)) * d.out_plane);
                    }
                    let tile = lanes.as_mut_ptr().add((jt * otiles + ot) * WQ * WR * 8);
                    // Lanes of 8 on every set: the accumulators' layout
                    // (one group's 8 partial sums per weight) is the same.
                    wgrad_tile::<S::W8>(&dyp, &xp, offs, tile, images, x_img, dy_img);
                }
            }
        }
    }
}

/// Adds the lane sums of [`weight_grad`] into `dw` (cout x cin*kk, OIHW).
pub fn fold_lanes(lanes: &[f32], cout: usize, cin: usize, kk: usize, dw: &mut [f32]) {
    let j_all = cin * kk;
    let otiles = cout.div_ceil(WQ);
    assert!(lanes.len() >= lanes_len(cout, cin, kk) && dw.len() >= cout * j_all);
    for o in 0..cout {
        for j in 0..j_all {
            let tile = ((j / WR) * otiles + o / WQ) * WQ * WR * 8;
            let at = tile + ((o % WQ) * WR + j % WR) * 8;
            dw[o * j_all + j] += lanes[at..at + 8].iter().sum::<f32>();
        }
    }
}

#[inline(always)]
unsafe fn wgrad_tile<V: F32s>(
    dy: &[*const f32; WQ],
    x: &[*const f32; WR],
    offs: &[(u32, u32)],
    lanes: *mut f32,
    images: usize,
    x_img: usize,
    dy_img: usize,
) {
    debug_assert_eq!(V::LANES, 8, "one group of 8 positions per vector");
    let mut acc = [[V::zero(); WR]; WQ];
    for q in 0..WQ {
        for r in 0..WR {
            acc[q][r] = V::load(lanes.add((q * WR + r) * 8));
        }
    }
    for img in 0..images {
        let (x0, y0) = (img * x_img, img * dy_img);
        for &(xi, yi) in offs {
            let (xi, yi) = (x0 + xi as usize, y0 + yi as usize);
            let mut g = [V::zero(); WQ];
            for q in 0..WQ {
                g[q] = V::load(dy[q].add(yi));
            }
            for r in 0..WR {
                let xv = V::load(x[r].add(xi));
                for q in 0..WQ {
                    acc[q][r] = g[q].mul_add(xv, acc[q][r]);
                }
            }
        }
    }
    for q in 0..WQ {
        for r in 0..WR {
            acc[q][r].store(lanes.add((q * WR + r) * 8));
        }
    }
}

/// The kernel of a stride-1 convolution's input gradient, for `weight`
/// (OIHW, cout x cin x k x k): a convolution from `cout` channels to `cin`
/// with the taps flipped, in OIHW (cin x cout x k x k):
/// `flipped[c][o][t] = weight[o][c][kk - 1 - t]`.
pub fn flipped_kernel<T: Copy + num_traits::Zero>(
    weight: &[T],
    cout: usize,
    cin: usize,
    kk: usize,
) -> Vec<T> {
    assert_eq!(
        weight.len(),
        cout * cin * kk,
        "weight is cout x cin x k x k"
    );
    let mut f = vec![T::zero(); cin * cout * kk];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..kk {
                f[(c * cout + o) * kk + (kk - 1 - t)] = weight[(o * cin + c) * kk + t];
            }
        }
    }
    f
}

/// Runs `f(first_channel, channels, planes)` over the output planes of one
/// image (`plane` floats each) split by output channels across the threads,
/// at whole forward tiles: how a convolution of fewer images than threads
/// uses every thread. One part (no split) when there are too few channels.
pub(crate) fn split_out_channels(
    out: &mut [f32],
    plane: usize,
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let channels = out.len() / plane;
    let per = out_channels_per_part(channels);
    let (len, parts) = (out.len(), channels.div_ceil(per));
    let base = crate::cpu::parallel::SharedMut(out.as_mut_ptr());
    crate::cpu::parallel::team::for_each_part(parts, &|i| {
        let start = i * per * plane;
        let end = len.min(start + per * plane);
        // SAFETY: the parts are disjoint ranges of `out`, which outlives
        // this call, and each is handed to one call of `f`.
        let part = unsafe { std::slice::from_raw_parts_mut(base.at(start), end - start) };
        f(i * per, (end - start) / plane, part)
    });
}

/// Output channels per part of [`split_out_channels`]: whole forward tiles,
/// at least two.
fn out_channels_per_part(channels: usize) -> usize {
    channels
        .div_ceil(crate::cpu::parallel::threads::available())
        .next_multiple_of(OUT_TILE)
        .max(2 * OUT_TILE)
}

/// The parts [`split_out_channels`] makes of `channels` output channels.
pub(crate) fn out_channel_parts(channels: usize) -> usize {
    channels.div_ceil(out_channels_per_part(channels))
}
