//! Winograd F(4x4, 3x3): each 4x4 block of outputs from the 6x6 block of
//! inputs under it, with 36 products per (input, output) channel pair where
//! F(2x2, 3x3) ([`super`]) has 16 per 2x2 block: 2.25 products per output
//! instead of 4 (1.78x fewer), and 2.25 transformed input floats written
//! per output instead of 4 (the input transform is bound by its stores).
//!
//! The matrices are Lavin and Gray's (interpolation points 0, +-1, +-2):
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0 ]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6 ]         [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6 ]         [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24 1/12  1/6 ]         [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12 1/6 ]
//!       [0  4  0 -5 0 1]       [   0     0    1]
//! ```
//!
//! Their coefficients (up to 8, and 1/24) make the rounding error larger
//! than F(2x2, 3x3)'s, whose are 0, +-1 and +-1/2: the tests bound both
//! against the definition in f64.
//!
//! Position `xi` of a transformed 6x6 tile is `6 * column + row`, so that
//! the input transform's last pass (down one column) writes six positions
//! one after the other, and the output transform's first pass reads them
//! so. Within each vector of 8 tiles (a tile row's 8 consecutive tiles),
//! `V` and `M` hold the tiles in the order an in-lane 4x4 transpose leaves
//! them, 0 2 4 6 1 3 5 7: tile `2k` is the low half of the `k`th vector
//! of a padded row, tile `2k + 1` its high half (see [`columns`]).
//!
//! Taken for the forward convolutions, input gradients and weight
//! gradients ([`super::WeightGrad`], through [`transform_output_grad`] and
//! [`fold`]) whose width is a multiple of 16 (tile rows of whole halves of
//! vectors of 8 tiles; where a tile row has 4 tiles, a vector holds two).

// The transforms index register arrays by position on purpose (unrolled).
#![allow(clippy::needless_range_loop)]

use super::Tiling;
use super::{prefetch_lines, xi_stride, Finish, PaddedRows, VLayout, PF_AHEAD, PF_CHANNELS};
use crate::cpu::conv::direct::{Direct, Epilogue};
use crate::cpu::simd::{transpose4_halves, F32s, F32x8, Simd};
use std::ops::Range;

/// Positions of a transformed tile (6 x 6).
pub(super) const XI: usize = 36;

/// Floats of the buffer [`transform_input`] copies a channel's padded rows
/// under a block into where its last vectors would read past the input:
/// the rows, and the 2 floats (of a vector's 8) past the last one.
pub(super) fn rows_len(tl: &Tiling) -> usize {
    (4 * tl.rows + 2) * (4 * tl.tw + 2) + 8
}

