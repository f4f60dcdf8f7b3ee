//! AArch64 Advanced SIMD (NEON): 4-lane vectors, and 8-lane ones as pairs
//! (each half of an AVX vector is one NEON register, so the per-half
//! shuffles are NEON's `uzp`, `zip` and 64-bit `zip` on each).

use super::{F32s, F32x8, Kernel, Simd};
use std::arch::aarch64::*;

impl F32s for float32x4_t {
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        vdupq_n_f32(0.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        vdupq_n_f32(v)
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        vld1q_dup_f32(p)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        vld1q_f32(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        vaddq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        vsubq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        vmulq_f32(self, b)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // vfmaq_f32(c, a, b) = c + a * b, fused.
        vfmaq_f32(c, self, b)
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        // vfmsq_f32(c, a, b) = c - a * b, fused.
        vfmsq_f32(c, self, b)
    }
    #[inline(always)]
    unsafe fn relu_keep_nan(self) -> Self {
        // `<=` is false for NaN, so that lane keeps its value.
        let not_positive = vcleq_f32(self, vdupq_n_f32(0.0));
        vbslq_f32(not_positive, vdupq_n_f32(0.0), self)
    }
}

/// Eight lanes as two NEON registers: `.0` the low half.
#[derive(Clone, Copy)]
pub(crate) struct F32x4x2(float32x4_t, float32x4_t);

impl F32x4x2 {
    #[inline(always)]
    unsafe fn each(self, b: Self, f: impl Fn(float32x4_t, float32x4_t) -> float32x4_t) -> Self {
        F32x4x2(f(self.0, b.0), f(self.1, b.1))
    }
}

impl F32s for F32x4x2 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        F32x4x2(vdupq_n_f32(0.0), vdupq_n_f32(0.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        F32x4x2(vdupq_n_f32(v), vdupq_n_f32(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F32x4x2(vld1q_f32(p), vld1q_f32(p.add(4)))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self.0);
        vst1q_f32(p.add(4), self.1);
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        self.each(b, |x, y| vaddq_f32(x, y))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        self.each(b, |x, y| vsubq_f32(x, y))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        self.each(b, |x, y| vmulq_f32(x, y))
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        F32x4x2(vfmaq_f32(c.0, self.0, b.0), vfmaq_f32(c.1, self.1, b.1))
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        F32x4x2(vfmsq_f32(c.0, self.0, b.0), vfmsq_f32(c.1, self.1, b.1))
    }
    #[inline(always)]
    unsafe fn relu_keep_nan(self) -> Self {
        F32x4x2(self.0.relu_keep_nan(), self.1.relu_keep_nan())
    }
}

#[inline(always)]
unsafe fn zip1_pairs(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    vreinterpretq_f32_f64(vzip1q_f64(
        vreinterpretq_f64_f32(a),
        vreinterpretq_f64_f32(b),
    ))
}

#[inline(always)]
unsafe fn zip2_pairs(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    vreinterpretq_f32_f64(vzip2q_f64(
        vreinterpretq_f64_f32(a),
        vreinterpretq_f64_f32(b),
    ))
}

impl F32x8 for F32x4x2 {
    #[inline(always)]
    unsafe fn even_slots(a: Self, b: Self) -> Self {
        a.each(b, |x, y| vuzp1q_f32(x, y))
    }
    #[inline(always)]
    unsafe fn odd_slots(a: Self, b: Self) -> Self {
        a.each(b, |x, y| vuzp2q_f32(x, y))
    }
    #[inline(always)]
    unsafe fn even(a: Self, b: Self) -> Self {
        F32x4x2(vuzp1q_f32(a.0, a.1), vuzp1q_f32(b.0, b.1))
    }
    #[inline(always)]
    unsafe fn odd(a: Self, b: Self) -> Self {
        F32x4x2(vuzp2q_f32(a.0, a.1), vuzp2q_f32(b.0, b.1))
    }
    #[inline(always)]
    unsafe fn unpack_lo(a: Self, b: Self) -> Self {
        a.each(b, |x, y| vzip1q_f32(x, y))
    }
    #[inline(always)]
    unsafe fn unpack_hi(a: Self, b: Self) -> Self {
        a.each(b, |x, y| vzip2q_f32(x, y))
    }
    #[inline(always)]
    unsafe fn pairs_lo(a: Self, b: Self) -> Self {
        a.each(b, |x, y| zip1_pairs(x, y))
    }
    #[inline(always)]
    unsafe fn pairs_hi(a: Self, b: Self) -> Self {
        a.each(b, |x, y| zip2_pairs(x, y))
    }
    #[inline(always)]
    unsafe fn halves_lo(a: Self, b: Self) -> Self {
        F32x4x2(a.0, b.0)
    }
    #[inline(always)]
    unsafe fn halves_hi(a: Self, b: Self) -> Self {
        F32x4x2(a.1, b.1)
    }
    #[inline(always)]
    unsafe fn store_lo4(self, p: *mut f32) {
        vst1q_f32(p, self.0)
    }
}

/// AArch64 Advanced SIMD.
#[derive(Clone, Copy)]
pub(crate) struct Neon;

impl Simd for Neon {
    #[inline(always)]
    unsafe fn outlined<K: Kernel>(k: K) -> K::Output {
        outline(k)
    }
    type Wide = float32x4_t;
    type W8 = F32x4x2;
    #[inline(always)]
    unsafe fn prefetch_read(p: *const f32) {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[inline(always)]
    unsafe fn prefetch_write(p: *const f32) {
        std::arch::asm!("prfm pstl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
}

/// `k` compiled for NEON.
///
/// # Safety
/// The CPU has NEON (every AArch64 CPU that runs Linux does).
#[target_feature(enable = "neon")]
pub(super) unsafe fn run<K: Kernel>(k: K) -> K::Output {
    k.run::<Neon>()
}

/// `k` compiled for NEON in a function of its own.
#[target_feature(enable = "neon")]
#[inline(never)]
unsafe fn outline<K: Kernel>(k: K) -> K::Output {
    k.run::<Neon>()
}
