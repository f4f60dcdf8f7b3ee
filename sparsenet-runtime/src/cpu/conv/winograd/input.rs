//! Where a convolution's input comes from ([`Input`]: zero-padded planes,
//! or the layer's sources through their BN-ReLU), and the strips of padded
//! rows the input transform reads.

use super::*;

/// What [`transform_input`] reads: channel planes `plane` floats apart in
/// `x`, each with padded rows of `wp` floats, the block's first padded row
/// at row `row0`.
#[derive(Clone, Copy)]
pub(super) struct PaddedRows<'a> {
    pub(super) x: &'a [f32],
    pub(super) plane: usize,
    pub(super) wp: usize,
    pub(super) row0: usize,
}

/// The input of a convolution on the Winograd path, for one image.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// The zero-padded planes of the convolution's [`Direct`] layout.
    Padded(&'a [f32]),
    /// The channels' planes as they are (h x w each), and the per-channel
    /// transform to apply as they are read: each block's padded rows go
    /// into a small strip (a few channels at a time, in L1) with the
    /// transform applied, instead of a gathered padded copy of the image
    /// (444 KB for a BC-100 stage-1 layer; measured neutral to 4% faster
    /// on the training step).
    Planes {
        planes: &'a [&'a [f32]],
        pre: Option<Affine<'a>>,
    },
}

/// `max(scale[c] * v + shift[c], 0)` (no max without `relu`): a BatchNorm's
/// (and ReLU's) effect on channel `c`, as [`crate::cpu::layers::forward::Pre`] applies it.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub relu: bool,
}

impl Affine<'_> {
    /// Channel `c` of `src` into `dst`, with `Pre::apply_plane`'s arithmetic
    /// (so the values equal a gather's to the bit; Rust does not fuse the
    /// multiply and add into an FMA).
    #[inline(always)]
    pub fn row(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        let (s, t) = (self.scale[c], self.shift[c]);
        if self.relu {
            for (d, &v) in dst.iter_mut().zip(src) {
                let y = s * v + t;
                // `<=` so that NaN passes through (a `>` test would zero it).
                *d = if y <= 0.0 { 0.0 } else { y };
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = s * v + t;
            }
        }
    }
}

/// `V` of the block at tile row `ty0` from `input` (see [`transform_input`]),
/// through `strip` for [`Input::Planes`].
///
/// # Safety
/// The CPU has `S`; `v`, `rows` and `strip` sized for `tl` and `cin`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_block<S: Simd>(
    d: &Direct,
    tl: &Tiling,
    input: Input,
    cin: usize,
    ty0: usize,
    v: &mut [f32],
    rows: &mut [f32],
    strip: &mut [f32],
    layout: VLayout,
) {
    match input {
        Input::Padded(x) => {
            assert!(x.len() >= cin * d.plane, "input holds cin padded planes");
            let src = PaddedRows {
                x,
                plane: d.plane,
                wp: d.wp,
                row0: tl.m * ty0,
            };
            transform_rows::<S>(src, tl, 0..cin, cin, v, rows, layout)
        }
        Input::Planes { planes, pre } => {
            assert_eq!(planes.len(), cin, "one plane per input channel");
            debug_assert_eq!(d.wp, tl.m * tl.tw + 2, "the tiling covers the padded row");
            let sp = strip_rows(tl) * d.wp;
            assert!(
                strip.len() >= STRIP_CHANNELS * sp,
                "strip holds its channels"
            );
            for c0 in (0..cin).step_by(STRIP_CHANNELS) {
                let cs = c0..cin.min(c0 + STRIP_CHANNELS);
                fill_strip::<S>(d, tl, planes, pre, cs.clone(), ty0, sp, strip);
                let src = PaddedRows {
                    // With the slack after the last channel's rows.
                    x: &strip[..(cs.len() * sp + 8).min(strip.len())],
                    plane: sp,
                    wp: d.wp,
                    row0: 0,
                };
                transform_rows::<S>(src, tl, cs, cin, v, rows, layout)
            }
        }
    }
}

/// The input transform of `tl`'s tile size.
///
/// # Safety
/// The CPU has `S`; `v` and `rows` sized for `tl` and `cin`.
#[inline(always)]
pub(super) unsafe fn transform_rows<S: Simd>(
    src: PaddedRows,
    tl: &Tiling,
    channels: Range<usize>,
    cin: usize,
    v: &mut [f32],
    rows: &mut [f32],
    layout: VLayout,
) {
    match tl.m {
        2 => transform_input::<S>(src, tl, channels, cin, v, rows, layout),
        _ => f4::transform_input::<S>(src, tl, channels, cin, v, rows, layout),
    }
}

/// Padded rows `m ty0 .. m (ty0 + rows) + 2` (image rows one less) of
/// channels `cs` into `strip`, `sp` floats per channel, through `pre`.
///
/// # Safety
/// The CPU has `S` (the row loops are compiled for it).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn fill_strip<S: Simd>(
    d: &Direct,
    tl: &Tiling,
    planes: &[&[f32]],
    pre: Option<Affine>,
    cs: Range<usize>,
    ty0: usize,
    sp: usize,
    strip: &mut [f32],
) {
    let (h, w, wp) = (d.h, d.w, d.wp);
    assert!(
        d.pad == 1 && wp == w + 2,
        "rows padded by one column each side"
    );
    // Image rows the block reads (the padded rows minus the zero ones).
    let m = tl.m;
    let first = (m * ty0).saturating_sub(1);
    let end = h.min(m * (ty0 + tl.rows) + 1);
    for (i, c) in cs.enumerate() {
        let plane = planes[c];
        assert_eq!(plane.len(), h * w, "channel {c}'s plane is h x w");
        // The same rows of a channel PF_CHANNELS on: other planes (other
        // arrays even), which the hardware prefetchers do not follow.
        if let Some(next) = planes.get(c + PF_CHANNELS) {
            let q = next[first * w..end * w].as_ptr();
            for line in (0..(end - first) * w).step_by(16) {
                S::prefetch_read(q.add(line));
            }
        }
        let dst = &mut strip[i * sp..(i + 1) * sp];
        for (yp, line) in dst.chunks_exact_mut(wp).enumerate() {
            // Padded row yp of the strip is image row m ty0 + yp - 1.
            let y = (m * ty0 + yp).wrapping_sub(1);
            if y >= h {
                line.fill(0.0);
                continue;
            }
            let row = &plane[y * w..(y + 1) * w];
            // The two pad columns (stored, not a `fill`: a call per row).
            line[0] = 0.0;
            line[w + 1] = 0.0;
            match &pre {
                Some(a) => a.row(c, row, &mut line[1..w + 1]),
                None => line[1..w + 1].copy_from_slice(row),
            }
        }
    }
}