/// `U = G g G^T` for every (output, input) channel pair, laid out
/// `[xi][o][c]` (`xi = 6 * column + row`): for one `xi`, the weight matrix
/// of that position's product. Computed in f64 and rounded once (the
/// weights are few; the thirds and 24ths would round at every step in f32).
pub(super) fn transform_weights_into(weight: &[f32], cout: usize, cin: usize, u: &mut [f32]) {
    assert_eq!(u.len(), XI * cout * cin, "U holds 36 x cout x cin");
    // The rows of G applied to three values.
    let g = |a: f64, b: f64, c: f64| {
        [
            a / 4.0,
            -(a + b + c) / 6.0,
            -(a - b + c) / 6.0,
            a / 24.0 + b / 12.0 + c / 6.0,
            a / 24.0 - b / 12.0 + c / 6.0,
            c,
        ]
    };
    for o in 0..cout {
        for c in 0..cin {
            let k = &weight[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            let k = |i: usize| k[i] as f64;
            // G g: 6 rows of 3, column by column.
            let cols: [[f64; 6]; 3] = std::array::from_fn(|j| g(k(j), k(3 + j), k(6 + j)));
            for row in 0..6 {
                let vals = g(cols[0][row], cols[1][row], cols[2][row]);
                for (col, &v) in vals.iter().enumerate() {
                    u[((6 * col + row) * cout + o) * cin + c] = v as f32;
                }
            }
        }
    }
}

/// Columns 0..6 of 8 tiles of one padded row (tile `t`'s columns are `4 t
/// .. 4 t + 6` from its first), 4 whose first column is at `qa` and 4 at
/// `qb` (`qa + 16` within a row; the same row of the next tile row where
/// rows have 4 tiles), each a vector in the tiles' order 0 2 4 6 1 3 5 7:
/// the 8 values from `qa` are tile 0's columns 0..4 and tile 1's, so an
/// in-lane transpose of four such vectors gives columns 0..4; the same 4
/// floats on gives columns 4 and 5. Reads `qa .. qa + 20`, `qb .. qb + 20`.
#[inline(always)]
unsafe fn columns<V: F32x8>(qa: *const f32, qb: *const f32) -> [V; 6] {
    let (a0, a1, b0, b1) = (
        V::load(qa),
        V::load(qa.add(8)),
        V::load(qb),
        V::load(qb.add(8)),
    );
    let [c0, c1, c2, c3] = transpose4_halves(a0, a1, b0, b1);
    let (a4, a5, b4, b5) = (
        V::load(qa.add(4)),
        V::load(qa.add(12)),
        V::load(qb.add(4)),
        V::load(qb.add(12)),
    );
    let (t0, t2) = (V::unpack_lo(a4, a5), V::unpack_lo(b4, b5));
    let c4 = V::pairs_lo(t0, t2);
    let c5 = V::pairs_hi(t0, t2);
    [c0, c1, c2, c3, c4, c5]
}

/// Where the 4-tile halves of the vector of tiles `t0 .. t0 + 8` of a
/// block start: (tile row, first tile) of each.
fn halves(tl: &Tiling, t0: usize) -> [(usize, usize); 2] {
    [t0, t0 + 4].map(|t| (t / tl.tw, t % tl.tw))
}

/// `B^T d` for 6 values (of 8 tiles each).
#[inline(always)]
unsafe fn bt<V: F32s>(d: [V; 6]) -> [V; 6] {
    let (four, five, two) = (V::splat(4.0), V::splat(5.0), V::splat(2.0));
    // d4 - 4 d2, d3 - 4 d1, d4 - d2, 2 (d3 - d1).
    let t0 = four.neg_mul_add(d[2], d[4]);
    let t1 = four.neg_mul_add(d[1], d[3]);
    let t2 = d[4].sub(d[2]);
    let t3 = two.mul(d[3].sub(d[1]));
    [
        four.mul_add(d[0], five.neg_mul_add(d[2], d[4])),
        t0.add(t1),
        t0.sub(t1),
        t2.add(t3),
        t2.sub(t3),
        four.mul_add(d[1], five.neg_mul_add(d[3], d[5])),
    ]
}

/// `A^T m` for 6 values (of 8 tiles each).
#[inline(always)]
unsafe fn at<V: F32s>(m: [V; 6]) -> [V; 4] {
    let (s12, d12) = (m[1].add(m[2]), m[1].sub(m[2]));
    let (s34, d34) = (m[3].add(m[4]), m[3].sub(m[4]));
    [
        m[0].add(s12).add(s34),
        V::splat(2.0).mul_add(d34, d12),
        V::splat(4.0).mul_add(s34, s12),
        V::splat(8.0).mul_add(d34, d12).add(m[5]),
    ]
}

/// `V[xi][c][t] = (B^T d B)[xi]` (in `layout`) for the tiles of a block
/// (whose first padded row is `src.row0`) of `channels`: along each of a
/// vector of tiles' six padded rows first (8 tiles at a time, see
/// [`columns`]), then down each of the six resulting columns. A channel
/// whose last vectors would read past the input goes through `rows`
/// ([`rows_len`] floats).
///
/// # Safety
/// The CPU has `S`; `v` holds `36` matrices [`xi_stride`] apart.
#[inline(always)]
pub(super) unsafe fn transform_input<S: Simd>(
    src: PaddedRows,
    tl: &Tiling,
    channels: Range<usize>,
    cin: usize,
    v: &mut [f32],
    rows: &mut [f32],
    layout: VLayout,
) {
    let PaddedRows { x, plane, wp, row0 } = src;
    let (nt, tw) = (tl.nt, tl.tw);
    assert!(
        tw.is_multiple_of(4) && nt.is_multiple_of(8),
        "tile rows of whole halves of vectors, blocks of whole vectors"
    );
    assert!(
        layout == VLayout::XiRows || nt.is_multiple_of(16),
        "whole blocks of the pointwise layout"
    );
    assert!(wp >= 4 * tw + 2, "padded rows cover the tiles");
    assert!(channels.end <= cin, "channels of the convolution");
    let xs = xi_stride(cin, nt);
    assert!(
        (XI - 1) * xs + cin * nt <= v.len(),
        "V holds 36 matrices of cin x nt"
    );
    assert!(rows.len() >= rows_len(tl), "row buffer");
    // The channel's padded rows under the block.
    let span = (4 * tl.rows + 2) * wp;
    let vp = v.as_mut_ptr();
    for c in channels.clone() {
        let top = (c - channels.start) * plane + row0 * wp;
        assert!(top + span <= x.len(), "the block's padded rows lie in x");
        // The same rows two channels on (see the F(2x2) transform).
        let ahead = top + PF_CHANNELS * plane;
        if ahead + span <= x.len() {
            let q = x.as_ptr().add(ahead);
            for line in (0..span).step_by(16) {
                S::prefetch_read(q.add(line));
            }
            S::prefetch_read(q.add(span - 1));
        }
        // The last vector reads 2 floats past the last padded row.
        let p = if top + span + 2 <= x.len() {
            x.as_ptr().add(top)
        } else {
            rows[..span].copy_from_slice(&x[top..top + span]);
            rows[span..].fill(0.0);
            rows.as_ptr()
        };
        for t0 in (0..nt).step_by(8) {
            let q = vp.add(match layout {
                VLayout::XiRows => c * nt + t0,
                VLayout::PointwiseBlocks => ((t0 / 16) * cin + c) * 16 + t0 % 16,
            });
            let [(ra, xa), (rb, xb)] = halves(tl, t0);
            let (pa, pb) = (p.add(4 * ra * wp + 4 * xa), p.add(4 * rb * wp + 4 * xb));
            // Along each padded row: hr[i][j], column j of row i.
            let mut hr = [[S::W8::zero(); 6]; 6];
            for (i, h) in hr.iter_mut().enumerate() {
                *h = bt(columns::<S::W8>(pa.add(i * wp), pb.add(i * wp)));
            }
            // Down each column: positions 6 j .. 6 j + 6.
            let mut at = q;
            for j in 0..6 {
                let col = bt([hr[0][j], hr[1][j], hr[2][j], hr[3][j], hr[4][j], hr[5][j]]);
                for val in col {
                    val.store(at);
                    at = at.add(xs);
                }
            }
        }
    }
}

/// `Y = A^T M A` for every tile of the block at tile row `ty0` and output
/// channel `o < cn` (`M[o][xi][t]`, 36 runs of `nt` per channel), the
/// epilogue applied, each vector of 8 tiles transposed back into 4 output
/// rows of 16 per half (see [`halves`]).
///
/// # Safety
/// The CPU has `S`; `op` points at `cn` planes of h x w whose rows of
/// this block nothing else touches meanwhile.
#[inline(always)]
pub(super) unsafe fn transform_output<S: Simd>(
    d: &Direct,
    tl: &Tiling,
    m: &[f32],
    cn: usize,
    ty0: usize,
    op: *mut f32,
    ep: Option<Epilogue>,
) {
    let (nt, tw, w, hw) = (tl.nt, tl.tw, d.w, d.h * d.w);
    assert!(
        tw.is_multiple_of(4) && nt.is_multiple_of(8),
        "tile rows of whole halves of vectors"
    );
    assert!(m.len() >= cn * XI * nt, "M holds cn x 36 runs of nt");
    assert!(
        4 * (ty0 + tl.rows) <= d.h && 4 * tw == w,
        "the block lies in the image"
    );
    let mp = m.as_ptr();
    let block_rows = 4 * ty0..4 * (ty0 + tl.rows);
    for o in 0..cn {
        if o + PF_AHEAD < cn {
            prefetch_lines::<S>(op.add((o + PF_AHEAD) * hw), block_rows.clone(), w);
        }
        let finish = Finish::<S::W8>::of(&ep, o);
        let finish = |y| finish.apply(y);
        for t0 in (0..nt).step_by(8) {
            let load = |xi: usize| S::W8::load(mp.add((o * XI + xi) * nt + t0));
            // Down each column j: sr[j][i], output row i of column j.
            let mut sr = [[S::W8::zero(); 4]; 6];
            for (j, s) in sr.iter_mut().enumerate() {
                let x = 6 * j;
                *s = at([
                    load(x),
                    load(x + 1),
                    load(x + 2),
                    load(x + 3),
                    load(x + 4),
                    load(x + 5),
                ]);
            }
            let [(ra, xa), (rb, xb)] = halves(tl, t0);
            let (a, b) = (
                op.add(o * hw + 4 * (ty0 + ra) * w + 4 * xa),
                op.add(o * hw + 4 * (ty0 + rb) * w + 4 * xb),
            );
            for i in 0..4 {
                let [y0, y1, y2, y3] =
                    at([sr[0][i], sr[1][i], sr[2][i], sr[3][i], sr[4][i], sr[5][i]]);
                let (y0, y1, y2, y3) = (finish(y0), finish(y1), finish(y2), finish(y3));
                // Back to tiles 2k, 2k + 1 side by side in vector k.
                let [v0, v1, v2, v3] = transpose4_halves(y0, y1, y2, y3);
                let (ya, yb) = (a.add(i * w), b.add(i * w));
                v0.store(ya);
                v1.store(ya.add(8));
                v2.store(yb);
                v3.store(yb.add(8));
            }
        }
    }
}

/// `A` applied to 4 values (of 8 channels each): the adjoint of [`at`].
#[inline(always)]
unsafe fn a6<V: F32s>(y: [V; 4]) -> [V; 6] {
    let (e, o) = (y[0].add(y[2]), y[1].add(y[3]));
    // y0 + 4 y2, 2 y1 + 8 y3.
    let e2 = V::splat(4.0).mul_add(y[2], y[0]);
    let o2 = V::splat(8.0).mul_add(y[3], V::splat(2.0).mul(y[1]));
    [y[0], e.add(o), e.sub(o), e2.add(o2), e2.sub(o2), y[3]]
}

/// `D[xi][t][o] = (A dY A^T)[xi]` for the tiles `t` of a block (rows of
/// `wd` floats), from `g`, the block's output-gradient rows as positions x
/// channels (`wd` floats per position, rows `w` positions long): the weight
/// gradient's counterpart of `V` (`dU = sum over tiles of D (.) V`), with
/// the tiles where [`transform_input`] puts them.
///
/// # Safety
/// The CPU has `S`.
#[inline(always)]
pub(super) unsafe fn transform_output_grad<S: Simd>(
    tl: &Tiling,
    g: &[f32],
    wd: usize,
    w: usize,
    dt: &mut [f32],
) {
    let nt = tl.nt;
    assert!(wd.is_multiple_of(8), "rows of whole vectors");
    assert!(g.len() >= 4 * tl.rows * w * wd, "g holds the block's rows");
    assert!(dt.len() >= XI * nt * wd, "D holds 36 x nt rows");
    assert!(4 * tl.tw <= w, "the tiles lie in the rows");
    let (gp, dp) = (g.as_ptr(), dt.as_mut_ptr());
    for t0 in (0..nt).step_by(8) {
        let halves = halves(tl, t0);
        for u in 0..8 {
            let (r, x0) = halves[u / 4];
            let p00 = 4 * r * w + 4 * (x0 + u % 4);
            // Tile u of the vector sits in lane u / 2, or 4 + u / 2 (see
            // [`columns`]).
            let t = t0 + if u % 2 == 0 { u / 2 } else { 4 + u / 2 };
            for o in (0..wd).step_by(8) {
                let at = |p: usize| S::W8::load(gp.add(p * wd + o));
                // Down each column s, then along each of the 6 rows i.
                let mut cols = [[S::W8::zero(); 6]; 4];
                for (s, col) in cols.iter_mut().enumerate() {
                    let p = p00 + s;
                    *col = a6([at(p), at(p + w), at(p + 2 * w), at(p + 3 * w)]);
                }
                for i in 0..6 {
                    let z = a6([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
                    for (j, val) in z.into_iter().enumerate() {
                        val.store(dp.add(((6 * j + i) * nt + t) * wd + o));
                    }
                }
            }
        }
    }
}

/// Adds `G^T dU G` into `dw` (OIHW, cout x cin x 3 x 3) from `dU`
/// (`[xi][o][c]`), in f64.
pub(super) fn fold(du: &[f32], cout: usize, cin: usize, dw: &mut [f32]) {
    assert!(du.len() >= XI * cout * cin, "dU holds 36 x cout x cin");
    assert!(dw.len() >= cout * cin * 9, "dw is cout x cin x 3 x 3");
    // G^T applied to 6 values: the adjoint of `transform_weights_into`'s G.
    let gt = |u: [f64; 6]| {
        [
            u[0] / 4.0 - (u[1] + u[2]) / 6.0 + (u[3] + u[4]) / 24.0,
            (u[2] - u[1]) / 6.0 + (u[3] - u[4]) / 12.0,
            (u[3] + u[4] - u[1] - u[2]) / 6.0 + u[5],
        ]
    };
    for o in 0..cout {
        for c in 0..cin {
            let u = |i: usize, j: usize| du[((6 * j + i) * cout + o) * cin + c] as f64;
            // Along each row i (over j) first, then down the columns.
            let rows: [[f64; 3]; 6] = std::array::from_fn(|i| gt(std::array::from_fn(|j| u(i, j))));
            let k = &mut dw[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            for kx in 0..3 {
                let col = gt(std::array::from_fn(|i| rows[i][kx]));
                for ky in 0..3 {
                    k[3 * ky + kx] += col[ky] as f32;
                }
            }
        }
    }
}
