//! Winograd F(2x2, 3x3) for the 3x3, stride-1, pad-1 convolutions of the
//! direct path: the forward convolution, the input gradient (itself a 3x3
//! pad-1 convolution of the output gradient, see [`crate::direct`]) and the
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

use crate::direct::{self, cpu_supported, Direct, Epilogue};
use crate::pointwise_wgrad;
use crate::scratch::Scratch;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

mod f4;

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
    /// ([`crate::threads::by_image`]), made again for every image with the
    /// same weights.
    Cached,
}

/// The path of a convolution over `images` images (see [`PreparedConv::new`]).
fn source(d: &Direct, cin: usize, cout: usize, images: usize) -> Source {
    if !(enabled() && cpu_supported()) || cin.min(cout) < MIN_CHANNELS {
        Source::None
    } else if images < crate::threads::available() {
        if crate::team::in_pass() {
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
    } else if crate::threads::in_image_pass() {
        // Inference image by image: the same weights for every image.
        Source::Cached
    } else {
        // A small call elsewhere (a small training batch): the weights
        // change between calls, so a cache would only fill.
        Source::None
    }
}

/// An output buffer whose disjoint rows the parts of
/// [`PreparedConv::run_split`] write.
struct SharedOut(*mut f32);

// SAFETY: only used to write disjoint rows, one part each.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Bytes of weights and transforms [`CACHE`] keeps per thread at most (an
/// inference pass of BC-100 needs 11 MB).
const CACHE_BYTES: usize = 64 << 20;

/// A cached transform: the weights it came from (compared in full on every
/// lookup, so that weights changed in place are never served a stale
/// transform), and `U`.
struct CachedTransform {
    weight: Vec<f32>,
    cout: usize,
    /// Output tile side of the transform (2 or 4).
    m: usize,
    u: Arc<Vec<f32>>,
    /// The weight buffer last found equal, and the pass
    /// ([`crate::threads::current_pass`]) in which it was.
    seen_at: usize,
    seen_in: u64,
}

impl CachedTransform {
    /// Whether `weight` is this entry's: compared in full, or, for the
    /// buffer already found equal in this same pass (whose weights cannot
    /// have changed since), at a sample of places (a guard against a
    /// caller's freed buffer reused at the same address).
    fn serves(&self, weight: &[f32], cout: usize, m: usize, pass: u64) -> bool {
        if self.cout != cout || self.m != m || self.weight.len() != weight.len() {
            return false;
        }
        if pass != 0 && self.seen_in == pass && self.seen_at == weight.as_ptr() as usize {
            let n = weight.len();
            return (0..n)
                .step_by(1021)
                .chain(n.checked_sub(1))
                .all(|i| self.weight[i] == weight[i]);
        }
        self.weight.as_slice() == weight
    }
}

thread_local! {
    /// This thread's transformed weights of recent [`Source::Cached`]
    /// calls, oldest first.
    static CACHE: RefCell<Vec<CachedTransform>> = const { RefCell::new(Vec::new()) };
}

/// `transform_weights` through this thread's [`CACHE`].
fn cached_transform(weight: &[f32], cout: usize, cin: usize, m: usize) -> Arc<Vec<f32>> {
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let pass = crate::threads::current_pass();
        if let Some(hit) = cache.iter_mut().find(|e| e.serves(weight, cout, m, pass)) {
            (hit.seen_at, hit.seen_in) = (weight.as_ptr() as usize, pass);
            return hit.u.clone();
        }
        let mut u = vec![0.0; positions(m) * cout * cin];
        transform_weights_into(weight, cout, cin, m, &mut u);
        let u = Arc::new(u);
        let bytes = |e: &CachedTransform| 4 * (e.weight.len() + e.u.len());
        let mut total: usize = cache.iter().map(bytes).sum();
        let entry = CachedTransform {
            weight: weight.to_vec(),
            cout,
            m,
            u: u.clone(),
            seen_at: weight.as_ptr() as usize,
            seen_in: pass,
        };
        total += bytes(&entry);
        while total > CACHE_BYTES && !cache.is_empty() {
            total -= bytes(&cache.remove(0));
        }
        cache.push(entry);
        u
    })
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

/// How one image's output is cut into m x m tiles and blocks of tile rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tiling {
    /// Output tile side: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
    m: usize,
    /// Tile rows and tiles per row (h / m, w / m).
    th: usize,
    tw: usize,
    /// Tile rows per block, and tiles per block (`rows * tw`: with 2x2
    /// tiles a multiple of 16, whole blocks of the pointwise layout, see
    /// [`WeightGrad`]; with 4x4 tiles of 8, and of 16 for the weight
    /// gradient).
    rows: usize,
    nt: usize,
}

