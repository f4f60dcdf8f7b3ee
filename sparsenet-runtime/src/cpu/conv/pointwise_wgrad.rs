//! The weight gradient of a 1x1 convolution (`f32`, vector kernels) as a small
//! matrix product with the reduction over positions inside registers.
//!
//! Why not [`direct::weight_grad`]: that kernel keeps 8 partial sums per
//! weight (positions in the vector lanes) and reads both operands as
//! vectors, 7 loads per 12 products, and its tiles restart for every block
//! of positions. For a 1x1 layer (few products per loaded value: 96 output
//! channels, 24-156 input channels) it ran at 30-45% of the machine's peak.
//! Here the output gradient is first transposed to positions x channels
//! (`dyt`, one pass over it), so that one position's output channels are
//! one vector: a tile of 6 input channels x 16 output channels keeps its
//! 12 sums in registers over a block of positions and reads, per position,
//! 2 vectors of `dyt` and 6 broadcast inputs, like the forward kernel.
//!
//! The input is in the pointwise layout of [`Direct::pointwise`] (blocks of
//! 16 positions, each channel's 16 values together), as the forward pass
//! and the backward gather write it; its tail block is zero-padded, and the
//! transposed gradient has zero rows for those positions.
//!
//! [`direct::weight_grad`]: crate::cpu::conv::direct::weight_grad
use crate::cpu::conv::direct::{self, Direct};
use crate::cpu::simd::{self, F32s, Kernel, Simd};

/// Input channels per tile (broadcasts) and output channels per tile (two
/// vectors): 12 accumulators, 8 loads per 12 products.
const CT: usize = 6;
const OT: usize = 16;
/// Positions per pointwise block (see [`Direct::pointwise`]).
const BLOCK: usize = 16;
/// Pointwise blocks per position block: the transposed gradient of a
/// block (64 positions x 96 channels, 24 KiB) stays in L1 while every
/// input-channel tile passes.
const PB: usize = 4;

/// Row width of the transposed output gradient and of the accumulator:
/// `cout` rounded up to whole tiles (the extra columns are zero).
pub fn width(cout: usize) -> usize {
    cout.div_ceil(OT) * OT
}

/// Floats of the transposed output gradient of one image.
pub fn dyt_len(d: &Direct, cout: usize) -> usize {
    padded_positions(d) * width(cout)
}

/// Floats of the accumulator: `cin` rounded up to whole tiles, rows of
/// [`width`].
pub fn acc_len(cin: usize, cout: usize) -> usize {
    cin.div_ceil(CT) * CT * width(cout)
}

fn padded_positions(d: &Direct) -> usize {
    (d.h * d.w).div_ceil(BLOCK) * BLOCK
}

/// Writes `dyt[p][o] = dy[o][p]` for one image, from `dyp`: its `cout`
/// output-gradient channels in the pointwise layout of `dt`
/// ([`Direct::pointwise`] over `cout` channels, as the input gradient's
/// forward kernel reads them, so already in cache). `dyt` has [`dyt_len`]
/// floats, rows of [`width`]; columns past `cout` are zero, and so are the
/// rows of the tail block's padding (as `dyp` is there).
pub fn transpose(dt: &Direct, dyp: &[f32], cout: usize, dyt: &mut [f32]) {
    let (wd, np) = (width(cout), padded_positions(dt));
    assert!(dt.k == 1 && cout > 0);
    assert!(
        dyp.len() >= dt.input_len(cout),
        "gradient in the pointwise layout of dt"
    );
    assert!(
        dyt.len() >= np * wd,
        "transposed gradient holds dyt_len floats"
    );
    let o8 = if direct::cpu_supported() {
        cout / 8 * 8
    } else {
        0
    };
    struct Transpose<'a> {
        dyp: &'a [f32],
        cout: usize,
        dyt: &'a mut [f32],
        wd: usize,
        blocks: usize,
        o8: usize,
    }
    impl Kernel for Transpose<'_> {
        type Output = ();
        // SAFETY: each 8 x 8 block reads rows `o..o + 8 <= cout` at columns
        // `i..i + 8 <= 16` of a block of `dyp` and writes rows `i..i + 8 <=
        // 16` at columns `o..o + 8 <= wd` of a block of `dyt` (both checked
        // by `transpose`).
        #[inline(always)]
        unsafe fn run<S: Simd>(self) {
            let Transpose {
                dyp,
                cout,
                dyt,
                wd,
                blocks,
                o8,
            } = self;
            for b in 0..blocks {
                // Block b: `cout` rows of 16 positions.
                let src = &dyp[b * cout * BLOCK..(b + 1) * cout * BLOCK];
                let dst = &mut dyt[b * BLOCK * wd..(b + 1) * BLOCK * wd];
                for o in (0..o8).step_by(8) {
                    for i in [0, 8] {
                        simd::transpose8::<S::W8>(
                            src.as_ptr().add(o * BLOCK + i),
                            BLOCK,
                            dst.as_mut_ptr().add(i * wd + o),
                            wd,
                        );
                    }
                }
                scalar(src, o8..cout, dst, wd);
                for row in dst.chunks_exact_mut(wd) {
                    row[cout..].fill(0.0);
                }
            }
        }
    }
    simd::dispatch(Transpose {
        dyp,
        cout,
        dyt,
        wd,
        blocks: np / BLOCK,
        o8,
    })
}

