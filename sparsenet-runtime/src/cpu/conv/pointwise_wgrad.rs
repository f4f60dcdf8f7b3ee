//! The weight gradient of a 1x1 convolution (`f32`, AVX2 + FMA) as a small
//! matrix product with the reduction over positions inside registers.
//!
//! Why not [`direct::weight_grad`]: that kernel keeps 8 partial sums per
//! weight (positions in the vector lanes) and reads both operands as
//! vectors, 7 loads per 12 products, and its tiles restart for every block
//! of positions. For a 1x1 layer (few products per loaded value: 96 output
//! channels, 24-156 input channels) it ran at 30-45% of the machine's peak.
//! Here the output gradient is first transposed to positions x channels
//! (`dyt`, one pass over it), so that one position's output channels are
//! one vector: a tile of 6 input channels x 16 output channels keeps its
//! 12 sums in registers over a block of positions and reads, per position,
//! 2 vectors of `dyt` and 6 broadcast inputs, like the forward kernel.
//!
//! The input is in the pointwise layout of [`Direct::pointwise`] (blocks of
//! 16 positions, each channel's 16 values together), as the forward pass
//! and the backward gather write it; its tail block is zero-padded, and the
//! transposed gradient has zero rows for those positions.
//!
//! [`direct::weight_grad`]: crate::cpu::conv::direct::weight_grad
use crate::cpu::conv::direct::{self, Direct};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Input channels per tile (broadcasts) and output channels per tile (two
/// vectors): 12 accumulators, 8 loads per 12 products.
const CT: usize = 6;
const OT: usize = 16;
/// Positions per pointwise block (see [`Direct::pointwise`]).
const BLOCK: usize = 16;
/// Pointwise blocks per position block: the transposed gradient of a
/// block (64 positions x 96 channels, 24 KiB) stays in L1 while every
/// input-channel tile passes.
const PB: usize = 4;

/// Row width of the transposed output gradient and of the accumulator:
/// `cout` rounded up to whole tiles (the extra columns are zero).
pub fn width(cout: usize) -> usize {
    cout.div_ceil(OT) * OT
}

/// Floats of the transposed output gradient of one image.
pub fn dyt_len(d: &Direct, cout: usize) -> usize {
    padded_positions(d) * width(cout)
}

/// Floats of the accumulator: `cin` rounded up to whole tiles, rows of
/// [`width`].
pub fn acc_len(cin: usize, cout: usize) -> usize {
    cin.div_ceil(CT) * CT * width(cout)
}

fn padded_positions(d: &Direct) -> usize {
    (d.h * d.w).div_ceil(BLOCK) * BLOCK
}

/// Writes `dyt[p][o] = dy[o][p]` for one image, from `dyp`: its `cout`
/// output-gradient channels in the pointwise layout of `dt`
/// ([`Direct::pointwise`] over `cout` channels, as the input gradient's
/// forward kernel reads them, so already in cache). `dyt` has [`dyt_len`]
/// floats, rows of [`width`]; columns past `cout` are zero, and so are the
/// rows of the tail block's padding (as `dyp` is there).
pub fn transpose(dt: &Direct, dyp: &[f32], cout: usize, dyt: &mut [f32]) {
    let (wd, np) = (width(cout), padded_positions(dt));
    assert!(dt.k == 1 && cout > 0);
    assert!(
        dyp.len() >= dt.input_len(cout),
        "gradient in the pointwise layout of dt"
    );
    assert!(
        dyt.len() >= np * wd,
        "transposed gradient holds dyt_len floats"
    );
    let o8 = cout / 8 * 8;
    for b in 0..np / BLOCK {
        // Block b: `cout` rows of 16 positions.
        let src = &dyp[b * cout * BLOCK..(b + 1) * cout * BLOCK];
        let dst = &mut dyt[b * BLOCK * wd..(b + 1) * BLOCK * wd];
        #[cfg(target_arch = "x86_64")]
        if direct::cpu_supported() {
            // SAFETY: AVX2 is present; each 8 x 8 block reads rows
            // `o..o + 8 <= cout` at columns `i..i + 8 <= 16` of `src` and
            // writes rows `i..i + 8 <= 16` at columns `o..o + 8 <= wd` of
            // `dst`.
            unsafe {
                for o in (0..o8).step_by(8) {
                    for i in [0, 8] {
                        transpose8(
                            src.as_ptr().add(o * BLOCK + i),
                            BLOCK,
                            dst.as_mut_ptr().add(i * wd + o),
                            wd,
                        );
                    }
                }
            }
        } else {
            scalar(src, 0..o8, dst, wd);
        }
        #[cfg(not(target_arch = "x86_64"))]
        scalar(src, 0..o8, dst, wd);
        scalar(src, o8..cout, dst, wd);
        for row in dst.chunks_exact_mut(wd) {
            row[cout..].fill(0.0);
        }
    }
}

/// `dst[i][o] = src[o][i]` for the rows `os` of one block.
fn scalar(src: &[f32], os: std::ops::Range<usize>, dst: &mut [f32], wd: usize) {
    for o in os {
        for i in 0..BLOCK {
            dst[i * wd + o] = src[o * BLOCK + i];
        }
    }
}

/// One 8 x 8 block: 8 rows of `src` (`ss` floats apart) into 8 rows of
/// `dst` (`ds` apart), transposed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (i, v) in out.into_iter().enumerate() {
        _mm256_storeu_ps(dst.add(i * ds), v);
    }
}