impl Tiling {
    /// The tiling of a forward convolution over the padded planes of `d`
    /// whose images' blocks are split over `parts` threads: F(4x4, 3x3)
    /// where [`Tiling::f4`] takes it, `large` allows it and it has a block
    /// per part, else F(2x2, 3x3) where [`Tiling::f2`] does. (A 16 x 16
    /// image is one block of 4x4 tiles: in a batch-1 pass on two threads,
    /// one would idle.)
    fn forward(d: &Direct, large: bool, parts: usize) -> Option<Tiling> {
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
    fn f4(d: &Direct) -> Option<Tiling> {
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
    fn positions(&self) -> usize {
        positions(self.m)
    }

    /// The F(2x2, 3x3) tiling of a convolution over the padded planes of
    /// `d`, when it is one this module does: 3x3, pad 1, even h and w, tile
    /// rows of a multiple of 4 tiles (so that each half of a vector of 8
    /// tiles lies in one tile row), and whole blocks.
    fn f2(d: &Direct) -> Option<Tiling> {
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
    fn slots(&self) -> bool {
        self.tw.is_multiple_of(8)
    }

    /// Floats of one row buffer of the F(2x2, 3x3) input transform: the
    /// padded row (2 tw + 2) and what the last vector of tiles reads past it.
    fn row_len(&self) -> usize {
        2 * self.tw.next_multiple_of(8) + 8
    }

    /// Floats of the input transform's row buffers.
    fn rows_len(&self) -> usize {
        match self.m {
            2 => 4 * self.row_len(),
            _ => f4::rows_len(self),
        }
    }
}

/// Positions of a transformed tile for output tiles of side `m`.
fn positions(m: usize) -> usize {
    (m + 2) * (m + 2)
}

/// A 3x3 or other stride-1 convolution over the padded planes (or pointwise
/// layout) of `d`, ready to run image by image: its weights, and their
/// Winograd transform when [`Tiling::forward`] takes the geometry. Made once per
/// convolution call, used for every image.
pub struct PreparedConv<'a> {
    d: &'a Direct,
    weight: &'a [f32],
    cin: usize,
    cout: usize,
    winograd: Option<Transformed>,
}

/// The transformed weights `U[xi][o][c] = (G g[o][c] G^T)[xi]` and the
/// product geometry of a block.
struct Transformed {
    tiling: Tiling,
    u: Weights,
    product: Direct,
}

/// `U`, made for the call or shared from the cache.
enum Weights {
    Fresh(Scratch<f32>),
    Cached(Arc<Vec<f32>>),
}

impl Weights {
    fn as_slice(&self) -> &[f32] {
        match self {
            Weights::Fresh(s) => &s.0,
            Weights::Cached(v) => v,
        }
    }
}

impl<'a> PreparedConv<'a> {
    /// `weight` is OIHW (cout x cin x k x k); `images` is how many images
    /// the convolution will run over. Fewer than [`MIN_CHANNELS`] input or
    /// output channels, or fewer images than threads (a batch-1 pass, whose
    /// threads split an image's output channels), keep the direct kernel.
    /// The weights' transform costs about as much as the products of 16 x
    /// 16 output positions: a call over fewer than [`MIN_POSITIONS`] in all
    /// takes it from a per-thread cache keyed by the weights' values inside
    /// an inference pass image by image, and keeps the direct kernel
    /// anywhere else. Tiles of 4x4 outputs where [`large_tiles`] is on and
    /// the geometry allows them, else of 2x2.
    pub fn new(d: &'a Direct, weight: &'a [f32], cin: usize, cout: usize, images: usize) -> Self {
        Self::with_tiles(d, weight, cin, cout, images, large_tiles())
    }

    /// [`PreparedConv::new`] with F(4x4, 3x3) allowed or not (`large`),
    /// whatever [`large_tiles`] says.
    fn with_tiles(
        d: &'a Direct,
        weight: &'a [f32],
        cin: usize,
        cout: usize,
        images: usize,
        large: bool,
    ) -> Self {
        assert_eq!(
            weight.len(),
            cout * cin * d.k * d.k,
            "weight is cout x cin x k x k"
        );
        // Fewer images than threads: a batch-1 pass, whose threads split
        // each image's blocks (`run_split`).
        let threads = crate::threads::available();
        let parts = if images < threads { threads } else { 1 };
        let winograd = match source(d, cin, cout, images) {
            Source::None => None,
            how => Tiling::forward(d, large, parts).map(|tiling| Transformed {
                tiling,
                u: if how == Source::Fresh {
                    Weights::Fresh(transform_weights(weight, cout, cin, tiling.m))
                } else {
                    Weights::Cached(cached_transform(weight, cout, cin, tiling.m))
                },
                // V's channel rows one after the other (`VLayout::XiRows`),
                // M's output rows one per position apart.
                product: Direct::matrix(tiling.nt, tiling.nt, tiling.positions() * tiling.nt),
            }),
        };
        PreparedConv {
            d,
            weight,
            cin,
            cout,
            winograd,
        }
    }

    /// Floats of the scratch buffer [`PreparedConv::run`] uses for `cn`
    /// output channels of an image (it grows the buffer it is given to
    /// this): so that callers can take one of this size from the
    /// per-thread pool once instead of growing a fresh one.
    pub fn scratch_len(&self, cn: usize) -> usize {
        match &self.winograd {
            None if self.d.rows => 0,
            None => cn * self.d.out_plane,
            Some(t) => winograd_scratch_len(self.cin, cn, &t.tiling),
        }
    }

    /// Whether the Winograd path runs.
    pub fn is_winograd(&self) -> bool {
        self.winograd.is_some()
    }

    /// Every output channel of one image, split over the threads (a
    /// batch-1 pass, where the threads share each image): the direct
    /// kernel by output channels, the Winograd path by blocks of tile rows
    /// (split by output channels, each thread would transform the whole
    /// input). `out` holds the `cout` planes, `ep` covers them.
    pub fn run_split(&self, input: Input, out: &mut [f32], ep: Option<Epilogue>) {
        let Some(t) = &self.winograd else {
            let hw = self.d.ho * self.d.wo;
            crate::kernels::split_out_channels(out, hw, |c0, cn, part| {
                let mut grid = Scratch::<f32>::stale(self.scratch_len(cn));
                let e = ep.map(|e| e.channels(c0, cn));
                self.run(input, c0, cn, part, &mut grid.0, e);
            });
            return;
        };
        let (d, tl) = (self.d, t.tiling);
        assert!(
            out.len() >= self.cout * d.h * d.w,
            "output holds cout planes"
        );
        let blocks = tl.th / tl.rows;
        let per = blocks.div_ceil(crate::threads::available().min(blocks));
        let base = SharedOut(out.as_mut_ptr());
        crate::team::for_each_part(blocks.div_ceil(per), &|i| {
            let mut scratch = Scratch::<f32>::stale(winograd_scratch_len(self.cin, self.cout, &tl));
            let mine = i * per..blocks.min((i + 1) * per);
            let (cin, cout) = (self.cin, self.cout);
            // SAFETY: `out` holds the planes (checked) and outlives the
            // call; each part writes the rows of its own blocks only.
            unsafe {
                image_blocks(
                    d,
                    t,
                    input,
                    cin,
                    cout,
                    0,
                    cout,
                    base.ptr(),
                    &mut scratch.0,
                    ep,
                    mine,
                )
            }
        });
    }

    /// Output channels `c0..c0 + cn` of one image: `input` holds the `cin`
    /// input channels (in the layout of `d`; as planes only on the Winograd
    /// path, see [`PreparedConv::is_winograd`]), `out` `cn` NCHW planes of
    /// `ho * wo`, `scratch` anything (resized as needed, contents stale),
    /// `ep` the epilogue of those `cn` channels.
    pub fn run(
        &self,
        input: Input,
        c0: usize,
        cn: usize,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        ep: Option<Epilogue>,
    ) {
        assert!(
            c0 + cn <= self.cout,
            "output channels within the convolution"
        );
        let per_out = self.cin * self.d.k * self.d.k;
        match (&self.winograd, input) {
            (None, Input::Padded(x)) => {
                let w = &self.weight[c0 * per_out..(c0 + cn) * per_out];
                direct::forward_nchw(self.d, x, self.cin, w, cn, out, scratch, ep)
            }
            (None, Input::Planes { .. }) => {
                panic!("the direct kernel reads its input in the padded layout")
            }
            (Some(t), input) => {
                assert!(
                    out.len() >= cn * self.d.h * self.d.w,
                    "output holds cn planes"
                );
                let blocks = 0..t.tiling.th / t.tiling.rows;
                let (cin, cout, d) = (self.cin, self.cout, self.d);
                // SAFETY: `out` holds the cn planes (checked) and is this
                // call's alone.
                unsafe {
                    image_blocks(
                        d,
                        t,
                        input,
                        cin,
                        cout,
                        c0,
                        cn,
                        out.as_mut_ptr(),
                        scratch,
                        ep,
                        blocks,
                    )
                }
            }
        }
    }
}

/// The Winograd path's scratch: `V`, `M` and the row buffers.
fn winograd_scratch_len(cin: usize, cn: usize, tl: &Tiling) -> usize {
    let xi = tl.positions();
    xi * xi_stride(cin, tl.nt) + xi * (cn + 1) * tl.nt + tl.rows_len() + strip_len(tl)
}

/// The weight gradient of a 3x3 pad-1 convolution through F(2x2, 3x3) or
/// F(4x4, 3x3) ([`f4`]): the forward pass is `Y = A^T [U (.) V] A` per
/// tile, so `dU[xi][o][c] = sum over tiles of (A dY A^T)[xi][o] V[xi][c]`
/// (16 or 36 matrix products that reduce over the tiles) and
/// `dW = G^T dU G`. 2.25x (4x) fewer products than the direct weight
/// gradient's; the products run on [`pointwise_wgrad::weight_grad`] with
/// the tiles as its positions.
pub struct WeightGrad {
    tiling: Tiling,
    /// The pointwise layout over one block's tiles (`V` per `xi`).
    block: Direct,
    cin: usize,
    cout: usize,
}

impl WeightGrad {
    /// For a convolution over the padded planes of `d` with `cin` inputs,
    /// `cout` outputs and `images` images in all; `None` where the direct
    /// kernel does it (other geometries, rows of tiles that are not whole
    /// vectors, too few positions; see [`PreparedConv::new`]).
    pub fn new(d: &Direct, cin: usize, cout: usize, images: usize) -> Option<Self> {
        Self::with_tiles(d, cin, cout, images, large_tiles())
    }

    /// [`WeightGrad::new`] with 4x4 tiles allowed or not (`large`).
    fn with_tiles(d: &Direct, cin: usize, cout: usize, images: usize, large: bool) -> Option<Self> {
        // Its transforms of the weights' gradient are made per call: only
        // where a forward call would transform its weights afresh.
        if source(d, cin, cout, images) != Source::Fresh {
            return None;
        }
        // 4x4 tiles where the forward takes them, with blocks of whole
        // blocks of the pointwise layout; else 2x2 tiles in rows of whole
        // vectors.
        let f4 = Tiling::f4(d).filter(|t| large && t.nt.is_multiple_of(16));
        let tiling = f4.or_else(|| Tiling::f2(d).filter(|t| t.tw.is_multiple_of(8)))?;
        Some(WeightGrad {
            tiling,
            block: Direct::pointwise(1, tiling.nt, cin),
            cin,
            cout,
        })
    }

    /// Floats of the accumulator [`WeightGrad::image`] sums into: one of
    /// [`pointwise_wgrad::acc_len`] per `xi`. Zero it before the first image.
    pub fn acc_len(&self) -> usize {
        self.tiling.positions() * pointwise_wgrad::acc_len(self.cin, self.cout)
    }

    /// Floats of the scratch buffer [`WeightGrad::image`] uses.
    pub fn scratch_len(&self) -> usize {
        let (tl, wd) = (&self.tiling, pointwise_wgrad::width(self.cout));
        let xi = tl.positions();
        xi * xi_stride(self.cin, tl.nt)
            + xi * tl.nt * wd
            + tl.m * tl.rows * tl.m * tl.tw * wd
            + tl.rows_len()
            + strip_len(tl)
    }

    /// Adds one image's products into `acc`: `input` holds its `cin` input
    /// channels, `dy` its `cout` NCHW output-gradient planes (h x w).
    pub fn image(
        &self,
        d: &Direct,
        input: Input,
        dy: &[f32],
        acc: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (tl, cin, cout) = (self.tiling, self.cin, self.cout);
        let (wd, hw, w) = (pointwise_wgrad::width(cout), d.h * d.w, d.w);
        assert!(
            (d.k, d.pad, d.h, d.w) == (3, 1, tl.m * tl.th, tl.m * tl.tw),
            "the geometry this was made for"
        );
        assert!(dy.len() >= cout * hw, "output gradient holds cout planes");
        assert!(
            acc.len() >= self.acc_len(),
            "accumulator holds acc_len floats"
        );
        let per_acc = pointwise_wgrad::acc_len(cin, cout);
        let (xs, xi) = (xi_stride(cin, tl.nt), tl.positions());
        let (v_len, dt_len) = (xi * xs, xi * tl.nt * wd);
        let block_len = tl.m * tl.rows * w;
        scratch.resize(self.scratch_len(), 0.0);
        let (v, rest) = scratch.split_at_mut(v_len);
        let (dt, rest) = rest.split_at_mut(dt_len);
        let (g, rest) = rest.split_at_mut(block_len * wd);
        let (rows, strip) = rest.split_at_mut(tl.rows_len());
        rows.fill(0.0);
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the Winograd path is only prepared on x86-64 with AVX2 and FMA");
        #[cfg(target_arch = "x86_64")]
        for ty0 in (0..tl.th).step_by(tl.rows) {
            // SAFETY: AVX2 and FMA are present (`new` checked); buffers
            // sized above; reads of `dy` within output rows m ty0 ..
            // m (ty0 + rows) of each plane.
            unsafe {
                let layout = VLayout::PointwiseBlocks;
                transform_block(d, &tl, input, cin, ty0, v, rows, strip, layout);
                transpose_block(&tl, dy, cout, hw, w, ty0, g);
                match tl.m {
                    2 => transform_output_grad(&tl, g, wd, w, dt),
                    _ => f4::transform_output_grad(&tl, g, wd, w, dt),
                }
            }
            for x in 0..xi {
                pointwise_wgrad::weight_grad(
                    &self.block,
                    &v[x * xs..x * xs + cin * tl.nt],
                    cin,
                    &dt[x * tl.nt * wd..(x + 1) * tl.nt * wd],
                    cout,
                    &mut acc[x * per_acc..(x + 1) * per_acc],
                );
            }
        }
    }

    /// Adds `G^T dU G` into `dw` (OIHW, cout x cin x 3 x 3), `dU` the sums
    /// in `acc`, and zeroes `acc`.
    pub fn fold(&self, acc: &mut [f32], dw: &mut [f32]) {
        let (cin, cout) = (self.cin, self.cout);
        assert!(dw.len() >= cout * cin * 9, "dw is cout x cin x 3 x 3");
        let per_acc = pointwise_wgrad::acc_len(cin, cout);
        let xi = self.tiling.positions();
        // The folds below add into it.
        let mut du = Scratch::<f32>::zeros(xi * cout * cin);
        let du = &mut du.0;
        for x in 0..xi {
            pointwise_wgrad::fold(
                &mut acc[x * per_acc..(x + 1) * per_acc],
                cin,
                cout,
                &mut du[x * cout * cin..(x + 1) * cout * cin],
            );
        }
        if self.tiling.m == 4 {
            f4::fold(du, cout, cin, dw);
            return;
        }
        // G^T applied to 4 values: the adjoint of `transform_weights`' G.
        let gt =
            |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
        for o in 0..cout {
            for c in 0..cin {
                let u = |i: usize, j: usize| du[((4 * i + j) * cout + o) * cin + c];
                // Along rows (j) first, then down the columns (i).
                let rows: [[f32; 3]; 4] =
                    std::array::from_fn(|i| gt(u(i, 0), u(i, 1), u(i, 2), u(i, 3)));
                let k = &mut dw[(o * cin + c) * 9..(o * cin + c + 1) * 9];
                for j in 0..3 {
                    let col = gt(rows[0][j], rows[1][j], rows[2][j], rows[3][j]);
                    for i in 0..3 {
                        k[3 * i + j] += col[i];
                    }
                }
            }
        }
    }
}

/// The output-gradient rows of the block at tile row `ty0` (`m rows` rows
/// of each of the `cout` planes of `dy`) transposed into `g`: positions x
/// channels, rows of `wd` (columns past `cout` zero), which the transforms
/// of the output gradient read a vector of 8 channels at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_block(
    tl: &Tiling,
    dy: &[f32],
    cout: usize,
    hw: usize,
    w: usize,
    ty0: usize,
    g: &mut [f32],
) {
    let wd = pointwise_wgrad::width(cout);
    let np = tl.m * tl.rows * w;
    let base = tl.m * ty0 * w;
    assert!((cout - 1) * hw + base + np <= dy.len());
    assert!(g.len() >= np * wd, "g holds the block's positions");
    let o8 = cout / 8 * 8;
    for o in (0..o8).step_by(8) {
        for p in (0..np).step_by(8) {
            pointwise_wgrad::transpose8(
                dy.as_ptr().add(o * hw + base + p),
                hw,
                g.as_mut_ptr().add(p * wd + o),
                wd,
            );
        }
    }
    for p in 0..np {
        for o in o8..wd {
            g[p * wd + o] = if o < cout { dy[o * hw + base + p] } else { 0.0 };
        }
    }
}

/// `D[xi][t][o] = (A dY A^T)[xi]` for the tiles `t` of a block, rows of `wd`,
/// from `g` (see [`transpose_block`]), with
/// `A` = [[1, 0], [1, 1], [1, -1], [0, -1]]: each tile's four positions
/// combined a vector of 8 channels at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transform_output_grad(tl: &Tiling, g: &[f32], wd: usize, w: usize, dt: &mut [f32]) {
    let nt = tl.nt;
    assert!(g.len() >= 2 * tl.rows * w * wd, "g holds the block's rows");
    assert!(dt.len() >= XI * nt * wd, "D holds 16 x nt rows");
    let gp = g.as_ptr();
    let dp = dt.as_mut_ptr();
    debug_assert!(
        tl.slots(),
        "the weight gradient's rows of tiles are whole vectors"
    );
    for t in 0..nt {
        let (r, tx) = (t / tl.tw, t % tl.tw);
        let p00 = 2 * r * w + 2 * tx;
        // Where V has tile t.
        let t_slot = slot(t);
        for o in (0..wd).step_by(8) {
            let at = |p: usize| _mm256_loadu_ps(gp.add(p * wd + o));
            let (a, b, c, d) = (at(p00), at(p00 + 1), at(p00 + w), at(p00 + w + 1));
            // Down: rows A (a, b; c, d); then along each.
            let zero = _mm256_setzero_ps();
            let h = [
                (a, b),
                (_mm256_add_ps(a, c), _mm256_add_ps(b, d)),
                (_mm256_sub_ps(a, c), _mm256_sub_ps(b, d)),
                (_mm256_sub_ps(zero, c), _mm256_sub_ps(zero, d)),
            ];
            for (i, (u, v)) in h.into_iter().enumerate() {
                let vals = [
                    u,
                    _mm256_add_ps(u, v),
                    _mm256_sub_ps(u, v),
                    _mm256_sub_ps(zero, v),
                ];
                for (j, val) in vals.into_iter().enumerate() {
                    _mm256_storeu_ps(dp.add(((4 * i + j) * nt + t_slot) * wd + o), val);
                }
            }
        }
    }
}

