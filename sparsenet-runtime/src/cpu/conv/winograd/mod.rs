//! Winograd F(2x2, 3x3) for the 3x3, stride-1, pad-1 convolutions of the
//! direct path: the forward convolution, the input gradient (itself a 3x3
//! pad-1 convolution of the output gradient, see [`crate::cpu::conv::direct`]) and the
//! weight gradient ([`WeightGrad`]).
//!
//! Why: in a SparseNet-BC step the 3x3 convolutions are most of the
//! arithmetic, and the direct kernel already runs them near the machine's
//! FMA rate; the way to go faster is fewer multiplies. F(2x2, 3x3) computes
//! each 2x2 block of outputs from the 4x4 block of inputs under it with 16
//! products per (input, output) channel pair instead of 36 (2.25x fewer):
//!
//! `Y = A^T [ (G g G^T) (.) (B^T d B) ] A`
//!
//! with `g` the 3x3 kernel, `d` the 4x4 input tile, `(.)` the elementwise
//! product. Summed over input channels, the 16 elementwise products are 16
//! independent matrix products (one per position `xi` of the 4x4 transformed
//! tile): `M[xi][o][t] = sum_c U[xi][o][c] V[xi][c][t]` over the tiles `t`,
//! which run on the direct forward kernel itself ([`Direct::matrix`]).
//!
//! One image is done in blocks of whole tile rows (at least 32 tiles, four
//! vectors): the block's input tiles are transformed into `V` (in L2; one
//! channels-by-tiles matrix per `xi`, which the products read as a stream),
//! the 16 products written to `M`, and `M` transformed back into 2x2 output
//! blocks, with the epilogue applied as the values are stored. The input is
//! read either from the convolution's zero-padded planes or, in training,
//! straight from the layer's sources through its BN-ReLU a few rows at a
//! time ([`Input`]). The numbers differ from the direct kernel's by rounding
//! only (the transforms' coefficients are 0, +-1 and +-1/2).
//!
//! Where the image's width is a multiple of 16, F(4x4, 3x3) ([`f4`]) does
//! the same with 6x6 transformed tiles: 36 products per 4x4 outputs, 1.78x
//! fewer again, at a rounding error a few times larger (its coefficients
//! run to 8 and 1/24). Per 32x32 layer of BC-100, one thread: forward
//! 96 -> 24 1.54x, input gradient 24 -> 96 1.62x, weight gradient 1.47x
//! faster than through 2x2 tiles.
//!
//! The transforms cost about as much as the products save, so the path is
//! taken only where it measured faster (see [`PreparedConv::new`]);
//! `SPARSENET_WINOGRAD=0` switches it off (to measure what it gains),
//! `SPARSENET_WINOGRAD=2` keeps 2x2 tiles everywhere.

use crate::cpu::conv::direct::{self, cpu_supported, Direct, Epilogue};
use crate::cpu::conv::pointwise_wgrad;
use crate::cpu::parallel::scratch::Scratch;
use crate::cpu::simd::{self, interleave, F32s, F32x8, Kernel, Simd};
use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

mod cache;
mod f2;
mod f4;
mod input;
mod prepared;
#[cfg(test)]
mod tests;
mod tiling;
mod weight_grad;
mod weights;

use cache::*;
use f2::*;
use input::*;
pub use input::{Affine, Input};
pub use prepared::PreparedConv;
use tiling::*;
pub use weight_grad::WeightGrad;
use weights::*;

/// Positions of an F(2x2, 3x3) transformed tile (4 x 4).
const XI: usize = 16;
/// Output positions a convolution must have in all (over its images) to
/// take the Winograd path (see [`PreparedConv::new`]).
pub const MIN_POSITIONS: usize = 4096;
/// Input and output channels a convolution must both have to take the
/// Winograd path: the input transform's cost per tile is shared by the
/// output channels and the output transform's by the input channels, so
/// that with few of either the transforms cost more than the products
/// save. Measured (alternating training steps at batch 64): SparseNet-BC-100
/// (3x3 layers 96 -> 24, input gradient 24 -> 96) 8% faster, the seed's
/// depth-40 network (12 outputs from 24-180 inputs) 12% slower.
pub const MIN_CHANNELS: usize = 16;

