//! The F(2x2, 3x3) input and output transforms, 8 tiles per vector of the
//! set's 8-lane type ([`F32x8`]).

use super::*;

/// `V[xi][c][t] = (B^T d B)[xi]` for the tiles `t` of tile rows `ty0 ..
/// ty0 + rows` of every input channel, with
/// `B^T` = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]:
/// first down the columns of the four padded rows under a tile row, then
/// along each of the four results, 8 tiles at a time (the even and odd
/// columns of a tile pair split apart by shuffles). In registers, except
/// for rows of 4 tiles, which go through the row buffers `rows`.
///
/// # Safety
/// The CPU has `S`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn transform_input<S: Simd>(
    src: PaddedRows,
    tl: &Tiling,
    channels: Range<usize>,
    cin: usize,
    v: &mut [f32],
    rows: &mut [f32],
    layout: VLayout,
) {
    type V<S> = <S as Simd>::W8;
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
                    S::prefetch_read(q.add(line));
                }
                S::prefetch_read(q.add(4 * wp - 1));
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
                            V::<S>::load(q),
                            V::<S>::load(q.add(wp)),
                            V::<S>::load(q.add(2 * wp)),
                            V::<S>::load(q.add(3 * wp)),
                        );
                        [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)]
                    };
                    let (a, b, a2, b2) = (col(0), col(8), col(2), col(10));
                    let mut q = at(0, t0);
                    for i in 0..4 {
                        for val in row_transform_slots(a[i], b[i], a2[i], b2[i]) {
                            val.store(q);
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
                        V::<S>::load(rb.add(2 * t0)),
                        V::<S>::load(rb.add(2 * t0 + 8)),
                        V::<S>::load(rb.add(2 * t0 + 2)),
                        V::<S>::load(rb.add(2 * t0 + 10)),
                    );
                    for (j, val) in vals.into_iter().enumerate() {
                        if tw - t0 >= 8 {
                            val.store(at(4 * i + j, t0));
                        } else {
                            // The last 4 tiles of the row.
                            val.store_lo4(at(4 * i + j, t0));
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
#[inline(always)]
pub(super) unsafe fn row_transform<V: F32x8>(a: V, b: V, a2: V, b2: V) -> [V; 4] {
    let (e, o, e2, o2) = (V::even(a, b), V::odd(a, b), V::even(a2, b2), V::odd(a2, b2));
    row_combine(e, o, e2, o2)
}

/// [`row_transform`] with the 8 tiles in slot order (see [`slot`]).
#[inline(always)]
pub(super) unsafe fn row_transform_slots<V: F32x8>(a: V, b: V, a2: V, b2: V) -> [V; 4] {
    let (e, o) = (V::even_slots(a, b), V::odd_slots(a, b));
    let (e2, o2) = (V::even_slots(a2, b2), V::odd_slots(a2, b2));
    row_combine(e, o, e2, o2)
}

/// `B^T r` from each tile's columns 0 and 1 (`e`, `o`) and 2 and 3 (`e2`,
/// `o2`).
#[inline(always)]
pub(super) unsafe fn row_combine<V: F32x8>(e: V, o: V, e2: V, o2: V) -> [V; 4] {
    [e.sub(e2), o.add(e2), e2.sub(o), o.sub(o2)]
}

/// `Y = A^T M A` for every tile of the block at tile row `ty0` and output
/// channel, with `A^T` = [[1, 1, 1, 0], [0, 1, -1, -1]], 8 tiles at a time,
/// the epilogue applied, and the 2x2 blocks of 8 tiles interleaved back into
/// two output rows of 16 (or of two tile rows of 4 tiles each).
///
/// # Safety
/// The CPU has `S`; `op` points at `cn` planes of h x w whose rows of this
/// block nothing else touches meanwhile.
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
    type V<S> = <S as Simd>::W8;
    let (nt, tw, w, hw) = (tl.nt, tl.tw, d.w, d.h * d.w);
    let mp = m.as_ptr();
    let block_rows = 2 * ty0..2 * (ty0 + tl.rows);
    let slots = tl.slots();
    for o in 0..cn {
        if o + PF_AHEAD < cn {
            prefetch_lines::<S>(op.add((o + PF_AHEAD) * hw), block_rows.clone(), w);
        }
        let finish = Finish::<V<S>>::of(&ep, o);
        let finish = |y| finish.apply(y);
        for t0 in (0..nt).step_by(8) {
            let at = |xi: usize| V::<S>::load(mp.add((o * XI + xi) * nt + t0));
            // Down the columns: output row 0 (s) and row 1 (t) of each of
            // the 4 columns j.
            let mut s = [V::<S>::zero(); 4];
            let mut t = [V::<S>::zero(); 4];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (at(j), at(4 + j), at(8 + j), at(12 + j));
                s[j] = m0.add(m1).add(m2);
                t[j] = m1.sub(m2).sub(m3);
            }
            let y00 = finish(s[0].add(s[1]).add(s[2]));
            let y01 = finish(s[1].sub(s[2]).sub(s[3]));
            let y10 = finish(t[0].add(t[1]).add(t[2]));
            let y11 = finish(t[1].sub(t[2]).sub(t[3]));
            // Tiles t0..t0 + 4 then t0 + 4..t0 + 8, each 4 in one tile row.
            let (rows0, rows1) = if slots {
                (
                    (V::<S>::unpack_lo(y00, y01), V::<S>::unpack_hi(y00, y01)),
                    (V::<S>::unpack_lo(y10, y11), V::<S>::unpack_hi(y10, y11)),
                )
            } else {
                (interleave(y00, y01), interleave(y10, y11))
            };
            for half in 0..2 {
                let tile = t0 + 4 * half;
                let (ty, tx) = (ty0 + tile / tw, tile % tw);
                let at = op.add(o * hw + 2 * ty * w + 2 * tx);
                (if half == 0 { rows0.0 } else { rows0.1 }).store(at);
                (if half == 0 { rows1.0 } else { rows1.1 }).store(at.add(w));
            }
        }
    }
}

/// Asks for the lines of rows `rows` (`w` floats each) of the plane at `p`,
/// to be written: the output transforms ask for the next channel's lines of
/// their block, as a fresh output is in no cache and `PF_AHEAD` planes
/// apart is not a stream the hardware follows.
#[inline(always)]
pub(super) unsafe fn prefetch_lines<S: Simd>(p: *mut f32, rows: Range<usize>, w: usize) {
    for y in rows {
        let row = p.add(y * w);
        for x in (0..w).step_by(16) {
            S::prefetch_write(row.add(x));
        }
    }
}

/// An output channel's epilogue as vectors (the identity without one).
pub(super) struct Finish<V> {
    pub(super) scale: V,
    pub(super) shift: V,
    pub(super) relu: bool,
}

impl<V: F32s> Finish<V> {
    /// Channel `o`'s of `ep`.
    #[inline(always)]
    pub(super) unsafe fn of(ep: &Option<Epilogue>, o: usize) -> Finish<V> {
        match ep {
            Some(e) => Finish {
                scale: V::splat(e.scale[o]),
                shift: V::splat(e.shift[o]),
                relu: e.relu,
            },
            None => Finish {
                scale: V::splat(1.0),
                shift: V::zero(),
                relu: false,
            },
        }
    }

    #[inline(always)]
    pub(super) unsafe fn apply(&self, y: V) -> V {
        let y = y.mul_add(self.scale, self.shift);
        if self.relu {
            y.relu_keep_nan()
        } else {
            y
        }
    }
}