/// `U = G g G^T` for every (output, input) channel pair for output tiles
/// of side `m`, laid out `[xi][o][c]`: for one `xi`, the weight matrix of
/// that position's product.
fn transform_weights(weight: &[f32], cout: usize, cin: usize, m: usize) -> Scratch<f32> {
    // Every element is written below.
    let mut s = Scratch::<f32>::stale(positions(m) * cout * cin);
    transform_weights_into(weight, cout, cin, m, &mut s.0);
    s
}

/// [`transform_weights`] into `u` (`(m + 2)^2 * cout * cin` floats).
fn transform_weights_into(weight: &[f32], cout: usize, cin: usize, m: usize, u: &mut [f32]) {
    match m {
        2 => transform_weights_f2(weight, cout, cin, u),
        _ => f4::transform_weights_into(weight, cout, cin, u),
    }
}

/// F(2x2, 3x3)'s `U`, with
/// `G` = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
fn transform_weights_f2(weight: &[f32], cout: usize, cin: usize, u: &mut [f32]) {
    assert_eq!(u.len(), XI * cout * cin, "U holds 16 x cout x cin");
    // The rows of G applied to three values.
    let g = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    for o in 0..cout {
        for c in 0..cin {
            let k = &weight[(o * cin + c) * 9..(o * cin + c + 1) * 9];
            // G g: 4 rows of 3, column by column.
            let cols: [[f32; 4]; 3] = std::array::from_fn(|j| g(k[j], k[3 + j], k[6 + j]));
            for i in 0..4 {
                let row = g(cols[0][i], cols[1][i], cols[2][i]);
                for (j, &v) in row.iter().enumerate() {
                    u[((4 * i + j) * cout + o) * cin + c] = v;
                }
            }
        }
    }
}

