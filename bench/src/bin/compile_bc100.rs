//! Declares only SparseNet-BC-100 (growth 24) and runs a forward pass and a
//! training pass, so that both generated passes are compiled: the
//! compile-time benchmark of the generated code. It is a binary of its own
//! (not part of another tool) so that touching this file rebuilds this
//! expansion and nothing else:
//!
//!     touch bench/src/bin/compile_bc100.rs && time cargo build --release -p sparsenet-bench --bin compile_bc100
use sparsenet::prelude::*;

sparsenet! {
    /// The paper's SparseNet-BC-100, growth 24.
    pub struct SparseNetBc100 { style: paper, input: [3, 32, 32], classes: 10, depth: 100, growth: 24, bottleneck: true }
}

fn main() {
    let mut net = SparseNetBc100::<f32>::new(0);
    let x = Array4::<f32>::from_elem((2, 3, 32, 32), 0.5);
    let y = net
        .forward(x.view(), Mode::Eval)
        .expect("input shape matches");
    println!(
        "{} parameters, logits {:?}",
        SparseNetBc100::<f32>::PARAMETERS,
        y.row(0)
    );
    let mut grads = vec![0.0f32; SparseNetBc100::<f32>::PARAMETERS];
    let dx = net
        .forward_backward(x.view(), Mode::Train, &mut grads, &mut |l| {
            l.mapv(|v| v * 1e-3)
        })
        .expect("input shape matches");
    println!(
        "input gradient norm {:.3e}",
        dx.iter().map(|v| v * v).sum::<f32>().sqrt()
    );
}
