//! The F(2x2, 3x3) input and output transforms in AVX2 registers.

use super::*;

/// The 8 even-indexed values of `a` then `b` (16 consecutive floats) in
/// slot order (see [`slot`]): `a0 a2 b0 b2 a4 a6 b4 b6`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn even_slots(a: __m256, b: __m256) -> __m256 {
    _mm256_shuffle_ps::<0b10_00_10_00>(a, b)
}

/// The 8 odd-indexed values of `a` then `b` in slot order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn odd_slots(a: __m256, b: __m256) -> __m256 {
    _mm256_shuffle_ps::<0b11_01_11_01>(a, b)
}

/// The 8 even-indexed values of `a` then `b` (16 consecutive floats).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn even(a: __m256, b: __m256) -> __m256 {
    let s = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(s)))
}

/// The 8 odd-indexed values of `a` then `b` (16 consecutive floats).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn odd(a: __m256, b: __m256) -> __m256 {
    let s = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(s)))
}

/// `V[xi][c][t] = (B^T d B)[xi]` for the tiles `t` of tile rows `ty0 ..
/// ty0 + rows` of every input channel, with
/// `B^T` = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]:
/// first down the columns of the four padded rows under a tile row, then
/// along each of the four results, 8 tiles at a time (the even and odd
/// columns of a tile pair split apart by shuffles). In registers, except
/// for rows of 4 tiles, which go through the row buffers `rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_input(
    src: PaddedRows,
    tl: &Tiling,
    channels: Range<usize>,
    cin: usize,
    v: &mut [f32],
    rows: &mut [f32],
    layout: VLayout,
) {
    let PaddedRows { x, plane, wp, row0 } = src;
    let (rl, nt, tw) = (tl.row_len(), tl.nt, tl.tw);
    assert!(channels.end <= cin, "channels of the convolution");
    let vp = v.as_mut_ptr();
    // Floats from one position xi's row of V to the next: one pointer
    // stepped by this per store, not 16 (which spill).
    let xs = xi_stride(cin, nt);
    for c in channels.clone() {
        for r in 0..tl.rows {
            let top = (c - channels.start) * plane + (row0 + 2 * r) * wp;
            assert!(
                top + 4 * wp <= x.len(),
                "the tile row's padded rows lie in x"
            );
            let at = |j: usize, t0: usize| {
                let t = r * tw + t0;
                vp.add(match layout {
                    VLayout::XiRows => j * xs + c * nt + t,
                    VLayout::PointwiseBlocks => j * xs + ((t / 16) * cin + c) * 16 + t % 16,
                })
            };
            // The same rows two channels on: planes apart, which the
            // hardware prefetchers do not follow (the first load of each
            // row was a fifth of this function's time without it).
            let ahead = top + PF_CHANNELS * plane;
            if ahead + 4 * wp <= x.len() {
                let q = x.as_ptr().add(ahead);
                for line in (0..4 * wp).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(q.add(line) as *const i8);
                }
                _mm_prefetch::<_MM_HINT_T0>(q.add(4 * wp - 1) as *const i8);
            }
            if tw % 8 == 0 {
                // Straight from the padded rows: per 8 tiles, columns
                // 2 t0 .. 2 t0 + 18 (the last vector ends at the row's end).
                let p = x.as_ptr().add(top);
                for t0 in (0..tw).step_by(8) {
                    // The four column-transformed rows at the 4 offsets.
                    let col = |off: usize| {
                        let q = p.add(2 * t0 + off);
                        let (d0, d1, d2, d3) = (
                            _mm256_loadu_ps(q),
                            _mm256_loadu_ps(q.add(wp)),
                            _mm256_loadu_ps(q.add(2 * wp)),
                            _mm256_loadu_ps(q.add(3 * wp)),
                        );
                        [
                            _mm256_sub_ps(d0, d2),
                            _mm256_add_ps(d1, d2),
                            _mm256_sub_ps(d2, d1),
                            _mm256_sub_ps(d1, d3),
                        ]
                    };
                    let (a, b, a2, b2) = (col(0), col(8), col(2), col(10));
                    let mut q = at(0, t0);
                    for i in 0..4 {
                        for val in row_transform_slots(a[i], b[i], a2[i], b2[i]) {
                            _mm256_storeu_ps(q, val);
                            q = q.add(xs);
                        }
                    }
                }
                continue;
            }
            // Rows ending in 4 tiles (8 wide images, 24 wide, ...): through
            // row buffers with zeros past the padded row, which the last
            // vector of 8 tiles reads past.
            let p = &x[top..top + 4 * wp];
            let (p0, rest) = p.split_at(wp);
            let (p1, rest) = rest.split_at(wp);
            let (p2, p3) = rest.split_at(wp);
            {
                let (r0, rest) = rows.split_at_mut(rl);
                let (r1, rest) = rest.split_at_mut(rl);
                let (r2, r3) = rest.split_at_mut(rl);
                for i in 0..wp {
                    r0[i] = p0[i] - p2[i];
                    r1[i] = p1[i] + p2[i];
                    r2[i] = p2[i] - p1[i];
                    r3[i] = p1[i] - p3[i];
                }
            }
            for i in 0..4 {
                let rb = rows.as_ptr().add(i * rl);
                for t0 in (0..tw).step_by(8) {
                    let vals = row_transform(
                        _mm256_loadu_ps(rb.add(2 * t0)),
                        _mm256_loadu_ps(rb.add(2 * t0 + 8)),
                        _mm256_loadu_ps(rb.add(2 * t0 + 2)),
                        _mm256_loadu_ps(rb.add(2 * t0 + 10)),
                    );
                    for (j, val) in vals.into_iter().enumerate() {
                        if tw - t0 >= 8 {
                            _mm256_storeu_ps(at(4 * i + j, t0), val);
                        } else {
                            // The last 4 tiles of the row.
                            _mm_storeu_ps(at(4 * i + j, t0), _mm256_castps256_ps128(val));
                        }
                    }
                }
            }
        }
    }
}