/// `acc[c][o] += sum_p x[c][p] * dyt[p][o]` over one image: `x` is the
/// image's `cin` input channels in the pointwise layout of `d`
/// ([`Direct::pointwise`], `d.input_len(cin)` floats), `dyt` its transposed
/// output gradient ([`transpose`]), `acc` [`acc_len`] floats, rows of
/// [`width`] (rows past `cin` and columns past `cout` collect values that
/// [`fold`] ignores).
pub fn weight_grad(d: &Direct, x: &[f32], cin: usize, dyt: &[f32], cout: usize, acc: &mut [f32]) {
    let (wd, np) = (width(cout), padded_positions(d));
    assert!(d.k == 1, "a 1x1 convolution");
    assert!(
        x.len() >= d.input_len(cin),
        "input holds cin channels in the pointwise layout"
    );
    assert_eq!(d.input_len(cin), np * cin, "the pointwise layout of d");
    assert!(
        dyt.len() >= np * wd,
        "transposed gradient holds dyt_len floats"
    );
    assert!(
        acc.len() >= acc_len(cin, cout),
        "accumulator holds acc_len floats"
    );
    assert!(direct::cpu_supported(), "AVX2 and FMA are available");
    let nblocks = np / BLOCK;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present; input rows are clamped to `cin - 1`
    // and blocks to `nblocks`, so reads stay in `x` (`np * cin` floats);
    // `dyt` rows stay below `np`, columns below `wd`; accumulator tiles lie
    // in `acc_len`.
    unsafe {
        for b0 in (0..nblocks).step_by(PB) {
            let nb = PB.min(nblocks - b0);
            for c0 in (0..cin).step_by(CT) {
                let rows: [*const f32; CT] = std::array::from_fn(|r| {
                    x.as_ptr().add((b0 * cin + (c0 + r).min(cin - 1)) * BLOCK)
                });
                for o0 in (0..wd).step_by(OT) {
                    tile(
                        &rows,
                        cin * BLOCK,
                        nb,
                        dyt.as_ptr().add(b0 * BLOCK * wd + o0),
                        wd,
                        acc.as_mut_ptr().add(c0 * wd + o0),
                    );
                }
            }
        }
    }
}