/// [`PreparedConv::run`]'s Winograd path: output channels `c0..c0 + cn`
/// of one image for blocks `blocks` of tile rows, into the `cn` planes at
/// `out`.
///
/// # Safety
/// `out` points at `cn` planes of h x w floats, whose rows of these blocks
/// nothing else reads or writes meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn image_blocks(
    d: &Direct,
    t: &Transformed,
    input: Input,
    cin: usize,
    cout: usize,
    c0: usize,
    cn: usize,
    out: *mut f32,
    scratch: &mut Vec<f32>,
    ep: Option<Epilogue>,
    blocks: Range<usize>,
) {
    let tl = t.tiling;
    assert!(blocks.end * tl.rows <= tl.th, "blocks of the image");
    assert!(c0 + cn <= cout, "output channels within the convolution");
    if let Some(e) = &ep {
        assert!(
            e.scale.len() >= cn && e.shift.len() >= cn,
            "epilogue covers the output channels"
        );
    }
    // V is [xi][c][t] (see `VLayout::XiRows`) and M [o][xi][t]: the
    // output transform reads each channel's 16 (36) products of a block as
    // one run. The product of position xi writes every 16th (36th) run of M, from
    // xi's; one run of slack after each lets that slice cover whole
    // channels.
    let (xs, xi) = (xi_stride(cin, tl.nt), tl.positions());
    let (v_len, m_len) = (xi * xs, xi * (cn + 1) * tl.nt);
    let r_len = tl.rows_len();
    scratch.resize(winograd_scratch_len(cin, cn, &tl), 0.0);
    let (v, rest) = scratch.split_at_mut(v_len);
    let (m, rest) = rest.split_at_mut(m_len);
    let (rows, strip) = rest.split_at_mut(r_len);
    // What the last vector of tiles reads past the padded row is zero.
    rows.fill(0.0);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the Winograd path is only prepared on x86-64 with AVX2 and FMA");
    #[cfg(target_arch = "x86_64")]
    for ty0 in blocks.map(|b| b * tl.rows) {
        // SAFETY: AVX2 and FMA are present (`PreparedConv::new` checked);
        // the buffers were sized above for this tiling.
        let layout = VLayout::XiRows;
        unsafe { transform_block(d, &tl, input, cin, ty0, v, rows, strip, layout) };
        for x in 0..xi {
            let u = &t.u.as_slice()[(x * cout + c0) * cin..(x * cout + c0 + cn) * cin];
            let vx = &v[x * xs..];
            let mx = &mut m[x * tl.nt..];
            direct::forward_ep(&t.product, vx, cin, u, cn, mx, None);
        }
        // SAFETY: as above; stores stay in planes < cn, in this block's
        // rows (the caller's).
        unsafe {
            match tl.m {
                2 => transform_output(d, &tl, m, cn, ty0, out, ep),
                _ => f4::transform_output(d, &tl, m, cn, ty0, out, ep),
            }
        };
    }
}

