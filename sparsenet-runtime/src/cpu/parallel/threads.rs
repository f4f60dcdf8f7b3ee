//! How an inference pass shares the CPU's threads: image by image.
//!
//! A layer at a time over the whole batch, every activation of a SparseNet
//! stage is a batch-sized buffer (6 MB per BC-100 stage-1 layer at batch 64)
//! that is written to memory and read back from it by each later layer
//! that aggregates it. Image by image, one thread carries one image through
//! every layer, and what that image's layers read (its live activations,
//! 1.3 MB at the peak of BC-100) stays in the caches; the threads run
//! different images at once. Training cannot do this: BatchNorm needs the
//! whole batch's statistics at every layer.
//!
//! Inside [`by_image`] the kernels see one thread ([`available`]), so that a
//! one-image call runs where it was made instead of splitting its channels
//! over threads that are busy with images of their own. A batch of one
//! image is the exception: it runs as one pass whose layers split their
//! channels over the threads, held as a team for the pass
//! ([`crate::cpu::parallel::team`]; batch-1 latency).

use crate::Float;
use ndarray::{s, Array2, ArrayView4, Axis};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// True while this thread runs one image of [`by_image`].
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Threads one kernel call may spread its work over: rayon's, or 1 on a
/// thread that runs an image of [`by_image`].
pub fn available() -> usize {
    if ALONE.get() {
        1
    } else {
        rayon::current_num_threads()
    }
}

thread_local! {
    /// The [`by_image`] pass this thread runs a part of, 0 outside one.
    static PASS: Cell<u64> = const { Cell::new(0) };
}

/// Passes of [`by_image`] begun in this process.
static PASSES: AtomicU64 = AtomicU64::new(0);

/// The [`by_image`] pass this thread runs a part of (a number no other pass
/// of this process has), or 0 outside one. A pass borrows the model
/// (shared by its threads), so the weights it is called with live and do
/// not change until it ends: what a kernel derives from a weight buffer
/// once in a pass holds for the rest of it ([`crate::cpu::conv::winograd`]'s cache of
/// transformed weights compares them in full once per pass instead of once
/// per image).
pub fn current_pass() -> u64 {
    PASS.get()
}

/// Whether this thread runs one image of [`by_image`] (an inference pass),
/// where every layer is called once per image with the same weights.
pub fn in_image_pass() -> bool {
    ALONE.get()
}

/// Multiply-adds a thread's piece of [`by_image`] should hold at least:
/// small images go several to a piece, so that the fixed cost of each
/// layer's call (folding BatchNorm, taking scratch buffers, setting up the
/// kernel) is shared by them.
const PIECE_MACS: u64 = 50_000_000;

/// The logits of inference `pass` over the batch `x`, computed image by
/// image in parallel (each image on one thread, start to end; images of
/// fewer than [`PIECE_MACS`] multiply-adds, `macs_per_image`, a few at a
/// time), in batch order. A batch of one is one `pass` that may use every
/// thread.
pub fn by_image<T: Float>(
    x: ArrayView4<'_, T>,
    macs_per_image: u64,
    pass: impl Fn(ArrayView4<'_, T>) -> Array2<T> + Sync,
) -> Array2<T> {
    let n = x.dim().0;
    if ALONE.get() {
        return pass(x);
    }
    let id = PASSES.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 1 {
        // Its layers split their channels over a team held for the pass.
        return crate::cpu::parallel::team::run(|| {
            let _pass = InPass::enter(id);
            pass(x)
        });
    }
    let piece = (PIECE_MACS.div_ceil(macs_per_image.max(1)) as usize)
        .clamp(1, n.div_ceil(rayon::current_num_threads()));
    let rows: Vec<Array2<T>> = (0..n.div_ceil(piece))
        .into_par_iter()
        .map(|i| {
            let (_alone, _pass) = (Alone::enter(), InPass::enter(id));
            pass(x.slice(s![i * piece..n.min((i + 1) * piece), .., .., ..]))
        })
        .collect();
    let views: Vec<_> = rows.iter().map(Array2::view).collect();
    ndarray::concatenate(Axis(0), &views).expect("every image has the same number of classes")
}

/// Marks this thread as running a part of pass `id` until dropped (also
/// when the pass unwinds).
struct InPass(u64);

impl InPass {
    fn enter(id: u64) -> Self {
        InPass(PASS.replace(id))
    }
}

impl Drop for InPass {
    fn drop(&mut self) {
        PASS.set(self.0);
    }
}

/// Marks this thread as running one image until dropped (also when the pass
/// unwinds).
struct Alone;

impl Alone {
    fn enter() -> Self {
        ALONE.set(true);
        Alone
    }
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(false);
    }
}
