//! Predeclared networks: the seed's two versions, the paper's SparseNets,
//! DenseNet for comparison, and a small default for 28x28 grayscale images.
//! Each is an ordinary `sparsenet!` declaration; `summary()` shows it.
//!
//! Each type is generic over its element type (`f32` by default, `f64` for
//! tests) and implements [`Model`](crate::runtime::Model),
//! [`NetworkSpec`](crate::runtime::NetworkSpec) and
//! [`GpuNetwork`](crate::runtime::gpu::GpuNetwork).
//!
//! ```
//! use sparsenet::prelude::*;
//! use sparsenet::zoo::FashionSparseNet;
//!
//! assert_eq!(FashionSparseNet::<f32>::INPUT, [1, 28, 28]);
//! let mut model = FashionSparseNet::<f32>::new(0); // seed 0
//! let x = Array4::<f32>::zeros((2, 1, 28, 28));
//! let logits = model.forward(x.view(), Mode::Eval)?;
//! assert_eq!(logits.dim(), (2, FashionSparseNet::<f32>::CLASSES));
//! println!("{}", FashionSparseNet::<f32>::summary());
//! # Ok::<(), sparsenet::runtime::InputError>(())
//! ```

use crate::sparsenet;

sparsenet! {
    /// The default model of the `train` example: a small paper-style
    /// SparseNet for 28x28 grayscale images (Fashion-MNIST, MNIST).
    pub struct FashionSparseNet {
        style: paper,
        input: [1, 28, 28],
        classes: 10,
        units: [2, 4, 4],
        growth: [8, 16, 24],
        stem: conv3x3(12),
    }

    /// The seed notebook's 2018-02-20 version, depth 40, growth 12, on
    /// CIFAR-sized input (185,314 parameters, as the seed's MXNet model).
    pub struct SeedV2Depth40 {
        style: seed_2018_02_20,
        input: [3, 32, 32],
        classes: 10,
        depth: 40,
        growth: 12,
    }

    /// The seed notebook's version before 2018-01-30 as the notebook builds
    /// it: 3 blocks of 12 units, growth 24, a 16-channel BN-ReLU-conv stem.
    pub struct SeedV1Notebook {
        style: seed_2018_01_30,
        input: [3, 32, 32],
        classes: 10,
        blocks: 3,
        units: 12,
        growth: 24,
        stem: bn_relu_conv3x3(16),
    }

    /// The paper's SparseNet-40 (growth 24, no bottleneck) for CIFAR.
    pub struct SparseNet40 {
        style: paper,
        input: [3, 32, 32],
        classes: 10,
        depth: 40,
        growth: 24,
    }

    /// The paper's SparseNet-BC-100 (growth 24, bottleneck, compression 0.5).
    pub struct SparseNetBc100 {
        style: paper,
        input: [3, 32, 32],
        classes: 10,
        depth: 100,
        growth: 24,
        bottleneck: true,
    }

    /// [`SeedV2Depth40`] with 100 outputs, for CIFAR-100 (the `train`
    /// example's `--model seed-v2 --dataset cifar100`).
    pub struct SeedV2Depth40Cifar100 {
        style: seed_2018_02_20,
        input: [3, 32, 32],
        classes: 100,
        depth: 40,
        growth: 12,
    }

    /// [`SparseNetBc100`] with 100 outputs, for CIFAR-100 (the paper's
    /// CIFAR-100 network; `--model sparsenet-bc100 --dataset cifar100`).
    pub struct SparseNetBc100Cifar100 {
        style: paper,
        input: [3, 32, 32],
        classes: 100,
        depth: 100,
        growth: 24,
        bottleneck: true,
    }

    /// DenseNet-40 (growth 12) for comparison: every earlier layer.
    pub struct DenseNet40 {
        style: paper,
        input: [3, 32, 32],
        classes: 10,
        depth: 40,
        growth: 12,
        aggregation: dense,
        stem: conv3x3(16),
    }

    /// SparseNet-BC-100, growth 24, with the seed's stem of k channels and
    /// conv biases: the benchmarks' second network (the same function as
    /// `scripts/bench_torch.py` builds).
    pub struct SeedV2Bc100 {
        style: seed_2018_02_20,
        input: [3, 32, 32],
        classes: 10,
        depth: 100,
        growth: 24,
        bottleneck: true,
        reduction: 0.5,
    }
}