/// How a [`PreparedConv`] gets its transformed weights, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The direct kernel.
    None,
    /// Transformed for this call.
    Fresh,
    /// From this thread's [`CACHE`]: a call over too few positions to pay
    /// for the transform inside an inference pass image by image
    /// ([`crate::cpu::parallel::threads::by_image`]), made again for every image with the
    /// same weights.
    Cached,
}

/// The path of a convolution over `images` images (see [`PreparedConv::new`]).
fn source(d: &Direct, cin: usize, cout: usize, images: usize) -> Source {
    if !(enabled() && cpu_supported()) || cin.min(cout) < MIN_CHANNELS {
        Source::None
    } else if images < crate::cpu::parallel::threads::available() {
        if crate::cpu::parallel::team::in_pass() {
            // A batch-1 inference pass: the threads split each image's
            // blocks of tile rows ([`PreparedConv::run_split`]),
            // with the same weights for every image of later passes.
            Source::Cached
        } else {
            // Fewer images than threads elsewhere (a training batch of
            // one): the direct kernel, split by output channels.
            Source::None
        }
    } else if images * d.h * d.w >= MIN_POSITIONS {
        Source::Fresh
    } else if crate::cpu::parallel::threads::in_image_pass() {
        // Inference image by image: the same weights for every image.
        Source::Cached
    } else {
        // A small call elsewhere (a small training batch): the weights
        // change between calls, so a cache would only fill.
        Source::None
    }
}

/// How many channels ahead the input transform asks for its rows.
const PF_CHANNELS: usize = 2;
/// How many output channels ahead the output transform asks for its lines.
const PF_AHEAD: usize = 1;
/// Tiles per block at least: four vectors of 8 (two of the forward kernel's
/// position tiles), as each block reads every product's weights from L2
/// once. Images of 8 x 8 (16 tiles) keep the direct kernel: through blocks
/// of 16 tiles they were no faster (BC-100's third stage, batch 64).
const MIN_BLOCK_TILES: usize = 32;
/// Tiles per F(4x4, 3x3) block at least: 256 outputs, as many as a block of
/// 64 2x2 tiles, whose `V` (36 positions) is already as large.
const F4_BLOCK_TILES: usize = 16;

/// Whether 3x3 convolutions take the Winograd path where their geometry
/// allows it: by default yes, no with `SPARSENET_WINOGRAD=0`, or as last
/// set by [`set_enabled`].
pub fn enabled() -> bool {
    switch(&CHOICE, "0")
}

/// A switch set by its setter, or else on unless `SPARSENET_WINOGRAD`
/// equals `off` (read once; a concurrent setter wins over the environment).
fn switch(cell: &AtomicU8, off: &str) -> bool {
    match cell.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var("SPARSENET_WINOGRAD").map_or(true, |v| v != off);
            let _ = cell.compare_exchange(
                UNSET,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            switch(cell, off)
        }
    }
}

/// Switches the Winograd path on or off for convolutions prepared from now
/// on (for measuring both paths in one process, and for tests).
pub fn set_enabled(on: bool) {
    CHOICE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

/// Whether the 3x3 convolutions (forward, input and weight gradients) whose
/// tile rows allow it take F(4x4, 3x3) ([`f4`]) rather than F(2x2, 3x3): by default
/// yes, no with `SPARSENET_WINOGRAD=2` (F(2x2, 3x3) everywhere), or as last
/// set by [`set_large_tiles`].
pub fn large_tiles() -> bool {
    switch(&LARGE, "2")
}

/// Switches F(4x4, 3x3) on or off for convolutions prepared from now on.
pub fn set_large_tiles(on: bool) {
    LARGE.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

static LARGE: AtomicU8 = AtomicU8::new(UNSET);
