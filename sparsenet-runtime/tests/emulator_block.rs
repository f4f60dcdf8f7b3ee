//! The GPU emulator's thread blocks against what a GPU does: shared memory
//! behind `__syncthreads`, warp shuffles and votes with their lane
//! semantics, and `mma.sync` m16n8k8 TF32 with the PTX ISA's fragment
//! layouts, against a plain matrix product (f64: exact logic; f32: the
//! inputs rounded to TF32 as the tensor cores read them). Two kernels are
//! wrong on purpose (a missing barrier, a mis-mapped fragment) and must come
//! out wrong; a deadlock and a barrier in a kernel not declared cooperative
//! are errors naming the kernel. The kernels: `tests/kernels/block_checks.cu`
//! (their program: `block_checks.rs` beside it).

use sparsenet_runtime::gpu::emulator::{Emulator, HostBuffer};
use sparsenet_runtime::gpu::{Backend, GpuProgram, KernelArgs, Precision};
use sparsenet_runtime::Float;

include!("kernels/block_checks.rs");

/// Threads per block of every check: `block_checks.cu`'s shared arrays hold
/// 256 values, one per thread.
const BLOCK: u32 = 256;

fn kernel(name: &str) -> usize {
    BLOCK_CHECKS
        .kernels
        .iter()
        .position(|k| *k == name)
        .unwrap()
}

/// Runs `name` over `blocks` blocks with `act`, `params`, `aux` as inputs;
/// returns `logits` (`out_len` values) or the launch's error.
fn run<T: Float>(
    name: &str,
    blocks: u32,
    act: &[T],
    params: &[T],
    aux: &[T],
    out_len: usize,
) -> Result<Vec<T>, String> {
    let mut emu = Emulator::<T>::new();
    emu.compile(&BLOCK_CHECKS, Precision::Tf32)
        .map_err(|e| e.to_string())?;
    let mut buffer = |data: &[T], len: usize| -> HostBuffer<T> {
        let mut b = emu.alloc(len.max(1)).unwrap();
        emu.upload(&mut b, 0, data).unwrap();
        b
    };
    let (act, params, aux) = (
        buffer(act, act.len()),
        buffer(params, params.len()),
        buffer(aux, aux.len()),
    );
    let out = buffer(&[], out_len);
    let args = KernelArgs {
        act: emu.address(&act),
        params: emu.address(&params),
        aux: emu.address(&aux),
        logits: emu.address(&out),
        ..KernelArgs::default()
    };
    emu.launch(kernel(name), blocks, BLOCK, &args)
        .map_err(|e| e.to_string())?;
    let mut result = vec![T::zero(); out_len];
    emu.download(&out, &mut result).unwrap();
    Ok(result)
}

/// Deterministic values in about [-1, 1], none zero.
fn values<T: Float>(n: usize, seed: u64) -> Vec<T> {
    (0..n as u64)
        .map(|i| {
            let h = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let u = ((h >> 11) as f64) / ((1u64 << 53) as f64);
            T::from_f64c(
                if u < 0.5 {
                    u - 0.5 - 1e-3
                } else {
                    u - 0.5 + 1e-3
                } * 2.0,
            )
        })
        .collect()
}

fn reverse_checks<T: Float>() {
    let blocks = 3;
    let x: Vec<T> = values(blocks * BLOCK as usize, 1);
    let expected: Vec<T> = x
        .chunks(BLOCK as usize)
        .flat_map(|c| c.iter().rev().copied())
        .collect();
    let out = run::<T>("check_reverse", blocks as u32, &x, &[], &[], x.len()).unwrap();
    assert_eq!(out, expected, "shared memory behind __syncthreads");

    let out = run::<T>(
        "check_reverse_without_barrier",
        blocks as u32,
        &x,
        &[],
        &[],
        x.len(),
    )
    .unwrap();
    let wrong = out.iter().zip(&expected).filter(|(a, b)| a != b).count();
    assert!(
        wrong > x.len() / 4,
        "without its barrier the kernel must read unwritten shared memory: {wrong} of {} wrong",
        x.len()
    );
}

#[test]
fn shared_memory_is_per_block_and_a_missing_barrier_shows() {
    reverse_checks::<f32>();
    reverse_checks::<f64>();
}