/// `nb` blocks of 16 positions of one tile: `rows[r]` points at input
/// channel `c0 + r` in the first block (blocks `bs` floats apart), `dyt` at
/// the first position's columns `o0..o0 + 16` (rows `wd` apart), `acc` at
/// the tile's accumulator (rows `wd` apart).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile(
    rows: &[*const f32; CT],
    bs: usize,
    nb: usize,
    dyt: *const f32,
    wd: usize,
    acc: *mut f32,
) {
    let mut a = [[_mm256_setzero_ps(); 2]; CT];
    for (r, ar) in a.iter_mut().enumerate() {
        ar[0] = _mm256_loadu_ps(acc.add(r * wd));
        ar[1] = _mm256_loadu_ps(acc.add(r * wd + 8));
    }
    for b in 0..nb {
        for i in 0..BLOCK {
            let g = dyt.add((b * BLOCK + i) * wd);
            let (g0, g1) = (_mm256_loadu_ps(g), _mm256_loadu_ps(g.add(8)));
            for r in 0..CT {
                let xv = _mm256_broadcast_ss(&*rows[r].add(b * bs + i));
                a[r][0] = _mm256_fmadd_ps(xv, g0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(xv, g1, a[r][1]);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        _mm256_storeu_ps(acc.add(r * wd), ar[0]);
        _mm256_storeu_ps(acc.add(r * wd + 8), ar[1]);
    }
}

/// Adds the accumulator into `dw` (`cout x cin`, OIHW of a 1x1 kernel) and
/// zeroes it.
pub fn fold(acc: &mut [f32], cin: usize, cout: usize, dw: &mut [f32]) {
    let wd = width(cout);
    assert!(acc.len() >= acc_len(cin, cout) && dw.len() >= cout * cin);
    for c in 0..cin {
        for o in 0..cout {
            dw[o * cin + c] += acc[c * wd + o];
        }
    }
    acc[..acc_len(cin, cout)].fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) * 0.07)
            .collect()
    }

    /// Shapes with position counts that are not whole blocks (7x7, 5x3,
    /// 1x1), output widths that are not whole vectors or tiles, and input
    /// counts that are not whole tiles.
    const SHAPES: [(usize, usize, usize, usize); 8] = [
        (24, 96, 32, 32),
        (13, 12, 8, 8),
        (7, 60, 16, 16),
        (6, 5, 7, 7),
        (1, 1, 5, 3),
        (9, 17, 1, 1),
        (20, 33, 4, 12),
        (156, 96, 4, 4),
    ];

    #[test]
    fn transpose_matches_its_definition() {
        if !direct::cpu_supported() {
            return;
        }
        for (_, cout, h, w) in SHAPES {
            let hw = h * w;
            let dt = Direct::pointwise(h, w, cout);
            let dy = values(cout * hw, 1);
            let mut dyp = vec![f32::NAN; dt.input_len(cout)];
            dt.fill_planes(&dy, &mut dyp);
            let mut dyt = vec![f32::NAN; dyt_len(&dt, cout)];
            transpose(&dt, &dyp, cout, &mut dyt);
            let wd = width(cout);
            for (p, row) in dyt.chunks_exact(wd).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    let want = if p < hw && o < cout {
                        dy[o * hw + p]
                    } else {
                        0.0
                    };
                    assert_eq!(v, want, "position {p} channel {o} of {cout} on {h}x{w}");
                }
            }
        }
    }

    /// The weight gradient over two images against the f64 sum from its
    /// definition, starting from stale contents in `acc` that `fold` must
    /// then clear.
    #[test]
    fn weight_gradient_matches_the_definition() {
        if !direct::cpu_supported() {
            return;
        }
        for (cin, cout, h, w) in SHAPES {
            let hw = h * w;
            let d = Direct::pointwise(h, w, cin);
            let dt = Direct::pointwise(h, w, cout);
            let mut acc = vec![0.0f32; acc_len(cin, cout)];
            let mut want = vec![0.0f64; cout * cin];
            for img in 0..2 {
                let x = values(cin * hw, 3 + img);
                let dy = values(cout * hw, 5 + img);
                for o in 0..cout {
                    for c in 0..cin {
                        want[o * cin + c] += (0..hw)
                            .map(|p| dy[o * hw + p] as f64 * x[c * hw + p] as f64)
                            .sum::<f64>();
                    }
                }
                let mut xp = vec![f32::NAN; d.input_len(cin)];
                d.fill_planes(&x, &mut xp);
                let mut dyp = vec![f32::NAN; dt.input_len(cout)];
                dt.fill_planes(&dy, &mut dyp);
                let mut dyt = vec![f32::NAN; dyt_len(&dt, cout)];
                transpose(&dt, &dyp, cout, &mut dyt);
                weight_grad(&d, &xp, cin, &dyt, cout, &mut acc);
            }
            let mut dw = vec![0.5f32; cout * cin];
            fold(&mut acc, cin, cout, &mut dw);
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (&got, &w)) in dw.iter().zip(&want).enumerate() {
                let err = (got as f64 - 0.5 - w).abs() / scale;
                assert!(
                    err < 1e-5,
                    "weight {i} of {cout}x{cin} on {h}x{w}: {got} against {}",
                    w + 0.5
                );
            }
            assert!(
                acc.iter().all(|&v| v == 0.0),
                "fold leaves the accumulator zeroed"
            );
        }
    }
}