/// `B^T r` along a row for 8 tiles, from the row's 16 values at the tiles'
/// first column (`a`, `b`) and the 16 two columns on (`a2`, `b2`): tile t's
/// columns 2t .. 2t + 3 are the even and odd values of each pair.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn row_transform(a: __m256, b: __m256, a2: __m256, b2: __m256) -> [__m256; 4] {
    let (e, o, e2, o2) = (even(a, b), odd(a, b), even(a2, b2), odd(a2, b2));
    row_combine(e, o, e2, o2)
}

/// [`row_transform`] with the 8 tiles in slot order (see [`slot`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn row_transform_slots(
    a: __m256,
    b: __m256,
    a2: __m256,
    b2: __m256,
) -> [__m256; 4] {
    let (e, o) = (even_slots(a, b), odd_slots(a, b));
    let (e2, o2) = (even_slots(a2, b2), odd_slots(a2, b2));
    row_combine(e, o, e2, o2)
}

/// `B^T r` from each tile's columns 0 and 1 (`e`, `o`) and 2 and 3 (`e2`,
/// `o2`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn row_combine(e: __m256, o: __m256, e2: __m256, o2: __m256) -> [__m256; 4] {
    [
        _mm256_sub_ps(e, e2),
        _mm256_add_ps(o, e2),
        _mm256_sub_ps(e2, o),
        _mm256_sub_ps(o, o2),
    ]
}

