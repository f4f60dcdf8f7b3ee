//! Declares a SparseNet variant of your own and inspects what the macro
//! worked out about it at compile time, then runs it once.
//!
//!     cargo run --release --example custom_variant
//!
//! Everything printed before "forward pass" is a compile-time constant: the
//! macro computed the channel counts, the concatenation sources of every
//! layer, the parameter and multiply-add counts and the memory figures from
//! the declaration alone.

use sparsenet::prelude::*;
use sparsenet::runtime::gpu::GpuNetwork;
use sparsenet::runtime::ndarray::Array4;
use sparsenet::runtime::Store;

sparsenet! {
    /// A SparseNet-BC with exponential aggregation in base 3 (each layer
    /// reads layers l-1, l-3, l-9 of its stage), a growth rate per stage and
    /// a narrower bottleneck than the paper's 4k.
    pub struct Base3Net {
        style: paper,
        input: [3, 32, 32],
        classes: 10,
        units: [6, 8, 8],
        growth: [12, 16, 24],
        bottleneck: true,
        bottleneck_width: 2,
        aggregation: exponential(3),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The summary table: one row per layer, with its sources.
    println!("{}", Base3Net::<f32>::summary());

    println!(
        "{}: {} parameters, {} multiply-adds per image",
        Base3Net::<f32>::NAME,
        Base3Net::<f32>::PARAMETERS,
        Base3Net::<f32>::MACS_PER_IMAGE
    );
    println!(
        "activations per image: {} floats produced by a forward pass, {} alive at the peak of inference",
        Base3Net::<f32>::ACTIVATIONS_PER_IMAGE,
        Base3Net::<f32>::PEAK_INFERENCE_PER_IMAGE
    );

    // Which earlier outputs a layer concatenates, newest first.
    let layer = Base3Net::<f32>::layers()
        .iter()
        .find(|l| l.name == "stages.1.units.7")
        .expect("stage 1 has 8 units");
    println!(
        "{} reads {:?}: {} channels in, {} out, {} parameters",
        layer.name, layer.sources, layer.in_channels, layer.out_channels, layer.params
    );

    // Every tensor's PyTorch-style name and shape, as saved in safetensors.
    let params = Base3Net::<f32>::tensors()
        .iter()
        .filter(|t| t.store == Store::Param)
        .count();
    println!(
        "{} named tensors ({params} trainable); the first: {} {:?}",
        Base3Net::<f32>::tensors().len(),
        Base3Net::<f32>::tensors()[0].name,
        Base3Net::<f32>::tensors()[0].shape
    );

    // The GPU program generated from the same declaration (CUDA C).
    let gpu = &<Base3Net as GpuNetwork>::GPU_PROGRAM;
    println!(
        "GPU program: {} kernels, {} bytes of generated CUDA C",
        gpu.kernels.len(),
        gpu.source.len()
    );

    // A forward pass on a batch of 4 images, and a save / load round trip.
    println!("forward pass");
    let net = Base3Net::<f32>::new(7);
    let x = Array4::<f32>::from_shape_fn((4, 3, 32, 32), |(n, c, h, w)| {
        ((n * 31 + c * 17 + h * 5 + w) % 11) as f32 / 11.0 - 0.5
    });
    let mut net = net;
    let logits = net.forward(x.view(), Mode::Eval)?;
    println!("logits {:?}, first row {:.4}", logits.dim(), logits.row(0));

    let path = std::env::temp_dir().join(format!("base3net-{}.safetensors", std::process::id()));
    net.save(&path)?;
    let mut copy = Base3Net::<f32>::new(0);
    copy.load(&path)?;
    std::fs::remove_file(&path)?;
    assert_eq!(copy.forward(x.view(), Mode::Eval)?, logits);
    println!("saved and loaded: the same logits");
    Ok(())
}
