//! The GPU path: runs the CUDA program that `sparsenet!` generates for a
//! network (its [`GpuProgram`]) on a [`Backend`].
//!
//! Two backends implement the same five operations (compile, allocate,
//! copy, launch, wait):
//! - `cuda::CudaBackend` (feature `cuda`): NVRTC through cudarc, with an
//!   on-disk PTX cache, kernels launched on one stream and, for training,
//!   the whole step captured once as a CUDA graph.
//! - [`emulator::Emulator`]: the same CUDA C source compiled as C++ by the
//!   host compiler, each kernel run block by block on the CPU. It is how the
//!   kernels and the launch sequence are tested on machines without a GPU:
//!   kernels whose threads never wait for one another run thread after
//!   thread; the tiled convolutions, which share memory and meet at
//!   barriers and warp-wide `mma`, run their threads as fibers that meet
//!   where the GPU's would.
//!
//! [`GpuModel`] owns the device memory of one network: the activation arena,
//! the gradient arena, per-channel values, parameters, running statistics,
//! gradients and SGD velocity, all sized from the plan, allocated once.
//!
//! # The folder
//!
//! | file | what it holds |
//! |---|---|
//! | `program.rs` | what `sparsenet!` generates: [`GpuProgram`], [`Launch`], [`KernelCost`], [`Precision`], [`GpuNetwork`]; the full CUDA source assembled from the kernel headers and the generated part |
//! | `backend.rs` | what a device provides ([`Backend`]), the kernels' one argument ([`KernelArgs`]), [`GpuError`] |
//! | `model.rs` | [`GpuModel`]: device memory, uploads and downloads, the forward pass |
//! | `train_step.rs` | the training step on the device (forward, loss, backward, SGD), [`StepOutcome`] |
//! | `dataset.rs` | a dataset on the device ([`DeviceDataset`]) and batches staged from picks |
//! | `engine.rs` | [`GpuEngine`]: a training run's steps on the device (the [`crate::engine::Engine`] protocol) |
//! | `cuda.rs` | the CUDA backend (feature `cuda`): NVRTC, the driver, CUDA graphs |
//! | `emulator.rs`, `emulator_block.h` | the CPU stand-in: the same source as C++, cooperative blocks as fibers |
//! | `kernels/*.cuh` | the kernel templates, one header per op family (`conv_tiled`, `conv`, `batchnorm`, `pool`, `dense_loss`, `sgd`, `augment`), what they share (`common`, `concat`) and the two builds' shims (`emulate`) |
//!
//! # Example
//!
//! Every `sparsenet!` type implements [`GpuNetwork`], so code generic over
//! the network works for all of them (call it as
//! `one_step::<sparsenet::zoo::SparseNet40>()`). On a GPU, pass
//! `cuda::CudaBackend::new(0)?` instead of the emulator.
//!
//! ```
//! use sparsenet_runtime::gpu::{emulator::Emulator, GpuError, GpuModel, GpuNetwork, Precision};
//! use sparsenet_runtime::ndarray::Array4;
//! use sparsenet_runtime::optim::Sgd;
//! use sparsenet_runtime::{Mode, Model};
//!
//! fn one_step<M: GpuNetwork + Model<f32>>() -> Result<(), GpuError> {
//!     let mut model = M::new(42);
//!     // Compiles the kernels and allocates memory for batches of up to 8.
//!     // (TF32 tensor cores for the convolutions; Precision::F32 for IEEE f32.)
//!     let mut gpu = GpuModel::new(Emulator::<f32>::new(), &model, 8, Precision::Tf32)?;
//!     let [c, h, w] = M::INPUT;
//!     let x = Array4::<f32>::zeros((4, c, h, w));
//!     let sgd = Sgd { momentum: 0.9, nesterov: true, weight_decay: 1e-4 };
//!     let step = gpu.train_step(x.view(), &[0, 1, 0, 1], &sgd, 0.1, 0.0)?;
//!     println!("loss {:.3}, {} of 4 right", step.loss, step.correct);
//!     let logits = gpu.forward(x.view(), Mode::Eval)?; // [4, M::CLASSES]
//!     assert_eq!(logits.dim(), (4, M::CLASSES));
//!     // Back to the CPU model, e.g. to save it.
//!     gpu.copy_to(&mut model)?;
//!     Ok(())
//! }
//! ```

pub mod emulator;

#[cfg(feature = "cuda")]
pub mod cuda;

mod backend;
mod dataset;
mod engine;
mod model;
mod program;
mod train_step;

pub use backend::{Backend, GpuError, KernelArgs};
pub use dataset::DeviceDataset;
pub use engine::GpuEngine;
pub use model::GpuModel;
pub use program::{GpuNetwork, GpuProgram, KernelCost, Launch, Precision};
pub use train_step::StepOutcome;

pub(crate) use backend::cache_key;

// The optimiser's hyper-parameters (`train_step.rs` reads them).
use crate::optim::Sgd;