/// `dst[i][o] = src[o][i]` for the rows `os` of one block.
fn scalar(src: &[f32], os: std::ops::Range<usize>, dst: &mut [f32], wd: usize) {
    for o in os {
        for i in 0..BLOCK {
            dst[i * wd + o] = src[o * BLOCK + i];
        }
    }
}

/// `acc[c][o] += sum_p x[c][p] * dyt[p][o]` over one image: `x` is the
/// image's `cin` input channels in the pointwise layout of `d`
/// ([`Direct::pointwise`], `d.input_len(cin)` floats), `dyt` its transposed
/// output gradient ([`transpose`]), `acc` [`acc_len`] floats, rows of
/// [`width`] (rows past `cin` and columns past `cout` collect values that
/// [`fold`] ignores).
pub fn weight_grad(d: &Direct, x: &[f32], cin: usize, dyt: &[f32], cout: usize, acc: &mut [f32]) {
    let (wd, np) = (width(cout), padded_positions(d));
    assert!(d.k == 1, "a 1x1 convolution");
    assert!(
        x.len() >= d.input_len(cin),
        "input holds cin channels in the pointwise layout"
    );
    assert_eq!(d.input_len(cin), np * cin, "the pointwise layout of d");
    assert!(
        dyt.len() >= np * wd,
        "transposed gradient holds dyt_len floats"
    );
    assert!(
        acc.len() >= acc_len(cin, cout),
        "accumulator holds acc_len floats"
    );
    assert!(
        direct::cpu_supported(),
        "an instruction set with vector kernels"
    );
    simd::dispatch(Products {
        x,
        cin,
        dyt,
        acc,
        wd,
        nblocks: np / BLOCK,
    })
}

/// [`weight_grad`]'s arguments, checked, as a [`Kernel`].
struct Products<'a> {
    x: &'a [f32],
    cin: usize,
    dyt: &'a [f32],
    acc: &'a mut [f32],
    wd: usize,
    nblocks: usize,
}

impl Kernel for Products<'_> {
    type Output = ();
    // SAFETY: input rows are clamped to `cin - 1` and blocks to `nblocks`,
    // so reads stay in `x` (`np * cin` floats); `dyt` rows stay below `np`,
    // columns below `wd`; accumulator tiles lie in `acc_len`.
    #[inline(always)]
    unsafe fn run<S: Simd>(self) {
        let Products {
            x,
            cin,
            dyt,
            acc,
            wd,
            nblocks,
        } = self;
        for b0 in (0..nblocks).step_by(PB) {
            let nb = PB.min(nblocks - b0);
            for c0 in (0..cin).step_by(CT) {
                let rows: [*const f32; CT] = std::array::from_fn(|r| {
                    x.as_ptr().add((b0 * cin + (c0 + r).min(cin - 1)) * BLOCK)
                });
                for o0 in (0..wd).step_by(OT) {
                    let (g, a) = (
                        dyt.as_ptr().add(b0 * BLOCK * wd + o0),
                        acc.as_mut_ptr().add(c0 * wd + o0),
                    );
                    // OT output channels in registers of the set's width.
                    match <S::Wide as F32s>::LANES {
                        16 => tile::<S::Wide, 1>(&rows, cin * BLOCK, nb, g, wd, a),
                        4 => tile::<S::Wide, 4>(&rows, cin * BLOCK, nb, g, wd, a),
                        _ => tile::<S::W8, 2>(&rows, cin * BLOCK, nb, g, wd, a),
                    }
                }
            }
        }
    }
}

/// `nb` blocks of 16 positions of one tile: `rows[r]` points at input
/// channel `c0 + r` in the first block (blocks `bs` floats apart), `dyt` at
/// the first position's columns `o0..o0 + 16` (rows `wd` apart), `acc` at
/// the tile's accumulator (rows `wd` apart). `R` registers of `V` cover the
/// 16 columns; each sum runs over the positions in order whatever the
/// width, so every set gives the same numbers.
#[inline(always)]
unsafe fn tile<V: F32s, const R: usize>(
    rows: &[*const f32; CT],
    bs: usize,
    nb: usize,
    dyt: *const f32,
    wd: usize,
    acc: *mut f32,
) {
    debug_assert_eq!(V::LANES * R, OT, "the registers cover a tile's columns");
    let l = V::LANES;
    let mut a = [[V::zero(); R]; CT];
    for (r, ar) in a.iter_mut().enumerate() {
        for (k, v) in ar.iter_mut().enumerate() {
            *v = V::load(acc.add(r * wd + k * l));
        }
    }
    for b in 0..nb {
        for i in 0..BLOCK {
            let g = dyt.add((b * BLOCK + i) * wd);
            let gv: [V; R] = std::array::from_fn(|k| V::load(g.add(k * l)));
            for r in 0..CT {
                let xv = V::broadcast(rows[r].add(b * bs + i));
                for k in 0..R {
                    a[r][k] = xv.mul_add(gv[k], a[r][k]);
                }
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        for (k, v) in ar.iter().enumerate() {
            v.store(acc.add(r * wd + k * l));
        }
    }
}

/// Adds the accumulator into `dw` (`cout x cin`, OIHW of a 1x1 kernel) and
/// zeroes it.
pub fn fold(acc: &mut [f32], cin: usize, cout: usize, dw: &mut [f32]) {
    let wd = width(cout);
    assert!(acc.len() >= acc_len(cin, cout) && dw.len() >= cout * cin);
    for c in 0..cin {
        for o in 0..cout {
            dw[o * cin + c] += acc[c * wd + o];
        }
    }
    acc[..acc_len(cin, cout)].fill(0.0);
}