/// What [`transform_input`] reads: channel planes `plane` floats apart in
/// `x`, each with padded rows of `wp` floats, the block's first padded row
/// at row `row0`.
#[derive(Clone, Copy)]
struct PaddedRows<'a> {
    x: &'a [f32],
    plane: usize,
    wp: usize,
    row0: usize,
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
/// (and ReLU's) effect on channel `c`, as [`crate::kernels::Pre`] applies it.
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
    fn row(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        let (s, t) = (self.scale[c], self.shift[c]);
        if self.relu {
            for (d, &v) in dst.iter_mut().zip(src) {
                let y = s * v + t;
                *d = if y > 0.0 { y } else { 0.0 };
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = s * v + t;
            }
        }
    }
}

/// Channels per strip of [`Input::Planes`]: their rows stay in L1 between
/// the strip's fill and its transform.
const STRIP_CHANNELS: usize = 8;

/// Floats of [`Input::Planes`]' strip: [`STRIP_CHANNELS`] planes of the
/// block's padded rows (`2 tw + 2` wide, the padded width).
fn strip_len(tl: &Tiling) -> usize {
    // F(4x4, 3x3)'s last vector reads 2 floats past the last row.
    STRIP_CHANNELS * strip_rows(tl) * (tl.m * tl.tw + 2) + 8
}

/// Padded rows under a block of tiles: `m rows + 2`.
fn strip_rows(tl: &Tiling) -> usize {
    tl.m * tl.rows + 2
}

/// `V` of the block at tile row `ty0` from `input` (see [`transform_input`]),
/// through `strip` for [`Input::Planes`].
///
/// # Safety
/// AVX2 and FMA present; `v`, `rows` and `strip` sized for `tl` and `cin`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_block(
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
            transform_rows(src, tl, 0..cin, cin, v, rows, layout)
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
                fill_strip(d, tl, planes, pre, cs.clone(), ty0, sp, strip);
                let src = PaddedRows {
                    // With the slack after the last channel's rows.
                    x: &strip[..(cs.len() * sp + 8).min(strip.len())],
                    plane: sp,
                    wp: d.wp,
                    row0: 0,
                };
                transform_rows(src, tl, cs, cin, v, rows, layout)
            }
        }
    }
}

/// The input transform of `tl`'s tile size.
///
/// # Safety
/// AVX2 and FMA present; `v` and `rows` sized for `tl` and `cin`.
#[cfg(target_arch = "x86_64")]
unsafe fn transform_rows(
    src: PaddedRows,
    tl: &Tiling,
    channels: Range<usize>,
    cin: usize,
    v: &mut [f32],
    rows: &mut [f32],
    layout: VLayout,
) {
    match tl.m {
        2 => transform_input(src, tl, channels, cin, v, rows, layout),
        _ => f4::transform_input(src, tl, channels, cin, v, rows, layout),
    }
}

/// Padded rows `m ty0 .. m (ty0 + rows) + 2` (image rows one less) of
/// channels `cs` into `strip`, `sp` floats per channel, through `pre`.
///
/// # Safety
/// AVX2 and FMA present (the row loops are compiled for them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_strip(
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
                _mm_prefetch::<_MM_HINT_T0>(q.add(line) as *const i8);
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

/// Where [`transform_input`] puts `V[xi][c][t]`: for each `xi`, one
/// matrix of the block's `cin` channels by its tiles, [`xi_stride`] floats
/// after the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VLayout {
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
fn xi_stride(cin: usize, nt: usize) -> usize {
    cin * nt + 16
}

/// Slot of tile `t` of a block in `V` and `M` (and the weight gradient's
/// `D`) where the block's tile rows are whole vectors of 8 tiles
/// ([`Tiling::slots`]): within each group of 8, tiles 0 1 4 5 2 3 6 7, the
/// order in which an in-lane shuffle leaves them (see [`even_slots`]), so
/// that neither transform moves values across the vector's halves. The
/// permutation is its own inverse.
#[inline(always)]
fn slot(t: usize) -> usize {
    const SIGMA: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];
    (t & !7) | SIGMA[t & 7]
}

/// The 8 even-indexed values of `a` then `b` (16 consecutive floats) in
/// slot order (see [`slot`]): `a0 a2 b0 b2 a4 a6 b4 b6`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn even_slots(a: __m256, b: __m256) -> __m256 {
    _mm256_shuffle_ps::<0b10_00_10_00>(a, b)
}

