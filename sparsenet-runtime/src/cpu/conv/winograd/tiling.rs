//! How an image is cut into blocks of tiles, and where the transformed
//! tiles (`V`) and products (`M`) of a block lie in memory.

use super::*;

/// How one image's output is cut into m x m tiles and blocks of tile rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tiling {
    /// Output tile side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
    pub(super) m: usize,
    /// Tile rows and tiles per row (h / m, w / m).
    pub(super) th: usize,
    pub(super) tw: usize,
    /// Tile rows per block, and tiles per block (`rows * tw`: with 2x2
    /// tiles a multiple of 16, whole blocks of the pointwise layout, see
    /// [`WeightGrad`]; with 4x4 tiles of 8, and of 16 for the weight
    /// gradient).
    pub(super) rows: usize,
    pub(super) nt: usize,
}

impl Tiling {
    /// The tiling of a forward convolution over the padded planes of `d`
    /// whose images' blocks are split over `parts` threads: F(4x4, 3x3)
    /// where [`Tiling::f4`] takes it, `large` allows it and it has a block
    /// per part, else F(2x2, 3x3) where [`Tiling::f2`] does. (A 16 x 16
    /// image is one block of 4x4 tiles: in a batch-1 pass on two threads,
    /// one would idle.)
    pub(super) fn forward(d: &Direct, large: bool, parts: usize) -> Option<Tiling> {
        large
            .then(|| Tiling::f4(d))
            .flatten()
            .filter(|t| t.th / t.rows >= parts)
            .or_else(|| Tiling::f2(d))
    }

    /// The F(4x4, 3x3) tiling of a convolution over the padded planes of
    /// `d`: 3x3, pad 1, h a multiple of 4 and w of 16 (tile rows of whole
    /// halves of vectors of 8 tiles), whole blocks of whole vectors and at
    /// least [`F4_BLOCK_TILES`].
    pub(super) fn f4(d: &Direct) -> Option<Tiling> {
        if d.k != 3
            || d.pad != 1
            || d.is_pointwise()
            || !d.h.is_multiple_of(4)
            || !d.w.is_multiple_of(16)
        {
            return None;
        }
        let (th, tw) = (d.h / 4, d.w / 4);
        let rows =
            (1..=th).find(|r| th % r == 0 && (r * tw) % 8 == 0 && r * tw >= F4_BLOCK_TILES)?;
        Some(Tiling {
            m: 4,
            th,
            tw,
            rows,
            nt: rows * tw,
        })
    }

    /// Positions of a transformed tile: `(m + 2)^2`.
    pub(super) fn positions(&self) -> usize {
        positions(self.m)
    }

    /// The F(2x2, 3x3) tiling of a convolution over the padded planes of
    /// `d`, when it is one this module does: 3x3, pad 1, even h and w, tile
    /// rows of a multiple of 4 tiles (so that each half of a vector of 8
    /// tiles lies in one tile row), and whole blocks.
    pub(super) fn f2(d: &Direct) -> Option<Tiling> {
        if d.k != 3
            || d.pad != 1
            || d.is_pointwise()
            || !d.h.is_multiple_of(2)
            || !d.w.is_multiple_of(2)
        {
            return None;
        }
        let (th, tw) = (d.h / 2, d.w / 2);
        if tw == 0 || tw % 4 != 0 {
            return None;
        }
        let rows = (1..=th).find(|r| (r * tw) % 16 == 0 && r * tw >= MIN_BLOCK_TILES)?;
        if th % rows != 0 {
            return None;
        }
        Some(Tiling {
            m: 2,
            th,
            tw,
            rows,
            nt: rows * tw,
        })
    }

    /// Whether the block's tiles lie in `V` and `M` in slot order (see
    /// [`slot`]): where tile rows are whole vectors of 8 tiles. Rows ending
    /// in 4 tiles keep the tiles in order.
    pub(super) fn slots(&self) -> bool {
        self.tw.is_multiple_of(8)
    }

    /// Floats of one row buffer of the F(2x2, 3x3) input transform: the
    /// padded row (2 tw + 2) and what the last vector of tiles reads past it.
    pub(super) fn row_len(&self) -> usize {
        2 * self.tw.next_multiple_of(8) + 8
    }

    /// Floats of the input transform's row buffers.
    pub(super) fn rows_len(&self) -> usize {
        match self.m {
            2 => 4 * self.row_len(),
            _ => f4::rows_len(self),
        }
    }
}

/// Positions of a transformed tile for output tiles of side `m`.
pub(super) fn positions(m: usize) -> usize {
    (m + 2) * (m + 2)
}

/// The Winograd path's scratch: `V`, `M` and the row buffers.
pub(super) fn winograd_scratch_len(cin: usize, cn: usize, tl: &Tiling) -> usize {
    let xi = tl.positions();
    xi * xi_stride(cin, tl.nt) + xi * (cn + 1) * tl.nt + tl.rows_len() + strip_len(tl)
}

/// Channels per strip of [`Input::Planes`]: their rows stay in L1 between
/// the strip's fill and its transform.
pub(super) const STRIP_CHANNELS: usize = 8;

/// Floats of [`Input::Planes`]' strip: [`STRIP_CHANNELS`] planes of the
/// block's padded rows (`2 tw + 2` wide, the padded width).
pub(super) fn strip_len(tl: &Tiling) -> usize {
    // F(4x4, 3x3)'s last vector reads 2 floats past the last row.
    STRIP_CHANNELS * strip_rows(tl) * (tl.m * tl.tw + 2) + 8
}

/// Padded rows under a block of tiles: `m rows + 2`.
pub(super) fn strip_rows(tl: &Tiling) -> usize {
    tl.m * tl.rows + 2
}

/// Where [`transform_input`] puts `V[xi][c][t]`: for each `xi`, one
/// matrix of the block's `cin` channels by its tiles, [`xi_stride`] floats
/// after the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VLayout {
    /// Channel rows of the block's tiles (`nt` floats each), which the
    /// forward products ([`Direct::matrix`]) read one after the other: a
    /// stream the hardware prefetches (with each channel's 16 rows 16 rows
    /// apart, every product stalled on its loads from L2).
    XiRows,
    /// The pointwise layout of [`Direct::pointwise`] over the block's tiles
    /// as positions (`[t / 16][c][t % 16]`), which
    /// [`pointwise_wgrad::weight_grad`] reads.
    PointwiseBlocks,
}

/// Floats from `V`'s matrix for one `xi` to the next's: `cin` rows of `nt`
/// floats and one cache line more, so that the 16 rows the input transform
/// writes at once do not all fall in one set of the L1 cache (`cin * nt`
/// floats is often a multiple of 4 KiB).
pub(super) fn xi_stride(cin: usize, nt: usize) -> usize {
    cin * nt + 16
}

/// Slot of tile `t` of a block in `V` and `M` (and the weight gradient's
/// `D`) where the block's tile rows are whole vectors of 8 tiles
/// ([`Tiling::slots`]): within each group of 8, tiles 0 1 4 5 2 3 6 7, the
/// order in which an in-lane shuffle leaves them (see [`even_slots`]), so
/// that neither transform moves values across the vector's halves. The
/// permutation is its own inverse.
#[inline(always)]
pub(super) fn slot(t: usize) -> usize {
    const SIGMA: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];
    (t & !7) | SIGMA[t & 7]
}