fn warp_checks<T: Float>() {
    let blocks = 2;
    let n = blocks * BLOCK as usize;
    let mut x: Vec<T> = values(n, 2);
    // One warp all positive, one all negative, for the votes.
    for v in &mut x[32..64] {
        *v = v.abs();
    }
    for v in &mut x[64..96] {
        *v = -v.abs();
    }
    let out = run::<T>("check_warp", blocks as u32, &x, &[], &[], 6 * n).unwrap();
    for (w, warp) in x.chunks(32).enumerate() {
        let sum: f64 = warp.iter().map(|v| v.to_f64c()).sum();
        let any = warp.iter().any(|v| v.to_f64c() > 0.0);
        let all = warp.iter().all(|v| v.to_f64c() > 0.0);
        for (lane, v) in warp.iter().enumerate() {
            let o = &out[6 * (32 * w + lane)..][..6];
            let close = |a: T, b: f64| (a.to_f64c() - b).abs() <= 1e-5 * (1.0 + b.abs());
            assert!(close(o[0], sum), "warp {w} lane {lane}: butterfly sum");
            if lane == 0 {
                assert!(close(o[1], sum), "warp {w}: halving sum in lane 0");
            }
            assert_eq!(
                o[2], warp[5],
                "warp {w} lane {lane}: __shfl_sync from lane 5"
            );
            let previous = if lane == 0 { *v } else { warp[lane - 1] };
            assert_eq!(o[3], previous, "warp {w} lane {lane}: __shfl_up_sync by 1");
            let positive = if v.to_f64c() > 0.0 { 1.0 } else { 0.0 };
            assert_eq!(o[4].to_f64c(), positive, "warp {w} lane {lane}: ballot bit");
            let votes = any as u8 as f64 + 2.0 * all as u8 as f64;
            assert_eq!(o[5].to_f64c(), votes, "warp {w} lane {lane}: any/all");
        }
    }
}

#[test]
fn warp_shuffles_and_votes_follow_the_lanes() {
    warp_checks::<f32>();
    warp_checks::<f64>();
}

/// cvt.rna.tf32.f32: 10 explicit mantissa bits, to nearest, ties away from 0.
fn tf32(x: f32) -> f32 {
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}

/// The tiles' products `A B + C` in f64, with the inputs through `round`.
fn mma_reference(
    a: &[f64],
    b: &[f64],
    c: &[f64],
    tiles: usize,
    round: impl Fn(f64) -> f64,
) -> Vec<f64> {
    let mut d = vec![0.0; 128 * tiles];
    for t in 0..tiles {
        for row in 0..16 {
            for col in 0..8 {
                let mut acc = c[128 * t + 8 * row + col];
                for k in 0..8 {
                    acc += round(a[128 * t + 8 * row + k]) * round(b[64 * t + 8 * k + col]);
                }
                d[128 * t + 8 * row + col] = acc;
            }
        }
    }
    d
}

/// Largest |x - y| over the largest |y|.
fn max_rel(x: &[f64], y: &[f64]) -> f64 {
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    x.iter()
        .zip(y)
        .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
        / scale
}

#[test]
fn mma_matches_a_plain_product_in_the_documented_fragment_layout() {
    let blocks = 2;
    let tiles = blocks * (BLOCK as usize / 32);
    let (a, b, c): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        values(128 * tiles, 3),
        values(64 * tiles, 4),
        values(128 * tiles, 5),
    );

    // f64: the logic, exactly (no rounding of the inputs).
    let exact = mma_reference(&a, &b, &c, tiles, |v| v);
    let d64 = run::<f64>("check_mma", blocks as u32, &a, &b, &c, 128 * tiles).unwrap();
    let err64 = max_rel(&d64, &exact);
    assert!(
        err64 < 1e-14,
        "f64 mma against the plain product: {err64:.2e}"
    );

    // f32: the inputs rounded to TF32, products summed in f32.
    let (a32, b32, c32): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        a.iter().map(|&v| v as f32).collect(),
        b.iter().map(|&v| v as f32).collect(),
        c.iter().map(|&v| v as f32).collect(),
    );
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let rounded = mma_reference(&widen(&a32), &widen(&b32), &widen(&c32), tiles, |v| {
        tf32(v as f32) as f64
    });
    let d32 = run::<f32>("check_mma", blocks as u32, &a32, &b32, &c32, 128 * tiles).unwrap();
    let err32 = max_rel(&widen(&d32), &rounded);
    assert!(
        err32 < 1e-6,
        "tf32 mma against the TF32-rounded product: {err32:.2e}"
    );
    // ... and the rounding is really applied: far from the unrounded product.
    let unrounded = max_rel(&widen(&d32), &exact);
    assert!(
        unrounded > 1e-5 && unrounded < 2e-3,
        "tf32 mma against the exact product: {unrounded:.2e} (TF32 keeps 10 mantissa bits)"
    );

    // A mis-mapped fragment must not pass.
    let bad = run::<f64>(
        "check_mma_mismapped",
        blocks as u32,
        &a,
        &b,
        &c,
        128 * tiles,
    )
    .unwrap();
    let err = max_rel(&bad, &exact);
    assert!(
        err > 0.1,
        "a mis-mapped A fragment went unnoticed: {err:.2e}"
    );
}

