//! Running generic element-wise loops with the CPU's 256-bit vectors.
//!
//! The crate is compiled for baseline x86-64, where the compiler vectorises
//! with 128-bit SSE2 only; the direct kernels enable AVX2 + FMA themselves.
//! Some element-wise loops around them (BatchNorm's backward and its sums)
//! are plain generic Rust over whole planes: each is an
//! `#[inline(always)]` function, called through a small `#[target_feature]`
//! wrapper (a second copy of the loop, compiled with AVX2) where
//! [`has_avx2`] says the CPU has it. Twice the vector width, the same
//! results (the compiler does not contract `a * b + c` into an FMA on its
//! own, so enabling FMA changes no rounding).
//!
//! (A closure run inside one generic `#[target_feature]` function does not
//! do: the compiler keeps the closure out of line, compiled for the
//! baseline.)

/// Whether this CPU has AVX2 and FMA (detected once).
#[inline]
pub(crate) fn has_avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(detect_avx2_fma)
}

fn detect_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// ReLU of eight lanes that keeps a NaN lane NaN and turns -0 into +0, as the
/// scalar `if y <= 0 { 0 } else { y }` does. (`_mm256_max_ps(y, 0)` returns
/// its second operand for a NaN lane: it would hide a NaN weight or input
/// behind finite, plausible logits.)
///
/// # Safety
/// The CPU must have AVX (the callers are `#[target_feature(enable = "avx2")]`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn relu_keep_nan(y: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Ordered, non-signalling `<=`: false for NaN, so its lane is kept.
    let not_positive = _mm256_cmp_ps::<_CMP_LE_OQ>(y, _mm256_setzero_ps());
    _mm256_andnot_ps(not_positive, y)
}
