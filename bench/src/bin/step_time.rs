//! Times training steps and inference of a few networks on this machine.
//! `cargo run --release -p sparsenet-bench --bin step_time`
use sparsenet::prelude::*;
use std::time::Instant;

sparsenet! {
    struct FashionA { style: paper, input: [1, 28, 28], classes: 10, units: [3, 4, 4], growth: [8, 16, 24], stem: conv3x3(16) }
    struct FashionB { style: paper, input: [1, 28, 28], classes: 10, units: [4, 6, 6], growth: [12, 16, 24], bottleneck: true, stem: conv3x3(24) }
    struct SeedV2Depth40 { style: seed_2018_02_20, input: [3, 32, 32], classes: 10, depth: 40, growth: 12 }
}

fn time<M: Model<f32>>(batch: usize) {
    let mut m = M::new(0);
    let [c, h, w] = M::INPUT;
    let x = Array4::<f32>::from_shape_fn((batch, c, h, w), |(n, c, y, x)| {
        ((n + c * 3 + y * 7 + x) % 13) as f32 / 13.0
    });
    let mut grads = vec![0.0f32; M::PARAMETERS];
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        m.forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| {
            l.mapv(|v| v * 1e-3)
        })
        .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mut inf = f64::MAX;
    for _ in 0..4 {
        let t = Instant::now();
        m.forward(x.view(), Mode::Eval).unwrap();
        inf = inf.min(t.elapsed().as_secs_f64());
    }
    let gflop = 2.0 * M::MACS_PER_IMAGE as f64 * batch as f64 / 1e9;
    println!(
        "{:14} params {:>8} MMACs/img {:>7.2}  train step {:>7.1} ms ({:>6.0} img/s, {:>5.1} GFLOP/s at 3x fwd)  eval {:>6.1} ms ({:>6.0} img/s)",
        M::NAME, M::PARAMETERS, M::MACS_PER_IMAGE as f64 / 1e6, best * 1e3, batch as f64 / best, 3.0 * gflop / best, inf * 1e3, batch as f64 / inf
    );
}

fn main() {
    time::<FashionA<f32>>(64);
    time::<FashionB<f32>>(64);
    time::<SeedV2Depth40<f32>>(64);
}