#[test]
fn a_deadlock_is_an_error_naming_the_kernel() {
    let e = run::<f32>("check_deadlock", 1, &[], &[], &[], BLOCK as usize).unwrap_err();
    assert!(
        e.contains("check_deadlock") && e.contains("deadlock"),
        "{e}"
    );
    assert!(
        e.contains("128 of 256 threads wait at __syncthreads"),
        "{e}"
    );
}

#[test]
fn a_barrier_in_a_kernel_not_declared_cooperative_is_an_error() {
    let e = run::<f64>(
        "check_barrier_not_cooperative",
        1,
        &[],
        &[],
        &[],
        BLOCK as usize,
    )
    .unwrap_err();
    assert!(
        e.contains("check_barrier_not_cooperative") && e.contains("SN_EMU_COOP"),
        "{e}"
    );
}

/// `sn_mma_tiles<2, 3>`, the warp's batched mma that the tiled convolutions
/// call (one exchange for six 16x8x8 tiles in the emulator), against a plain
/// 32 x 8 by 8 x 24 product: exact in f64, TF32-rounded in f32.
#[test]
fn batched_mma_tiles_match_a_plain_product() {
    let blocks = 2;
    let tiles = blocks * (BLOCK as usize / 32);
    let (a, b, c): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        values(256 * tiles, 6),
        values(192 * tiles, 7),
        values(768 * tiles, 8),
    );
    let reference = |round: &dyn Fn(f64) -> f64, a: &[f64], b: &[f64], c: &[f64]| {
        let mut d = vec![0.0; 768 * tiles];
        for t in 0..tiles {
            for row in 0..32 {
                for col in 0..24 {
                    let mut acc = c[768 * t + 24 * row + col];
                    for k in 0..8 {
                        acc += round(a[256 * t + 8 * row + k]) * round(b[192 * t + 24 * k + col]);
                    }
                    d[768 * t + 24 * row + col] = acc;
                }
            }
        }
        d
    };
    let exact = reference(&|v| v, &a, &b, &c);
    let d64 = run::<f64>("check_mma_tiles", blocks as u32, &a, &b, &c, 768 * tiles).unwrap();
    let err64 = max_rel(&d64, &exact);
    assert!(
        err64 < 1e-14,
        "f64 mma tiles against the plain product: {err64:.2e}"
    );

    let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (a32, b32, c32) = (narrow(&a), narrow(&b), narrow(&c));
    let rounded = reference(
        &|v| tf32(v as f32) as f64,
        &widen(&a32),
        &widen(&b32),
        &widen(&c32),
    );
    let d32 = run::<f32>(
        "check_mma_tiles",
        blocks as u32,
        &a32,
        &b32,
        &c32,
        768 * tiles,
    )
    .unwrap();
    let err32 = max_rel(&widen(&d32), &rounded);
    assert!(
        err32 < 1e-6,
        "tf32 mma tiles against the TF32-rounded product: {err32:.2e}"
    );
    let unrounded = max_rel(&widen(&d32), &exact);
    assert!(
        unrounded > 1e-5 && unrounded < 2e-3,
        "tf32 mma tiles against the exact product: {unrounded:.2e}"
    );
}
