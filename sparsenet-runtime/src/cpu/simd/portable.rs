//! The generic kernels over plain arrays of lanes: no intrinsics, so they
//! run on every CPU. They model the vector instructions exactly (an FMA
//! rounds once, the ReLU keeps NaN, the shuffles move the same lanes), so
//! that `portable8` equals `avx2` to the bit, and `portable4` and
//! `portable16` run the generic core at NEON's and AVX-512's widths and
//! tile shapes on any machine.

use super::{F32s, F32x8, Kernel, Simd};

/// `N` f32 lanes in an array.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct Lanes<const N: usize>(pub(crate) [f32; N]);

impl<const N: usize> Lanes<N> {
    #[inline(always)]
    fn map2(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Lanes(std::array::from_fn(|i| f(self.0[i], b.0[i])))
    }
}

impl<const N: usize> F32s for Lanes<N> {
    const LANES: usize = N;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Lanes([0.0; N])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Lanes([v; N])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Lanes(std::ptr::read_unaligned(p as *const [f32; N]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; N], self.0)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        self.map2(b, |x, y| x + y)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        self.map2(b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        self.map2(b, |x, y| x * y)
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Lanes(std::array::from_fn(|i| self.0[i].mul_add(b.0[i], c.0[i])))
    }
    #[inline(always)]
    unsafe fn neg_mul_add(self, b: Self, c: Self) -> Self {
        Lanes(std::array::from_fn(|i| {
            (-self.0[i]).mul_add(b.0[i], c.0[i])
        }))
    }
    #[inline(always)]
    unsafe fn relu_keep_nan(self) -> Self {
        Lanes(self.0.map(|y| if y <= 0.0 { 0.0 } else { y }))
    }
}

impl F32x8 for Lanes<8> {
    #[inline(always)]
    unsafe fn even_slots(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[0], a[2], b[0], b[2]])
    }
    #[inline(always)]
    unsafe fn odd_slots(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[1], a[3], b[1], b[3]])
    }
    #[inline(always)]
    unsafe fn even(a: Self, b: Self) -> Self {
        Lanes(std::array::from_fn(|i| {
            if i < 4 {
                a.0[2 * i]
            } else {
                b.0[2 * (i - 4)]
            }
        }))
    }
    #[inline(always)]
    unsafe fn odd(a: Self, b: Self) -> Self {
        Lanes(std::array::from_fn(|i| {
            if i < 4 {
                a.0[2 * i + 1]
            } else {
                b.0[2 * (i - 4) + 1]
            }
        }))
    }
    #[inline(always)]
    unsafe fn unpack_lo(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[0], b[0], a[1], b[1]])
    }
    #[inline(always)]
    unsafe fn unpack_hi(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[2], b[2], a[3], b[3]])
    }
    #[inline(always)]
    unsafe fn pairs_lo(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[0], a[1], b[0], b[1]])
    }
    #[inline(always)]
    unsafe fn pairs_hi(a: Self, b: Self) -> Self {
        per_half(a, b, |a, b| [a[2], a[3], b[2], b[3]])
    }
    #[inline(always)]
    unsafe fn halves_lo(a: Self, b: Self) -> Self {
        Lanes(std::array::from_fn(
            |i| if i < 4 { a.0[i] } else { b.0[i - 4] },
        ))
    }
    #[inline(always)]
    unsafe fn halves_hi(a: Self, b: Self) -> Self {
        Lanes(std::array::from_fn(
            |i| if i < 4 { a.0[4 + i] } else { b.0[i] },
        ))
    }
    #[inline(always)]
    unsafe fn store_lo4(self, p: *mut f32) {
        std::ptr::write_unaligned(
            p as *mut [f32; 4],
            [self.0[0], self.0[1], self.0[2], self.0[3]],
        )
    }
}

/// `f` applied to each half (4 lanes) of `a` and `b`.
#[inline(always)]
fn per_half(a: Lanes<8>, b: Lanes<8>, f: impl Fn([f32; 4], [f32; 4]) -> [f32; 4]) -> Lanes<8> {
    let half = |v: Lanes<8>, h: usize| [v.0[4 * h], v.0[4 * h + 1], v.0[4 * h + 2], v.0[4 * h + 3]];
    let (lo, hi) = (f(half(a, 0), half(b, 0)), f(half(a, 1), half(b, 1)));
    Lanes([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]])
}

/// The portable set of `N` lanes (and its tile shapes: those of the
/// hardware set of that width).
#[derive(Clone, Copy)]
pub(crate) struct Portable<const N: usize>;

impl<const N: usize> Simd for Portable<N> {
    type Wide = Lanes<N>;
    type W8 = Lanes<8>;
    #[inline(always)]
    unsafe fn prefetch_read(_: *const f32) {}
    #[inline(always)]
    unsafe fn prefetch_write(_: *const f32) {}
    /// Inlined: these sets check the generic code, their speed is no concern
    /// (and a function of its own would lose the caller's FMA).
    #[inline(always)]
    unsafe fn outlined<K: Kernel>(k: K) -> K::Output {
        k.run::<Self>()
    }
}

/// Runs `k` on `Portable<N>`; on x86-64 with FMA compiled with it, so that
/// the fused multiply-adds are one instruction instead of a call to the C
/// library's `fmaf` (the same rounding either way).
#[inline]
pub(super) unsafe fn run<K: Kernel, const N: usize>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("fma") {
        #[target_feature(enable = "fma")]
        unsafe fn with_fma<K: Kernel, const N: usize>(k: K) -> K::Output {
            k.run::<Portable<N>>()
        }
        return with_fma::<K, N>(k);
    }
    k.run::<Portable<N>>()
}
