//! One width-generic source for the CPU kernels, instantiated per
//! instruction set and chosen once per kernel call at run time.
//!
//! The kernels (direct convolution, Winograd transforms and products, the
//! 1x1 weight gradient, the element-wise BatchNorm loops) are written once
//! over the [`Simd`] trait: a set's vector types ([`F32s`]: the set's
//! widest, `Simd::Wide`; [`F32x8`]: one of exactly 8 lanes with the
//! shuffles the Winograd transforms use) and its prefetches. Each kernel is
//! a [`Kernel`], whose `run::<S>` body is `#[inline(always)]` all the way
//! down, so that [`dispatch`] compiles it once inside each set's
//! `#[target_feature]` wrapper:
//!
//! | set ([`Isa`]) | `Wide` | `W8` | compiled with |
//! |---|---|---|---|
//! | `avx2` (x86-64-v3) | `__m256` | `__m256` | `avx2,fma` |
//! | `avx512` (x86-64-v4) | `__m512` | `__m256` (32 registers, EVEX) | `avx512f,avx512vl,avx512bw,avx2,fma` |
//! | `neon` (AArch64) | `float32x4_t` | two `float32x4_t` | `neon` |
//! | `portable4/8/16` | `[f32; N]` | `[f32; 8]` | nothing (FMA where the CPU has it) |
//!
//! Why a trait of our own over `std::arch` rather than `pulp`: the Winograd
//! transforms live on shuffles within 128-bit lanes (`vshufps`, `vunpcklps`,
//! NEON's `uzp`/`zip`), which `pulp::Simd` does not offer, and the register
//! tiles need pointer loads at arbitrary offsets and broadcasts the
//! compiler folds into the FMAs; a trait of 20 operations gives exactly
//! those, with no dependency and no feature gates.
//!
//! Every data layout is the same for all sets (positions in groups of 8,
//! the Winograd tiles 8 at a time): a wider set covers two groups per
//! register where they lie side by side, a narrower one a group in two.
//! So a sum taken in the same order on every set is equal to the bit
//! across them (the forward convolutions, the Winograd transforms, the 1x1
//! weight gradient); only the direct weight gradient of other kernels sums
//! in the set's lanes, within the tests' tolerances.
//!
//! (A closure called inside a `#[target_feature]` function is compiled out
//! of line, for the baseline; hence kernels as trait objects' methods, the
//! pattern `pulp` uses too.)

// The vector operations are thin wrappers around one intrinsic each; their
// safety contract is the set's, stated once on the traits.
#![allow(clippy::missing_safety_doc)]

pub mod isa;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use isa::{active, set_active, Isa, IsaError};

/// A vector of `LANES` f32 values in a register.
///
/// # Safety
/// Every method needs the instruction set of the [`Simd`] the vector
/// belongs to; the pointer methods read or write `LANES` floats there.
pub(crate) trait F32s: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    /// `self * b + c`, rounded once (FMA).
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `c - self * b`, rounded once.
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self;
    /// ReLU that keeps a NaN lane NaN and turns -0 into +0, as the scalar
    /// `if y <= 0 { 0 } else { y }` does (a `max(y, 0)` would hide a NaN
    /// weight or input behind finite, plausible logits).
    unsafe fn relu_keep_nan(self) -> Self;
    /// `v * 1`-free broadcast of `*p`.
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        Self::splat(*p)
    }
}

/// A vector of exactly 8 lanes, seen as two halves of 4 (AVX's 128-bit
/// lanes), with the shuffles the Winograd transforms and transposes use.
/// "Per half" operations act on each half alone, as `vshufps` and
/// `vunpcklps` do.
pub(crate) trait F32x8: F32s {
    /// Per half: `a0 a2 b0 b2 | a4 a6 b4 b6`.
    unsafe fn even_slots(a: Self, b: Self) -> Self;
    /// Per half: `a1 a3 b1 b3 | a5 a7 b5 b7`.
    unsafe fn odd_slots(a: Self, b: Self) -> Self;
    /// `a0 a2 a4 a6 b0 b2 b4 b6`.
    unsafe fn even(a: Self, b: Self) -> Self;
    /// `a1 a3 a5 a7 b1 b3 b5 b7`.
    unsafe fn odd(a: Self, b: Self) -> Self;
    /// Per half: `a0 b0 a1 b1 | a4 b4 a5 b5`.
    unsafe fn unpack_lo(a: Self, b: Self) -> Self;
    /// Per half: `a2 b2 a3 b3 | a6 b6 a7 b7`.
    unsafe fn unpack_hi(a: Self, b: Self) -> Self;
    /// Per half: `a0 a1 b0 b1 | a4 a5 b4 b5`.
    unsafe fn pairs_lo(a: Self, b: Self) -> Self;
    /// Per half: `a2 a3 b2 b3 | a6 a7 b6 b7`.
    unsafe fn pairs_hi(a: Self, b: Self) -> Self;
    /// `a`'s low half then `b`'s.
    unsafe fn halves_lo(a: Self, b: Self) -> Self;
    /// `a`'s high half then `b`'s.
    unsafe fn halves_hi(a: Self, b: Self) -> Self;
    /// Stores the low half (4 floats).
    unsafe fn store_lo4(self, p: *mut f32);
}