/// The 8 odd-indexed values of `a` then `b` in slot order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn odd_slots(a: __m256, b: __m256) -> __m256 {
    _mm256_shuffle_ps::<0b11_01_11_01>(a, b)
}

/// The 8 even-indexed values of `a` then `b` (16 consecutive floats).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn even(a: __m256, b: __m256) -> __m256 {
    let s = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(s)))
}

/// The 8 odd-indexed values of `a` then `b` (16 consecutive floats).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn odd(a: __m256, b: __m256) -> __m256 {
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
unsafe fn transform_input(
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
unsafe fn row_transform(a: __m256, b: __m256, a2: __m256, b2: __m256) -> [__m256; 4] {
    let (e, o, e2, o2) = (even(a, b), odd(a, b), even(a2, b2), odd(a2, b2));
    row_combine(e, o, e2, o2)
}

/// [`row_transform`] with the 8 tiles in slot order (see [`slot`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_transform_slots(a: __m256, b: __m256, a2: __m256, b2: __m256) -> [__m256; 4] {
    let (e, o) = (even_slots(a, b), odd_slots(a, b));
    let (e2, o2) = (even_slots(a2, b2), odd_slots(a2, b2));
    row_combine(e, o, e2, o2)
}

/// `B^T r` from each tile's columns 0 and 1 (`e`, `o`) and 2 and 3 (`e2`,
/// `o2`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_combine(e: __m256, o: __m256, e2: __m256, o2: __m256) -> [__m256; 4] {
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
unsafe fn transform_output(
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
unsafe fn prefetch_lines(p: *mut f32, rows: Range<usize>, w: usize) {
    for y in rows {
        let row = p.add(y * w);
        for x in (0..w).step_by(16) {
            _mm_prefetch::<_MM_HINT_ET0>(row.add(x) as *const i8);
        }
    }
}

/// An output channel's epilogue as vectors (the identity without one).
#[cfg(target_arch = "x86_64")]
struct Finish {
    scale: __m256,
    shift: __m256,
    relu: bool,
}

#[cfg(target_arch = "x86_64")]
impl Finish {
    /// Channel `o`'s of `ep`.
    #[inline(always)]
    unsafe fn of(ep: &Option<Epilogue>, o: usize) -> Finish {
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
    unsafe fn apply(&self, y: __m256) -> __m256 {
        let y = _mm256_fmadd_ps(y, self.scale, self.shift);
        if self.relu {
            _mm256_max_ps(y, _mm256_setzero_ps())
        } else {
            y
        }
    }
}

/// `a0 b0 a1 b1 a2 b2 a3 b3` and `a4 b4 .. a7 b7`: the two columns of 8
/// tiles' output rows side by side again.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn interleave(a: __m256, b: __m256) -> (__m256, __m256) {
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
unsafe fn interleave_slots(a: __m256, b: __m256) -> (__m256, __m256) {
    (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::direct::tests::{padded, values};

    /// A 3x3 pad-1 convolution from its definition, in f64, NCHW.
    fn reference(x: &[f32], cin: usize, h: usize, w: usize, wt: &[f32], cout: usize) -> Vec<f64> {
        crate::direct::tests::reference(x, cin, h, w, wt, cout, 3, 1).0
    }

    #[test]
    fn tilings() {
        let t = |h, w| Tiling::f2(&Direct::new(h, w, 3, 1)).map(|t| (t.rows, t.nt));
        assert_eq!(t(32, 32), Some((2, 32)));
        assert_eq!(t(16, 16), Some((4, 32)));
        assert_eq!(t(8, 32), Some((2, 32)));
        assert_eq!(t(24, 24), Some((4, 48)));
        assert_eq!(t(64, 48), Some((2, 48)));
        // Too few tiles for a block (8 x 8 has 16).
        assert_eq!(t(8, 8), None);
        // Odd sizes, rows of tiles not a multiple of 4, too few tile rows.
        assert_eq!(t(7, 8), None);
        assert_eq!(t(28, 28), None);
        assert_eq!(t(4, 8), None);
        assert_eq!(t(6, 8), None);
        // Not 3x3 pad 1, or the pointwise layout.
        assert_eq!(Tiling::f2(&Direct::new(32, 32, 3, 0)), None);
        assert_eq!(Tiling::f2(&Direct::new(32, 32, 5, 2)), None);
        assert_eq!(Tiling::f2(&Direct::pointwise(32, 32, 4)), None);
        // 4x4 tiles: (tile rows, tiles) per block.
        let t = |h, w| Tiling::f4(&Direct::new(h, w, 3, 1)).map(|t| (t.rows, t.nt));
        assert_eq!(t(32, 32), Some((2, 16)));
        assert_eq!(t(16, 16), Some((4, 16)));
        assert_eq!(t(8, 32), Some((2, 16)));
        assert_eq!(t(64, 48), Some((2, 24)));
        assert_eq!(t(16, 64), Some((1, 16)));
        // Tile rows not whole halves of vectors, too few tiles, odd sizes.
        assert_eq!(t(24, 24), None);
        assert_eq!(t(8, 16), None);
        assert_eq!(t(4, 32), None);
        assert_eq!(t(30, 32), None);
        // Forward convolutions take them where allowed.
        let d = Direct::new(16, 16, 3, 1);
        assert_eq!(Tiling::forward(&d, true, 1).map(|t| t.m), Some(4));
        assert_eq!(Tiling::forward(&d, false, 1).map(|t| t.m), Some(2));
        // Split over threads: 4x4 tiles where each thread gets a block.
        assert_eq!(Tiling::forward(&d, true, 2).map(|t| t.m), Some(2));
        let d32 = Direct::new(32, 32, 3, 1);
        assert_eq!(Tiling::forward(&d32, true, 2).map(|t| t.m), Some(4));
        let d = Direct::new(24, 24, 3, 1);
        assert_eq!(Tiling::forward(&d, true, 1).map(|t| t.m), Some(2));
    }

    #[test]
    fn winograd_matches_the_definition() {
        if !cpu_supported() || !enabled() {
            return;
        }
        // (cin, cout, h, w, tile side with large tiles allowed): each
        // tiling above, channel counts that leave partial tiles of the
        // products.
        for (cin, cout, h, w, m) in [
            (96, 24, 32, 32, 4),
            (24, 96, 32, 32, 4),
            (17, 16, 32, 64, 4),
            (24, 96, 16, 16, 4),
            (17, 16, 16, 16, 4),
            (16, 19, 24, 24, 2),
            (21, 16, 8, 32, 4),
            (40, 20, 64, 48, 4),
        ] {
            for large in [false, true] {
                let m = if large { m } else { 2 };
                matches_the_definition(cin, cout, h, w, large, m);
            }
        }
    }

    /// One case of [`winograd_matches_the_definition`], through tiles of
    /// side `m`.
    fn matches_the_definition(cin: usize, cout: usize, h: usize, w: usize, large: bool, m: usize) {
        {
            let d = Direct::new(h, w, 3, 1);
            let x = values(cin * h * w, 0.3);
            let wt = values(cout * cin * 9, 1.7);
            let want = reference(&x, cin, h, w, &wt, cout);
            // Per output, the sum of its terms' magnitudes: the scale of
            // the rounding of any f32 sum of them.
            let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
            let mass = reference(&abs(&x), cin, h, w, &abs(&wt), cout);
            let xp = padded(&d, &x, cin);
            let conv = PreparedConv::with_tiles(&d, &wt, cin, cout, 64, large);
            let tiles = conv.winograd.as_ref().map(|t| t.tiling.m);
            assert_eq!(tiles, Some(m), "{:?} takes {m}x{m} tiles", (h, w, large));
            // Measured worst error / mass over these cases: 1.9e-7 (2x2),
            // 1.4e-6 (4x4, whose coefficients run to 8 and 1/24).
            let tol = if m == 2 { 1e-6 } else { 5e-6 };
            let scale: Vec<f32> = (0..cout).map(|o| 0.5 + o as f32 * 0.1).collect();
            let shift: Vec<f32> = (0..cout).map(|o| o as f32 * 0.2 - 1.0).collect();
            let mut scratch = vec![f32::NAN; 3];
            // All channels, no epilogue; then channels 1.. (or all of a
            // single one) with an epilogue and ReLU, into a stale buffer.
            let mut out = vec![f32::NAN; cout * h * w];
            conv.run(Input::Padded(&xp), 0, cout, &mut out, &mut scratch, None);
            // The image's blocks split over the threads: the same numbers.
            let mut split = vec![f32::NAN; cout * h * w];
            conv.run_split(Input::Padded(&xp), &mut split, None);
            assert_eq!(
                bits(&split),
                bits(&out),
                "{:?} split by blocks",
                (cin, cout, h, w)
            );
            // From the planes as they are, a strip at a time: the same
            // numbers to the bit; through a BN-ReLU, those of the padded
            // transformed planes.
            let planes: Vec<&[f32]> = x.chunks_exact(h * w).collect();
            let mut from_planes = vec![f32::NAN; cout * h * w];
            let input = Input::Planes {
                planes: &planes,
                pre: None,
            };
            conv.run(input, 0, cout, &mut from_planes, &mut scratch, None);
            assert_eq!(
                bits(&from_planes),
                bits(&out),
                "{:?} from planes",
                (cin, cout, h, w)
            );
            let (a_scale, a_shift) = affine_values(cin);
            let pre = Affine {
                scale: &a_scale,
                shift: &a_shift,
                relu: true,
            };
            let xt = apply(&pre, &x, h * w);
            let mut want_t = vec![f32::NAN; cout * h * w];
            let xtp = padded(&d, &xt, cin);
            conv.run(
                Input::Padded(&xtp),
                0,
                cout,
                &mut want_t,
                &mut scratch,
                None,
            );
            let input = Input::Planes {
                planes: &planes,
                pre: Some(pre),
            };
            conv.run(input, 0, cout, &mut from_planes, &mut scratch, None);
            assert_eq!(
                bits(&from_planes),
                bits(&want_t),
                "{:?} from planes through a BN-ReLU",
                (cin, cout, h, w)
            );
            let c0 = if cout > 1 { 1 } else { 0 };
            let cn = cout - c0;
            let mut part = vec![f32::NAN; cn * h * w];
            let ep = Epilogue {
                scale: &scale[c0..],
                shift: &shift[c0..],
                relu: true,
            };
            conv.run(
                Input::Padded(&xp),
                c0,
                cn,
                &mut part,
                &mut scratch,
                Some(ep),
            );
            let mut worst = 0.0f64;
            for (i, (&g, &r)) in out.iter().zip(&want).enumerate() {
                let err = (g as f64 - r).abs() / mass[i];
                worst = worst.max(err);
                assert!(
                    err <= tol,
                    "{:?} element {i}: {g} vs {r} (terms' magnitudes {})",
                    (cin, cout, h, w, m),
                    mass[i]
                );
            }
            eprintln!(
                "{:?}: worst error / terms' magnitudes {worst:.2e}",
                (cin, cout, h, w, m)
            );
            for (i, &g) in part.iter().enumerate() {
                let o = c0 + i / (h * w);
                let r = (want[c0 * h * w + i] * scale[o] as f64 + shift[o] as f64).max(0.0);
                let bound = tol * mass[c0 * h * w + i] * scale[o] as f64 + 1e-6 * r.abs();
                assert!(
                    (g as f64 - r).abs() <= bound,
                    "{:?} channels {c0}.. with the epilogue, element {i}: {g} vs {r}",
                    (cin, cout, h, w, m)
                );
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A BN-ReLU's scale and shift for `cin` channels, some of each sign.
    fn affine_values(cin: usize) -> (Vec<f32>, Vec<f32>) {
        (
            (0..cin).map(|c| 0.8 + 0.05 * (c % 7) as f32).collect(),
            (0..cin).map(|c| 0.1 * (c % 3) as f32 - 0.1).collect(),
        )
    }

    /// `pre` applied to each plane of `x` (`hw` floats each).
    fn apply(pre: &Affine, x: &[f32], hw: usize) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        for (c, (s, d)) in x.chunks_exact(hw).zip(out.chunks_exact_mut(hw)).enumerate() {
            pre.row(c, s, d);
        }
        out
    }

    #[test]
    fn weight_gradient_matches_the_definition() {
        if !cpu_supported() || !enabled() {
            return;
        }
        // (cin, cout, h, w): channel counts that are and are not whole
        // vectors or tiles of the products; two images summed; through
        // 2x2 tiles, then 4x4 (where rows have 4 tiles too).
        let cases = [(96, 24, 32, 32), (17, 16, 16, 16), (16, 19, 8, 32)];
        for ((cin, cout, h, w), large) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let d = Direct::new(h, w, 3, 1);
            let wg =
                WeightGrad::with_tiles(&d, cin, cout, 64, large).expect("takes the Winograd path");
            assert_eq!(wg.tiling.m, if large { 4 } else { 2 });
            // Measured worst error / mass: 2.0e-6 (2x2), 4.6e-6 (4x4).
            let tol = if large { 2e-5 } else { 1e-5 };
            let mut acc = vec![0.0; wg.acc_len()];
            // The same sums from the images' planes through a BN-ReLU, and
            // from their padded transformed planes: equal to the bit.
            let (mut acc_planes, mut acc_padded) = (acc.clone(), acc.clone());
            let (a_scale, a_shift) = affine_values(cin);
            let pre = Affine {
                scale: &a_scale,
                shift: &a_shift,
                relu: true,
            };
            let mut scratch = vec![f32::NAN; 5];
            let mut want = vec![1.0f64; cout * cin * 9];
            // Per weight, the sum of the terms' magnitudes: the scale of
            // the rounding of any f32 sum of them.
            let mut mass = vec![0.0f64; cout * cin * 9];
            for img in 0..2 {
                let x = values(cin * h * w, 0.3 + img as f32);
                let dy = values(cout * h * w, 2.1 + img as f32);
                let xp = padded(&d, &x, cin);
                wg.image(&d, Input::Padded(&xp), &dy, &mut acc, &mut scratch);
                let planes: Vec<&[f32]> = x.chunks_exact(h * w).collect();
                let input = Input::Planes {
                    planes: &planes,
                    pre: Some(pre),
                };
                wg.image(&d, input, &dy, &mut acc_planes, &mut scratch);
                let xtp = padded(&d, &apply(&pre, &x, h * w), cin);
                wg.image(&d, Input::Padded(&xtp), &dy, &mut acc_padded, &mut scratch);
                for o in 0..cout {
                    for c in 0..cin {
                        for t in 0..9 {
                            let (ky, kx) = (t / 3, t % 3);
                            let (mut s, mut m) = (0.0, 0.0);
                            for y in 0..h {
                                for xo in 0..w {
                                    let (iy, ix) = ((y + ky) as isize - 1, (xo + kx) as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let p = dy[(o * h + y) * w + xo] as f64
                                        * x[(c * h + iy as usize) * w + ix as usize] as f64;
                                    s += p;
                                    m += p.abs();
                                }
                            }
                            want[(o * cin + c) * 9 + t] += s;
                            mass[(o * cin + c) * 9 + t] += m;
                        }
                    }
                }
            }
            assert_eq!(
                bits(&acc_planes),
                bits(&acc_padded),
                "{:?} from planes through a BN-ReLU",
                (cin, cout, h, w)
            );
            let mut dw = vec![1.0f32; cout * cin * 9];
            wg.fold(&mut acc, &mut dw);
            assert!(acc.iter().all(|&a| a == 0.0), "fold zeroes the accumulator");
            let mut worst = 0.0f64;
            for (i, (&g, &r)) in dw.iter().zip(&want).enumerate() {
                let rel = (g as f64 - r).abs() / (1.0 + mass[i]);
                worst = worst.max(rel);
                assert!(
                    rel <= tol,
                    "{:?} element {i}: {g} vs {r} (terms' magnitudes {})",
                    (cin, cout, h, w),
                    mass[i]
                );
            }
            eprintln!(
                "{:?}: worst error / terms' magnitudes {worst:.2e}",
                (cin, cout, h, w, wg.tiling.m)
            );
        }
    }

    #[test]
    fn the_cache_serves_a_transform_only_for_the_same_weights() {
        let (cout, cin) = (4, 3);
        let mut wt = values(cout * cin * 9, 0.7);
        let a = cached_transform(&wt, cout, cin, 2);
        assert_eq!(a.as_slice(), &transform_weights(&wt, cout, cin, 2).0[..]);
        // The same values again (from another buffer too): the same entry.
        assert!(Arc::ptr_eq(&a, &cached_transform(&wt, cout, cin, 2)));
        assert!(Arc::ptr_eq(
            &a,
            &cached_transform(&wt.clone(), cout, cin, 2)
        ));
        // Weights changed in place (as an optimiser step does): recomputed.
        wt[5] += 1.0;
        let b = cached_transform(&wt, cout, cin, 2);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.as_slice(), &transform_weights(&wt, cout, cin, 2).0[..]);
        // The same weights for 4x4 tiles: another transform.
        let f4 = cached_transform(&wt, cout, cin, 4);
        assert_eq!(f4.as_slice(), &transform_weights(&wt, cout, cin, 4).0[..]);
        assert_eq!(f4.len(), 36 * cout * cin);
        // The same values as another shape: not served either.
        let c = cached_transform(&wt, cin, cout, 2);
        assert_eq!(c.as_slice(), &transform_weights(&wt, cin, cout, 2).0[..]);
    }

    #[test]
    fn within_a_pass_the_cache_trusts_the_buffer_it_compared() {
        let (cout, cin) = (4, 3);
        let mut wt = values(cout * cin * 9, 0.9);
        let entry = |wt: &[f32], pass: u64| CachedTransform {
            weight: wt.to_vec(),
            cout,
            m: 2,
            u: Arc::new(Vec::new()),
            seen_at: wt.as_ptr() as usize,
            seen_in: pass,
        };
        let e = entry(&wt, 7);
        assert!(e.serves(&wt, cout, 2, 7) && e.serves(&wt, cout, 2, 8));
        assert!(!e.serves(&wt, cin, 2, 7), "another shape");
        // Changed where the sample looks (the first element): caught in
        // the pass too. Elsewhere: caught outside the pass that compared
        // the buffer in full, or by another buffer.
        wt[0] += 1.0;
        assert!(!e.serves(&wt, cout, 2, 7));
        wt[0] -= 1.0;
        wt[5] += 1.0;
        assert!(!e.serves(&wt, cout, 2, 8) && !e.serves(&wt, cout, 2, 0));
        assert!(!e.serves(&wt.clone(), cout, 2, 7));
        // A buffer at another address, equal in value: compared in full.
        let other = entry(&values(cout * cin * 9, 0.9), 7);
        assert!(other.serves(&values(cout * cin * 9, 0.9), cout, 2, 7));
    }

    #[test]
    fn other_geometries_take_the_direct_kernel() {
        let d = Direct::new(28, 28, 3, 1);
        let wt = values(16 * 16 * 9, 0.1);
        assert!(!PreparedConv::new(&d, &wt, 16, 16, 64).is_winograd());
        let d = Direct::new(32, 32, 3, 1);
        // Fewer images than threads: split by output channels, direct.
        if crate::threads::available() > 1 {
            assert!(!PreparedConv::new(&d, &wt, 16, 16, 1).is_winograd());
        }
        assert!(PreparedConv::new(&d, &wt, 16, 16, 4).is_winograd() || !enabled());
        // Too few input or output channels for the transforms to pay.
        let wt = values(12 * 48 * 9, 0.1);
        assert!(!PreparedConv::new(&d, &wt, 48, 12, 64).is_winograd());
        assert!(!PreparedConv::new(&d, &wt, 12, 48, 64).is_winograd());
        assert!(WeightGrad::new(&d, 48, 12, 64).is_none());
        assert!(WeightGrad::new(&d, 48, 16, 64).is_some() || !enabled());
    }
}