/// `Y = A^T M A` for every tile of the block at tile row `ty0` and output
/// channel, with `A^T` = [[1, 1, 1, 0], [0, 1, -1, -1]], 8 tiles at a time,
/// the epilogue applied, and the 2x2 blocks of 8 tiles interleaved back into
/// two output rows of 16 (or of two tile rows of 4 tiles each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn transform_output(
    d: &Direct,
    tl: &Tiling,
    m: &[f32],
    cn: usize,
    ty0: usize,
    op: *mut f32,
    ep: Option<Epilogue>,
) {
    let (nt, tw, w, hw) = (tl.nt, tl.tw, d.w, d.h * d.w);
    let mp = m.as_ptr();
    let block_rows = 2 * ty0..2 * (ty0 + tl.rows);
    let slots = tl.slots();
    for o in 0..cn {
        if o + PF_AHEAD < cn {
            prefetch_lines(op.add((o + PF_AHEAD) * hw), block_rows.clone(), w);
        }
        let finish = Finish::of(&ep, o);
        let finish = |y| finish.apply(y);
        for t0 in (0..nt).step_by(8) {
            let at = |xi: usize| _mm256_loadu_ps(mp.add((o * XI + xi) * nt + t0));
            // Down the columns: output row 0 (s) and row 1 (t) of each of
            // the 4 columns j.
            let mut s = [_mm256_setzero_ps(); 4];
            let mut t = [_mm256_setzero_ps(); 4];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                s[j] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
                t[j] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
            }
            let y00 = finish(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), s[2]));
            let y01 = finish(_mm256_sub_ps(_mm256_sub_ps(s[1], s[2]), s[3]));
            let y10 = finish(_mm256_add_ps(_mm256_add_ps(t[0], t[1]), t[2]));
            let y11 = finish(_mm256_sub_ps(_mm256_sub_ps(t[1], t[2]), t[3]));
            // Tiles t0..t0 + 4 then t0 + 4..t0 + 8, each 4 in one tile row.
            let (rows0, rows1) = if slots {
                (interleave_slots(y00, y01), interleave_slots(y10, y11))
            } else {
                (interleave(y00, y01), interleave(y10, y11))
            };
            for half in 0..2 {
                let tile = t0 + 4 * half;
                let (ty, tx) = (ty0 + tile / tw, tile % tw);
                let at = op.add(o * hw + 2 * ty * w + 2 * tx);
                _mm256_storeu_ps(at, if half == 0 { rows0.0 } else { rows0.1 });
                _mm256_storeu_ps(at.add(w), if half == 0 { rows1.0 } else { rows1.1 });
            }
        }
    }
}

/// Asks for the lines of rows `rows` (`w` floats each) of the plane at `p`,
/// to be written: the output transforms ask for the next channel's lines of
/// their block, as a fresh output is in no cache and `PF_AHEAD` planes
/// apart is not a stream the hardware follows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn prefetch_lines(p: *mut f32, rows: Range<usize>, w: usize) {
    for y in rows {
        let row = p.add(y * w);
        for x in (0..w).step_by(16) {
            _mm_prefetch::<_MM_HINT_ET0>(row.add(x) as *const i8);
        }
    }
}

/// An output channel's epilogue as vectors (the identity without one).
#[cfg(target_arch = "x86_64")]
pub(super) struct Finish {
    pub(super) scale: __m256,
    pub(super) shift: __m256,
    pub(super) relu: bool,
}

#[cfg(target_arch = "x86_64")]
impl Finish {
    /// Channel `o`'s of `ep`.
    #[inline(always)]
    pub(super) unsafe fn of(ep: &Option<Epilogue>, o: usize) -> Finish {
        match ep {
            Some(e) => Finish {
                scale: _mm256_set1_ps(e.scale[o]),
                shift: _mm256_set1_ps(e.shift[o]),
                relu: e.relu,
            },
            None => Finish {
                scale: _mm256_set1_ps(1.0),
                shift: _mm256_setzero_ps(),
                relu: false,
            },
        }
    }

    #[inline(always)]
    pub(super) unsafe fn apply(&self, y: __m256) -> __m256 {
        let y = _mm256_fmadd_ps(y, self.scale, self.shift);
        if self.relu {
            crate::cpu::simd::relu_keep_nan(y)
        } else {
            y
        }
    }
}

/// `a0 b0 a1 b1 a2 b2 a3 b3` and `a4 b4 .. a7 b7`: the two columns of 8
/// tiles' output rows side by side again.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn interleave(a: __m256, b: __m256) -> (__m256, __m256) {
    let lo = _mm256_unpacklo_ps(a, b);
    let hi = _mm256_unpackhi_ps(a, b);
    (
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    )
}

/// [`interleave`] of 8 tiles in slot order (see [`slot`]): in-lane only.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn interleave_slots(a: __m256, b: __m256) -> (__m256, __m256) {
    (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
}
