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
