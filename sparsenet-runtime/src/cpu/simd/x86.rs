//! x86-64-v3 (AVX2 + FMA) and x86-64-v4 (AVX-512 F/VL/BW): the vector
//! types' operations, one intrinsic each, and the sets' wrappers.

use super::{F32s, F32x8, Kernel, Simd};
use std::arch::x86_64::*;

impl F32s for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        _mm256_broadcast_ss(&*p)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        _mm256_add_ps(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        _mm256_sub_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        _mm256_mul_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        _mm256_fnmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn relu_keep_nan(self) -> Self {
        // Ordered, non-signalling `<=`: false for NaN, so its lane is kept.
        let not_positive = _mm256_cmp_ps::<_CMP_LE_OQ>(self, _mm256_setzero_ps());
        _mm256_andnot_ps(not_positive, self)
    }
}

impl F32x8 for __m256 {
    #[inline(always)]
    unsafe fn even_slots(a: Self, b: Self) -> Self {
        _mm256_shuffle_ps::<0b10_00_10_00>(a, b)
    }
    #[inline(always)]
    unsafe fn odd_slots(a: Self, b: Self) -> Self {
        _mm256_shuffle_ps::<0b11_01_11_01>(a, b)
    }
    #[inline(always)]
    unsafe fn even(a: Self, b: Self) -> Self {
        let s = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(s)))
    }
    #[inline(always)]
    unsafe fn odd(a: Self, b: Self) -> Self {
        let s = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(s)))
    }
    #[inline(always)]
    unsafe fn unpack_lo(a: Self, b: Self) -> Self {
        _mm256_unpacklo_ps(a, b)
    }
    #[inline(always)]
    unsafe fn unpack_hi(a: Self, b: Self) -> Self {
        _mm256_unpackhi_ps(a, b)
    }
    #[inline(always)]
    unsafe fn pairs_lo(a: Self, b: Self) -> Self {
        _mm256_shuffle_ps::<0b01_00_01_00>(a, b)
    }
    #[inline(always)]
    unsafe fn pairs_hi(a: Self, b: Self) -> Self {
        _mm256_shuffle_ps::<0b11_10_11_10>(a, b)
    }
    #[inline(always)]
    unsafe fn halves_lo(a: Self, b: Self) -> Self {
        _mm256_permute2f128_ps::<0x20>(a, b)
    }
    #[inline(always)]
    unsafe fn halves_hi(a: Self, b: Self) -> Self {
        _mm256_permute2f128_ps::<0x31>(a, b)
    }
    #[inline(always)]
    unsafe fn store_lo4(self, p: *mut f32) {
        _mm_storeu_ps(p, _mm256_castps256_ps128(self))
    }
}

impl F32s for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        _mm512_add_ps(self, b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        _mm512_sub_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        _mm512_mul_ps(self, b)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        _mm512_fnmadd_ps(self, b, c)
    }
    #[inline(always)]
    unsafe fn relu_keep_nan(self) -> Self {
        // Lanes `<= 0` (ordered: not NaN) become +0, the others stay.
        let not_positive = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(self, _mm512_setzero_ps());
        _mm512_mask_mov_ps(self, not_positive, _mm512_setzero_ps())
    }
}

/// x86-64-v3: AVX2 and FMA.
#[derive(Clone, Copy)]
pub(crate) struct V3;

/// x86-64-v4: AVX-512 F, VL and BW, with AVX2 and FMA.
#[derive(Clone, Copy)]
pub(crate) struct V4;

impl Simd for V3 {
    #[inline(always)]
    unsafe fn outlined<K: Kernel>(k: K) -> K::Output {
        outline_v3(k)
    }
    type Wide = __m256;
    type W8 = __m256;
    #[inline(always)]
    unsafe fn prefetch_read(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn prefetch_write(p: *const f32) {
        _mm_prefetch::<_MM_HINT_ET0>(p as *const i8)
    }
}

impl Simd for V4 {
    #[inline(always)]
    unsafe fn outlined<K: Kernel>(k: K) -> K::Output {
        outline_v4(k)
    }
    type Wide = __m512;
    type W8 = __m256;
    #[inline(always)]
    unsafe fn prefetch_read(p: *const f32) {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    }
    #[inline(always)]
    unsafe fn prefetch_write(p: *const f32) {
        _mm_prefetch::<_MM_HINT_ET0>(p as *const i8)
    }
}

/// `k` compiled for x86-64-v3.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_v3<K: Kernel>(k: K) -> K::Output {
    k.run::<V3>()
}

/// `k` compiled for x86-64-v4.
///
/// # Safety
/// The CPU has AVX-512 F, VL and BW, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
pub(super) unsafe fn run_v4<K: Kernel>(k: K) -> K::Output {
    k.run::<V4>()
}

/// `k` compiled for V3 in a function of its own.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn outline_v3<K: Kernel>(k: K) -> K::Output {
    k.run::<V3>()
}

/// `k` compiled for V4 in a function of its own.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
#[inline(never)]
unsafe fn outline_v4<K: Kernel>(k: K) -> K::Output {
    k.run::<V4>()
}
