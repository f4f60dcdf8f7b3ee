//! GFLOP/s of the direct f32 convolution kernels (forward and weight
//! gradient, one thread, best of 30) on layer shapes from the seed depth-40
//! and SparseNet-BC-100 networks: a tool for tuning the kernels' blocking.
//! Whole-network comparisons with PyTorch are `scripts/bench-cpu.sh`.
//! `cargo run --release --example bench_direct`
use sparsenet_runtime::direct::{self, Direct};
use std::time::Instant;
fn main() {
    let shapes = [
        (400usize, 96usize, 16usize, 1usize),
        (200, 96, 32, 1),
        (96, 24, 32, 3),
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
        let mut dw = vec![0.0f32; direct::lanes_len(cout, cin, k * k)];
        let dy: Vec<f32> = (0..cout * d.out_plane)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let flop = 2.0 * (cin * cout * k * k * hw * hw) as f64;
        let mut best = f64::MAX;
        let mut bestw = f64::MAX;
        for _ in 0..30 {
            let t = Instant::now();
            direct::forward(&d, &x, cin, &w, cout, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            direct::weight_grad(&d, &x, cin, &dy, cout, &mut dw);
            bestw = bestw.min(t.elapsed().as_secs_f64());
        }
        println!("cin {cin:4} cout {cout:3} {hw:2}x{hw:2} k{k}: fwd {:6.1} GFLOP/s  wgrad {:6.1} GFLOP/s", flop / best / 1e9, flop / bestw / 1e9);
    }
}
