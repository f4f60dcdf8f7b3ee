//! The CPU backend: what the code `sparsenet!` generates calls to run a
//! network on the CPU, in `f32` (the fast path: vector kernels for AVX-512,
//! AVX2 + FMA or NEON, whichever the CPU has, see [`Isa`]) or `f64` (the
//! reference the tests compare against).
//!
//! The generated code knows the network; this backend knows none. Each
//! generated statement calls one kernel with the layer's constants, and
//! every kernel reads a layer's concatenated input straight from its sources
//! (the concatenation is never built), applying the folded BatchNorm-ReLU as
//! it reads.
//!
//! ```text
//! cpu/
//!   ctx.rs        the context a pass threads through its layers (stores,
//!                 mode, BatchNorm folding, dropout)
//!   layers/       forward.rs, backward.rs: one kernel per layer kind
//!   conv/         the convolutions behind them: direct.rs (direct
//!                 convolution), winograd/ (F(2x2,3x3), F(4x4,3x3)),
//!                 pointwise_wgrad.rs (1x1 weight gradient), matmul.rs
//!                 (gemm for f64 and strided convolutions)
//!   chain.rs      a unit's convolutions fused for inference
//!   parallel/     threads.rs (inference image by image), team.rs (batch-1
//!                 passes), scratch.rs (per-thread buffer reuse)
//!   simd/         the width-generic core: vector traits, the instruction
//!                 sets (x86.rs, neon.rs, portable.rs), run-time dispatch
//! ```
//!
//! Dependencies point one way: `layers` and `chain` call `conv`, everything
//! calls `parallel`, the kernels run through `simd`. What users may want to
//! switch is public here: the instruction set ([`set_isa`], or
//! `SPARSENET_ISA`), to measure a narrower set and to test every path on one
//! machine. The Winograd switches (`SPARSENET_WINOGRAD`) and the buffer
//! store's size are for the project's measurements and tests (`switches`);
//! they and everything else are reached through the crate's hidden
//! `__private` module.
//! `cargo doc --document-private-items` documents it all for contributors.

// The kernels' docs link between modules that are private here; the links
// resolve in the contributors' documentation (`--document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod bn_hook;
// The kernels are reached by generated code through `crate::__private`;
// hidden here so that they are not documented as API.
#[doc(hidden)]
pub(crate) mod chain;
#[doc(hidden)]
pub(crate) mod conv;
#[doc(hidden)]
pub(crate) mod ctx;
#[doc(hidden)]
pub(crate) mod layers;
#[doc(hidden)]
pub(crate) mod parallel;
#[doc(hidden)]
pub(crate) mod simd;

pub use simd::{Isa, IsaError};

/// Process-wide switches for measurements and tests (Winograd on or off, the
/// buffer store's size); reached through `__private`, not part of the API.
pub(crate) mod switches;

/// The instruction set the CPU kernels run on: the widest this CPU has
/// ([`Isa::best`]), or the one `SPARSENET_ISA` names (`scalar`, `avx2`,
/// `avx512`, `neon`, or `portable4`/`portable8`/`portable16`, the generic
/// kernels over plain arrays), or the last [`set_isa`].
pub fn isa() -> Isa {
    simd::active()
}

/// Runs the CPU kernels on `isa` from the next kernel call on, for the whole
/// process: to measure or test a narrower set than the CPU's widest. Fails
/// when this CPU cannot run it. Results differ between sets by rounding at
/// most (the data layouts are the same for all).
pub fn set_isa(isa: Isa) -> Result<(), IsaError> {
    simd::set_active(isa)
}
