//! The machine's measured fp32 peak (one core: independent AVX2 FMAs on
//! registers, so the real clock, boost included, sets it) and the GFLOP/s of
//! the direct f32 convolution kernels (forward and weight gradient, the
//! latter through `pointwise_wgrad` for 1x1 layers as in training; one
//! thread, best of 30) on layer shapes from the seed depth-40 and
//! SparseNet-BC-100 networks, as a fraction of that peak: a tool for tuning
//! the kernels' blocking. Whole-network comparisons with PyTorch are
//! `scripts/bench-cpu.sh`, which calls `--peak` for its table.
//!
//! `cargo run --release -p sparsenet-bench --bin bench_direct [-- --peak]`
use sparsenet_runtime::__private::direct::{self, Direct};
use sparsenet_runtime::__private::pointwise_wgrad;
use std::time::Instant;

/// GFLOP/s of one core running 12 independent 8-wide FMA chains (enough to
/// cover the FMA latency on both pipes), best of 5 runs.
#[cfg(target_arch = "x86_64")]
fn peak_gflops() -> f64 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains(iters: u64) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = 0.0;
        for v in acc {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            s += lanes.iter().sum::<f32>();
        }
        s
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return f64::NAN;
    }
    let iters = 50_000_000u64;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        // SAFETY: AVX2 and FMA are present (checked above).
        std::hint::black_box(unsafe { chains(std::hint::black_box(iters)) });
        best = best.min(t.elapsed().as_secs_f64());
    }
    (iters * 12 * 8 * 2) as f64 / best / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_gflops() -> f64 {
    f64::NAN
}

fn main() {
    let peak = peak_gflops();
    if std::env::args().any(|a| a == "--peak") {
        println!("{{\"peak_gflops_per_core\": {peak:.2}}}");
        return;
    }
    println!("measured fp32 peak of one core: {peak:.1} GFLOP/s");
    let shapes = [
        (400usize, 96usize, 16usize, 1usize),
        (200, 96, 32, 1),
        (96, 96, 32, 1),
        (96, 24, 32, 3),
        (24, 96, 32, 3),
        (96, 24, 8, 3),
        (150, 12, 32, 3),
        (300, 12, 8, 3),
    ];
    for (cin, cout, hw, k) in shapes {
        let d = Direct::for_conv(hw, hw, k, k / 2, cin);
        let x: Vec<f32> = (0..d.input_len(cin))
            .map(|i| (i % 17) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|i| (i % 13) as f32 * 0.01)
            .collect();
        let mut out = vec![0.0f32; cout * d.out_plane];
        let mut lanes = vec![0.0f32; direct::lanes_len(cout, cin, k * k)];
        let dy: Vec<f32> = (0..cout * d.out_plane)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let dt = Direct::for_conv(hw, hw, k, k - 1 - k / 2, cout);
        let mut dyp = vec![0.0f32; dt.input_len(cout)];
        if k == 1 {
            dt.fill_planes(&dy, &mut dyp);
        }
        let mut dyt = vec![
            0.0f32;
            if k == 1 {
                pointwise_wgrad::dyt_len(&dt, cout)
            } else {
                0
            }
        ];
        let mut acc = vec![0.0f32; pointwise_wgrad::acc_len(cin, cout)];
        let flop = 2.0 * (cin * cout * k * k * hw * hw) as f64;
        let (mut fwd, mut wgrad) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = Instant::now();
            direct::forward(&d, &x, cin, &w, cout, &mut out);
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            if k == 1 {
                // As the network runs it: transposed from the pointwise
                // copy of the gradient the input-gradient kernel reads.
                pointwise_wgrad::transpose(&dt, &dyp, cout, &mut dyt);
                pointwise_wgrad::weight_grad(&d, &x, cin, &dyt, cout, &mut acc);
            } else {
                direct::weight_grad(&d, &x, cin, &dy, cout, &mut lanes, 1);
            }
            wgrad = wgrad.min(t.elapsed().as_secs_f64());
        }
        let (f, g) = (flop / fwd / 1e9, flop / wgrad / 1e9);
        println!(
            "cin {cin:4} cout {cout:3} {hw:2}x{hw:2} k{k}: forward {f:6.1} GFLOP/s ({:3.0}%)  weight gradient {g:6.1} GFLOP/s ({:3.0}%)",
            100.0 * f / peak,
            100.0 * g / peak
        );
    }
}