/// An instruction set's types and prefetches: a zero-sized token, whose
/// existence inside a [`Kernel::run`] means the set is available.
pub(crate) trait Simd: Copy + 'static {
    /// The set's widest vector.
    type Wide: F32s;
    /// A vector of 8 lanes.
    type W8: F32x8;
    /// Asks for the cache line holding `p`, to be read.
    unsafe fn prefetch_read(p: *const f32);
    /// Asks for the cache line holding `p`, to be written.
    unsafe fn prefetch_write(p: *const f32);
    /// Runs `k` compiled for this set in a function of its own, never
    /// inlined into the caller: a register tile's accumulators then own the
    /// registers (inlined into a kernel's loops, the forward tile ran at
    /// 40-70% of its speed).
    unsafe fn outlined<K: Kernel>(k: K) -> K::Output;
}

/// A kernel written once over [`Simd`]: [`dispatch`] runs it on the active
/// set, compiled for it.
pub(crate) trait Kernel {
    type Output;
    /// The kernel's body for set `S`; implementations are
    /// `#[inline(always)]`, and so is everything they call, so that the
    /// body is compiled inside the set's `#[target_feature]` wrapper.
    ///
    /// # Safety
    /// The CPU has set `S`.
    unsafe fn run<S: Simd>(self) -> Self::Output;
}

/// Runs `k` on the active instruction set ([`active`]).
#[inline]
pub(crate) fn dispatch<K: Kernel>(k: K) -> K::Output {
    run_on(active(), k)
}

/// Runs `k` on `isa`, which the CPU must have (checked). `Scalar` runs the
/// generic body without intrinsics (the element-wise loops compiled for the
/// baseline target; the convolution kernels are never called there).
pub(crate) fn run_on<K: Kernel>(isa: Isa, k: K) -> K::Output {
    assert!(
        isa.available(),
        "instruction set {isa} is not available here"
    );
    // SAFETY: the CPU has `isa` (checked above); each arm's token or
    // wrapper belongs to it.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::run_v3(k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::run_v4(k),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::run(k),
            Isa::Portable4 => portable::run::<K, 4>(k),
            Isa::Portable16 => portable::run::<K, 16>(k),
            Isa::Scalar => k.run::<portable::Portable<8>>(),
            // Portable8, and the arms of other architectures (unreachable:
            // not available there).
            _ => portable::run::<K, 8>(k),
        }
    }
}

/// The 4x4 transpose within each half of four 8-lane vectors: value `j` of
/// each half of result `j'` is value `j'` of that half of input `j`.
#[inline(always)]
pub(crate) unsafe fn transpose4_halves<V: F32x8>(a: V, b: V, c: V, d: V) -> [V; 4] {
    let (t0, t1) = (V::unpack_lo(a, b), V::unpack_hi(a, b));
    let (t2, t3) = (V::unpack_lo(c, d), V::unpack_hi(c, d));
    [
        V::pairs_lo(t0, t2),
        V::pairs_hi(t0, t2),
        V::pairs_lo(t1, t3),
        V::pairs_hi(t1, t3),
    ]
}

/// One 8 x 8 block: 8 rows of `src` (`ss` floats apart) into 8 rows of
/// `dst` (`ds` apart), transposed.
#[inline(always)]
pub(crate) unsafe fn transpose8<V: F32x8>(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    let r: [V; 8] = std::array::from_fn(|i| V::load(src.add(i * ss)));
    let [u0, u1, u2, u3] = transpose4_halves(r[0], r[1], r[2], r[3]);
    let [u4, u5, u6, u7] = transpose4_halves(r[4], r[5], r[6], r[7]);
    let out = [
        V::halves_lo(u0, u4),
        V::halves_lo(u1, u5),
        V::halves_lo(u2, u6),
        V::halves_lo(u3, u7),
        V::halves_hi(u0, u4),
        V::halves_hi(u1, u5),
        V::halves_hi(u2, u6),
        V::halves_hi(u3, u7),
    ];
    for (i, v) in out.into_iter().enumerate() {
        v.store(dst.add(i * ds));
    }
}

/// `a0 b0 a1 b1 a2 b2 a3 b3` and `a4 b4 .. a7 b7`: two vectors' lanes side
/// by side.
#[inline(always)]
pub(crate) unsafe fn interleave<V: F32x8>(a: V, b: V) -> (V, V) {
    let (lo, hi) = (V::unpack_lo(a, b), V::unpack_hi(a, b));
    (V::halves_lo(lo, hi), V::halves_hi(lo, hi))
}

/// Runs a loop written in plain generic Rust (`$body`, over the listed
/// variables) compiled for the active instruction set: the compiler
/// vectorises it at the set's width. For element-wise loops whose order of
/// operations is fixed in the source (independent partial sums), so that
/// every set gives the same results to the bit.
macro_rules! vectorized {
    (<$t:ident: $bound:path> ($($name:ident: $ty:ty = $val:expr),* $(,)?) -> $out:ty $body:block) => {{
        struct K<'k, $t> {
            $($name: $ty,)*
            _life: std::marker::PhantomData<&'k $t>,
        }
        impl<'k, $t: $bound> $crate::cpu::simd::Kernel for K<'k, $t> {
            type Output = $out;
            #[inline(always)]
            unsafe fn run<S: $crate::cpu::simd::Simd>(self) -> $out {
                let K { $($name,)* .. } = self;
                $body
            }
        }
        $crate::cpu::simd::dispatch(K { $($name: $val,)* _life: std::marker::PhantomData })
    }};
}
pub(crate) use vectorized;
