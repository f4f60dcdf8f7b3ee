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
mod engine;

#[cfg(feature = "cuda")]
pub mod cuda;

use crate::data::{Augment, Dataset, Transform};
use crate::model::{check_input, InputError, Model, NetworkSpec};
use crate::optim::Sgd;
use crate::{Float, Mode};
pub use engine::GpuEngine;
use ndarray::{Array2, ArrayView4};
use std::marker::PhantomData;

/// The kernel templates every generated program instantiates.
pub const KERNELS_CUH: &str = include_str!("kernels.cuh");

/// Threads per block of the element-wise launches (one thread per output
/// element, grid-stride).
pub const BLOCK: u32 = 256;

/// One kernel launch of a sequence: `per_image * n + fixed` work items, in
/// blocks of [`Launch::block`] threads that take [`Launch::per_block`]
/// items each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Index into [`GpuProgram::kernels`].
    pub kernel: usize,
    /// Work items per image of the batch.
    pub per_image: usize,
    /// Work items whatever the batch size (e.g. one per channel).
    pub fixed: usize,
    /// Threads per block.
    pub block: u32,
    /// Work items one block takes: [`Launch::block`] for the element-wise
    /// kernels (a thread per item), the tile's rows for the tiled ones.
    pub per_block: usize,
}

impl Launch {
    /// Work items the launch covers for a batch of `n` images:
    /// `per_image * n + fixed`.
    pub fn threads(&self, n: usize) -> usize {
        self.per_image * n + self.fixed
    }

    /// Blocks to launch; kernels loop grid-stride over their items or tiles,
    /// so capping the grid only changes how much work each block takes.
    pub fn blocks(&self, n: usize) -> u32 {
        self.threads(n)
            .div_ceil(self.per_block.max(1))
            .clamp(1, 1 << 20) as u32
    }
}

/// The arithmetic of the convolutions' matrix products on the device, and
/// how activations are stored.
///
/// Accumulation is f32 in all three, parameters (the master weights), their
/// gradients, the SGD velocity, BatchNorm statistics and the logits are f32
/// in all three; BatchNorm, the loss, reductions and the optimiser compute in
/// f32 with f64 partial sums. What differs is how the tensor cores round the
/// products' inputs, and (`Bf16`) the width of the activations and their
/// gradients in device memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// IEEE single precision: every product an f32 FMA.
    F32,
    /// TF32 tensor cores (`mma.sync` m16n8k8): the convolutions' inputs
    /// rounded to 10 mantissa bits (to nearest, ties away), products
    /// accumulated in f32. cuDNN's default for convolutions; the default
    /// for training on a GPU.
    #[default]
    Tf32,
    /// bfloat16 activations and activation gradients in memory (half the
    /// bytes of the arenas, which dominate a step's memory traffic): each
    /// value rounded to bf16 (to nearest, ties to even) when a kernel stores
    /// it and widened to f32 when one loads it. The convolutions run on the
    /// TF32 tensor cores, which read a bf16 value exactly; everything else
    /// is as in `Tf32`. bf16 keeps f32's exponent range, so no loss scaling
    /// is needed.
    Bf16,
}

impl Precision {
    /// The name `--precision` takes: `f32`, `tf32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Every precision, in the order `--precision` lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Tf32, Precision::Bf16];

    /// Whether the convolutions run on the TF32 tensor cores.
    pub fn tensor_cores(self) -> bool {
        self != Precision::F32
    }

    /// Bytes of one element of the activation and gradient arenas when the
    /// model computes in an element type of `elem_bytes` bytes.
    pub fn stored_bytes(self, elem_bytes: usize) -> usize {
        match self {
            Precision::Bf16 => 2,
            _ => elem_bytes,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!(
                "unknown precision `{s}` (expected `f32`, `tf32` or `bf16`)"
            )),
        }
    }
}

/// A kernel's work per image of the batch, as the emitter counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCost {
    /// Floating-point operations (a multiply-add counts 2).
    pub flops_per_image: u64,
    /// Bytes it must read or write at least (each input and output
    /// activation once; weights and re-reads not counted).
    pub bytes_per_image: u64,
}

impl KernelCost {
    /// A kernel's FLOPs and compulsory bytes per image.
    pub const fn new(flops_per_image: u64, bytes_per_image: u64) -> Self {
        KernelCost {
            flops_per_image,
            bytes_per_image,
        }
    }
}

/// A network's GPU program, generated by `sparsenet!` from its plan.
#[derive(Debug)]
pub struct GpuProgram {
    /// The network's [`NetworkSpec::NAME`]; it names compiled files and
    /// errors.
    pub name: &'static str,
    /// The generated part of the CUDA C source (see [`GpuProgram::full_source`]).
    pub source: &'static str,
    /// Kernel names, indexed by [`Launch::kernel`].
    pub kernels: &'static [&'static str],
    /// What each kernel computes and moves per image, indexed like
    /// [`GpuProgram::kernels`] (empty, or zeros, where not estimated): the
    /// profile's achieved rates.
    pub costs: &'static [KernelCost],
    /// Floats per image of the activation arena.
    pub act_per_image: usize,
    /// Floats per image of the gradient arena (with each node's dz scratch).
    pub grad_per_image: usize,
    /// Floats of batch statistics and folded BatchNorms.
    pub aux_len: usize,
    /// Doubles of partial sums for the split reductions (reused by each).
    pub partials_len: usize,
    /// Inference: BatchNorm folded with the running statistics, from the
    /// input (the first buffer of the activation arena) to the logits.
    pub forward_eval: &'static [Launch],
    /// Training-mode forward: batch statistics (which also update the
    /// running statistics), every activation kept for backward, the logits.
    pub forward_train: &'static [Launch],
    /// Loss and the backward pass, ending with every parameter gradient.
    pub backward: &'static [Launch],
    /// The SGD update of the parameters and velocity from the gradients,
    /// with the hyper-parameters in [`KernelArgs::hyper`].
    pub optimizer: &'static [Launch],
    /// Why this network cannot run on the GPU yet, if it cannot.
    pub unsupported: Option<&'static str>,
}

impl GpuProgram {
    /// The complete CUDA C translation unit for `precision`: the switch
    /// that selects the matrix products' arithmetic, the templates, then
    /// the network's constants and kernels.
    pub fn full_source(&self, precision: Precision) -> String {
        let mut s = String::with_capacity(KERNELS_CUH.len() + self.source.len() + 128);
        s.push_str(&format!(
            "// sparsenet program `{}`, precision {precision}\n#define SN_TF32 {}\n#define SN_BF16 {}\n",
            self.name,
            u8::from(precision.tensor_cores()),
            u8::from(precision == Precision::Bf16)
        ));
        s.push_str(KERNELS_CUH);
        s.push('\n');
        s.push_str(self.source);
        s
    }
}

/// Implemented by every `sparsenet!` type: its GPU program.
pub trait GpuNetwork: NetworkSpec {
    /// The program: CUDA C source, kernel names, launch sequences and the
    /// sizes of the device memory, all fixed at compile time.
    const GPU_PROGRAM: GpuProgram;
}

/// The one argument of every kernel (`struct Args` in kernels.cuh): device
/// addresses, the batch size and the mode.
///
/// Each address is a buffer's [`Backend::address`], of elements of the
/// model's element type unless said otherwise. Per-image arenas are laid
/// out for the batch size: a buffer at per-image offset `o` starts at
/// element `o * n`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KernelArgs {
    /// The activation arena, [`GpuProgram::act_per_image`] elements per
    /// image; the input batch is its first buffer.
    pub act: u64,
    /// The gradient arena, [`GpuProgram::grad_per_image`] elements per
    /// image: activation gradients, each alive only while backward needs it.
    pub gact: u64,
    /// Per-channel values, [`GpuProgram::aux_len`] elements: batch means
    /// and variances, each BatchNorm folded to a scale and a shift, and
    /// backward's per-channel sums.
    pub aux: u64,
    /// The parameters, laid out as [`Model::params`].
    pub params: u64,
    /// The parameter gradients, laid out like the parameters.
    pub grads: u64,
    /// The running statistics, laid out as [`Model::state`].
    pub state: u64,
    /// The SGD momentum buffer, laid out like the parameters.
    pub velocity: u64,
    /// The logits, `[n, classes]` row-major.
    pub logits: u64,
    /// d(loss)/d(logits), `[n, classes]` row-major.
    pub dlogits: u64,
    /// The `n` labels, as C `int`s.
    pub labels: u64,
    /// `2 * n` values: each image's loss, then for each image 1 where the
    /// prediction (the first largest logit) is the label, else 0.
    pub losses: u64,
    /// Hyper-parameters: learning rate, momentum, weight decay, Nesterov
    /// (0 or 1), label smoothing.
    pub hyper: u64,
    /// [`GpuProgram::partials_len`] `f64`s (whatever the element type):
    /// partial sums of the batch reductions, combined in a fixed order so
    /// that results are deterministic.
    pub partials: u64,
    /// Images in the batch.
    pub n: i32,
    /// 1 in training mode (batch statistics), 0 in inference.
    pub train: i32,
    /// A dataset's images on the device, u8 `[len, C, H, W]`
    /// ([`GpuModel::upload_dataset`]); 0 when none.
    pub images: u64,
    /// That dataset's labels, as C `int`s.
    pub dataset_labels: u64,
    /// The staged batch's picks: per image its dataset index, dy, dx and
    /// flip (0/1), as C `int`s.
    pub picks: u64,
    /// The normalisation table: 256 values per input channel.
    pub lut: u64,
}

/// Everything that can go wrong on the GPU path. Messages name the network.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// [`GpuModel::new`] was given a network whose program says it cannot
    /// run on the GPU ([`GpuProgram::unsupported`], e.g. with dropout).
    #[error("{network}: the GPU path cannot run this network: {reason}")]
    Unsupported {
        /// The network's [`NetworkSpec::NAME`].
        network: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// The generated kernels did not compile, or the compiler could not be
    /// found or run.
    #[error("{network}: compiling the generated kernels failed ({compiler}):\n{log}")]
    Compile {
        /// The network's [`NetworkSpec::NAME`].
        network: &'static str,
        /// `NVRTC`, or the emulator's C++ compiler command (`$CXX` or `g++`).
        compiler: String,
        /// The compiler's log, or why it could not run.
        log: String,
    },
    /// Any other failure of the backend: no driver or device, an
    /// allocation, copy or launch that failed, a cache file that could not
    /// be written. The message says which backend and what it was doing.
    #[error("{0}")]
    Backend(String),
    /// The input array does not have the network's shape.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A batch of no image, or of more than the model was created for
    /// (also when [`GpuModel::new`] is asked for a capacity of 0).
    #[error("{network}: expected a batch of 1..={capacity} images (the size this GPU model was created for), found {found}")]
    Batch {
        /// The network's [`NetworkSpec::NAME`].
        network: &'static str,
        /// The largest batch the model has memory for.
        capacity: usize,
        /// The batch size given.
        found: usize,
    },
    /// A dataset that does not fit the network, or a pick outside it
    /// ([`GpuModel::upload_dataset`], [`GpuModel::stage_batch`]).
    #[error("{network}: {reason}")]
    Dataset {
        /// The network's [`NetworkSpec::NAME`].
        network: &'static str,
        /// What does not fit, with the values.
        reason: String,
    },
    /// Not one label per image, or a label that is not a class.
    #[error("{network}: expected {expected} labels in 0..{classes}, found {found}")]
    Labels {
        /// The network's [`NetworkSpec::NAME`].
        network: &'static str,
        /// The batch size: the number of labels needed.
        expected: usize,
        /// The number of classes (labels must be below it).
        classes: usize,
        /// The labels given: their count and the first few.
        found: String,
    },
}

/// What a GPU model needs from a device, for element type `T` (the CUDA
/// backend runs `f32`; the emulator also `f64`).
pub trait Backend<T> {
    /// A device allocation of `T`s.
    type Buffer;
    /// Compiles (or loads from a cache) the program's kernels with the
    /// matrix products in `precision`.
    fn compile(&mut self, program: &GpuProgram, precision: Precision) -> Result<(), GpuError>;
    /// `len` zeroed elements.
    fn alloc(&mut self, len: usize) -> Result<Self::Buffer, GpuError>;
    /// Copies `src` to `dst[offset..]`.
    fn upload(&mut self, dst: &mut Self::Buffer, offset: usize, src: &[T]) -> Result<(), GpuError>;
    /// Copies `src` bytewise to the start of `dst` (labels, which kernels
    /// read as `int`).
    fn upload_i32(&mut self, dst: &mut Self::Buffer, src: &[i32]) -> Result<(), GpuError>;
    /// Copies `src` bytewise to the start of `dst` (images, which kernels
    /// read as `unsigned char`); `dst` must hold at least `src.len()` bytes.
    fn upload_bytes(&mut self, dst: &mut Self::Buffer, src: &[u8]) -> Result<(), GpuError>;
    /// Copies `src[..dst.len()]` to `dst`, after all launched work is done.
    fn download(&mut self, src: &Self::Buffer, dst: &mut [T]) -> Result<(), GpuError>;
    /// The device address kernels see.
    fn address(&self, buf: &Self::Buffer) -> u64;
    /// Launches kernel `kernel` of the compiled program on `blocks` blocks
    /// of `threads` threads.
    fn launch(
        &mut self,
        kernel: usize,
        blocks: u32,
        threads: u32,
        args: &KernelArgs,
    ) -> Result<(), GpuError>;
    /// Runs a whole launch sequence. Backends may replay it from a recorded
    /// graph when the sequence and arguments are the ones recorded before.
    fn run(&mut self, launches: &[Launch], n: usize, args: &KernelArgs) -> Result<(), GpuError> {
        for l in launches {
            self.launch(l.kernel, l.blocks(n), l.block, args)?;
        }
        Ok(())
    }
}

/// The name of the generated kernel that builds the input batch on the
/// device ([`GpuModel::stage_batch`]).
pub const AUGMENT_KERNEL: &str = "augment";

/// A dataset in device memory ([`GpuModel::upload_dataset`]): its images as
/// stored (u8), its labels and the normalisation table.
pub struct DeviceDataset<Buf> {
    images: Buf,
    labels: Buf,
    lut: Buf,
    len: usize,
}

impl<Buf> DeviceDataset<Buf> {
    /// Images in the dataset.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Loss and accuracy of one training step on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the batch (softmax cross-entropy, with the step's
    /// label smoothing).
    pub loss: f64,
    /// Images whose prediction (the first largest logit) is their label.
    pub correct: usize,
}

/// A network's parameters, statistics and working memory on a device.
pub struct GpuModel<M: GpuNetwork, B: Backend<T>, T: Float = f32> {
    backend: B,
    capacity: usize,
    act: B::Buffer,
    gact: B::Buffer,
    aux: B::Buffer,
    params: B::Buffer,
    grads: B::Buffer,
    state: B::Buffer,
    velocity: B::Buffer,
    logits: B::Buffer,
    dlogits: B::Buffer,
    labels: B::Buffer,
    losses: B::Buffer,
    hyper: B::Buffer,
    /// Doubles, allocated as enough `T`s.
    partials: B::Buffer,
    /// The batch size of a batch [`GpuModel::stage_batch`] built and no
    /// step used yet.
    staged: Option<usize>,
    /// The staged batch's picks (4 `int`s per image), as enough `T`s.
    picks: B::Buffer,
    /// Index of the generated `augment` kernel (found once, not per step).
    augment_kernel: usize,
    precision: Precision,
    _network: PhantomData<(M, T)>,
}

impl<T: Float, M: GpuNetwork + Model<T>, B: Backend<T>> GpuModel<M, B, T> {
    /// Compiles the network's kernels on `backend` with the convolutions'
    /// products in `precision`, allocates memory for batches of up to
    /// `capacity` images and uploads `model`'s parameters and running
    /// statistics (SGD velocity starts at zero).
    pub fn new(
        mut backend: B,
        model: &M,
        capacity: usize,
        precision: Precision,
    ) -> Result<Self, GpuError> {
        let prog = &M::GPU_PROGRAM;
        if let Some(reason) = prog.unsupported {
            return Err(GpuError::Unsupported {
                network: M::NAME,
                reason,
            });
        }
        if capacity == 0 {
            return Err(GpuError::Batch {
                network: M::NAME,
                capacity,
                found: 0,
            });
        }
        backend.compile(prog, precision)?;
        let len = Self::buffer_lens(capacity, precision);
        let mut params = backend.alloc(len.params)?;
        backend.upload(&mut params, 0, model.params())?;
        let mut state = backend.alloc(len.state)?;
        backend.upload(&mut state, 0, model.state())?;
        Ok(GpuModel {
            act: backend.alloc(len.act)?,
            gact: backend.alloc(len.gact)?,
            aux: backend.alloc(len.aux)?,
            grads: backend.alloc(len.params)?,
            velocity: backend.alloc(len.params)?,
            logits: backend.alloc(len.logits)?,
            dlogits: backend.alloc(len.dlogits)?,
            labels: backend.alloc(len.labels)?,
            picks: backend.alloc((4 * capacity * 4).div_ceil(std::mem::size_of::<T>()))?,
            staged: None,
            augment_kernel: prog
                .kernels
                .iter()
                .position(|&k| k == AUGMENT_KERNEL)
                .ok_or_else(|| {
                    GpuError::Backend(format!(
                        "{}: the program has no `{AUGMENT_KERNEL}` kernel (generated by an older sparsenet?)",
                        M::NAME
                    ))
                })?,
            losses: backend.alloc(len.losses)?,
            hyper: backend.alloc(len.hyper)?,
            partials: backend.alloc(len.partials)?,
            params,
            state,
            backend,
            capacity,
            precision,
            _network: PhantomData,
        })
    }

    /// Element counts (in `T`s) of every device buffer for batches up to
    /// `capacity`. The arenas and d loss / d logits hold elements of
    /// [`Precision::stored_bytes`] each, allocated as enough `T`s.
    fn buffer_lens(capacity: usize, precision: Precision) -> BufferLens {
        let prog = &M::GPU_PROGRAM;
        let t = std::mem::size_of::<T>();
        let stored = |elems: usize| (elems * precision.stored_bytes(t)).div_ceil(t);
        BufferLens {
            act: stored(prog.act_per_image * capacity),
            gact: stored(prog.grad_per_image.max(1) * capacity),
            aux: prog.aux_len.max(1),
            params: M::PARAMETERS,
            state: M::STATE_LEN.max(1),
            logits: M::CLASSES * capacity,
            dlogits: stored(M::CLASSES * capacity),
            labels: capacity,
            losses: 2 * capacity,
            hyper: 8,
            // Doubles, as enough `T`s.
            partials: (prog.partials_len.max(1) * 8).div_ceil(std::mem::size_of::<T>()),
        }
    }

    /// Bytes of device memory this model allocates for batches up to
    /// `capacity` in `precision`: the compile-time plan, before the
    /// backend's own overhead.
    pub fn planned_bytes(capacity: usize, precision: Precision) -> usize {
        let l = Self::buffer_lens(capacity, precision);
        let elems = l.act
            + l.gact
            + l.aux
            + 3 * l.params // parameters, gradients, velocity
            + l.state
            + l.logits
            + l.dlogits
            + l.labels
            + l.losses
            + l.hyper
            + l.partials;
        elems * std::mem::size_of::<T>()
    }

    /// The arithmetic of the convolutions' products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The largest batch this model has memory for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, e.g. to switch its profiling on.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    fn args(&self, n: usize, mode: Mode) -> KernelArgs {
        let b = &self.backend;
        KernelArgs {
            act: b.address(&self.act),
            gact: b.address(&self.gact),
            aux: b.address(&self.aux),
            params: b.address(&self.params),
            grads: b.address(&self.grads),
            state: b.address(&self.state),
            velocity: b.address(&self.velocity),
            logits: b.address(&self.logits),
            dlogits: b.address(&self.dlogits),
            labels: b.address(&self.labels),
            losses: b.address(&self.losses),
            hyper: b.address(&self.hyper),
            partials: b.address(&self.partials),
            n: n as i32,
            train: (mode == Mode::Train) as i32,
            images: 0,
            dataset_labels: 0,
            picks: b.address(&self.picks),
            lut: 0,
        }
    }

    fn upload_input(&mut self, x: ArrayView4<'_, T>, mode: Mode) -> Result<usize, GpuError> {
        check_input(M::NAME, &x, M::INPUT, mode)?;
        let n = x.dim().0;
        if n == 0 || n > self.capacity {
            return Err(GpuError::Batch {
                network: M::NAME,
                capacity: self.capacity,
                found: n,
            });
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        // The input is the first buffer of the activation arena.
        if self.precision == Precision::Bf16 {
            let bytes: Vec<u8> = x
                .iter()
                .flat_map(|v| {
                    half::bf16::from_f32(v.to_f32().unwrap_or(f32::NAN))
                        .to_bits()
                        .to_le_bytes()
                })
                .collect();
            self.backend.upload_bytes(&mut self.act, &bytes)?;
        } else {
            self.backend.upload(&mut self.act, 0, x)?;
        }
        Ok(n)
    }

    fn upload_labels(&mut self, labels: &[usize], n: usize) -> Result<(), GpuError> {
        if labels.len() != n || labels.iter().any(|&l| l >= M::CLASSES) {
            return Err(GpuError::Labels {
                network: M::NAME,
                expected: n,
                classes: M::CLASSES,
                found: format!(
                    "{} labels {:?}",
                    labels.len(),
                    &labels[..labels.len().min(8)]
                ),
            });
        }
        let ints: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        self.backend.upload_i32(&mut self.labels, &ints)
    }

    /// Logits `[n, classes]`; in training mode BatchNorm uses batch
    /// statistics and updates the running statistics on the device.
    pub fn forward(&mut self, x: ArrayView4<'_, T>, mode: Mode) -> Result<Array2<T>, GpuError> {
        let n = self.upload_input(x, mode)?;
        self.forward_on_device(n, mode)
    }

    fn set_hyper(&mut self, opt: &Sgd, lr: f64, label_smoothing: f64) -> Result<(), GpuError> {
        let h = [
            lr,
            opt.momentum,
            opt.weight_decay,
            opt.nesterov as u8 as f64,
            label_smoothing,
        ]
        .map(T::from_f64c);
        self.backend.upload(&mut self.hyper, 0, &h)
    }

    fn outcome(&mut self, n: usize) -> Result<StepOutcome, GpuError> {
        let mut l = vec![T::zero(); 2 * n];
        self.backend.download(&self.losses, &mut l)?;
        let loss = l[..n].iter().map(|&v| v.to_f64c()).sum::<f64>() / n as f64;
        let correct = l[n..].iter().filter(|&&v| v != T::zero()).count();
        Ok(StepOutcome { loss, correct })
    }

    /// Training-mode forward, softmax cross-entropy and backward, leaving
    /// the parameter gradients on the device (see [`GpuModel::gradients`]).
    pub fn forward_backward(
        &mut self,
        x: ArrayView4<'_, T>,
        labels: &[usize],
        label_smoothing: f64,
    ) -> Result<StepOutcome, GpuError> {
        let n = self.upload_input(x, Mode::Train)?;
        self.upload_labels(labels, n)?;
        let plain = Sgd {
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        };
        self.set_hyper(&plain, 0.0, label_smoothing)?;
        let args = self.args(n, Mode::Train);
        let p = &M::GPU_PROGRAM;
        self.backend.run(p.forward_train, n, &args)?;
        self.backend.run(p.backward, n, &args)?;
        self.outcome(n)
    }

    /// One SGD step: forward, loss, backward and the update, all on the
    /// device; only the loss and accuracy come back.
    pub fn train_step(
        &mut self,
        x: ArrayView4<'_, T>,
        labels: &[usize],
        opt: &Sgd,
        lr: f64,
        label_smoothing: f64,
    ) -> Result<StepOutcome, GpuError> {
        let n = self.upload_input(x, Mode::Train)?;
        self.upload_labels(labels, n)?;
        self.step_on_device(n, opt, lr, label_smoothing)
    }

    /// Forward, loss, backward and SGD on the `n` images and labels already
    /// on the device; the loss and accuracy come back.
    fn step_on_device(
        &mut self,
        n: usize,
        opt: &Sgd,
        lr: f64,
        label_smoothing: f64,
    ) -> Result<StepOutcome, GpuError> {
        self.set_hyper(opt, lr, label_smoothing)?;
        let args = self.args(n, Mode::Train);
        let p = &M::GPU_PROGRAM;
        // Three static sequences (a backend may keep each as one graph).
        self.backend.run(p.forward_train, n, &args)?;
        self.backend.run(p.backward, n, &args)?;
        self.backend.run(p.optimizer, n, &args)?;
        self.outcome(n)
    }

    /// The logits of a forward pass in `mode` over the `n` images already
    /// on the device.
    fn forward_on_device(&mut self, n: usize, mode: Mode) -> Result<Array2<T>, GpuError> {
        let args = self.args(n, mode);
        let seq = match mode {
            Mode::Eval => M::GPU_PROGRAM.forward_eval,
            Mode::Train => M::GPU_PROGRAM.forward_train,
        };
        self.backend.run(seq, n, &args)?;
        let mut out = vec![T::zero(); n * M::CLASSES];
        self.backend.download(&self.logits, &mut out)?;
        Ok(Array2::from_shape_vec((n, M::CLASSES), out).expect("n x classes"))
    }

    fn download_vec(&mut self, which: Which, len: usize) -> Result<Vec<T>, GpuError> {
        let mut v = vec![T::zero(); len];
        let buf = match which {
            Which::Params => &self.params,
            Which::Grads => &self.grads,
            Which::State => &self.state,
            Which::Velocity => &self.velocity,
        };
        self.backend.download(buf, &mut v)?;
        Ok(v)
    }

    /// The parameter gradients of the last backward pass.
    pub fn gradients(&mut self) -> Result<Vec<T>, GpuError> {
        self.download_vec(Which::Grads, M::PARAMETERS)
    }

    /// The device's parameters, laid out as [`Model::params`].
    pub fn params(&mut self) -> Result<Vec<T>, GpuError> {
        self.download_vec(Which::Params, M::PARAMETERS)
    }

    /// The device's running statistics, laid out as [`Model::state`].
    pub fn state(&mut self) -> Result<Vec<T>, GpuError> {
        self.download_vec(Which::State, M::STATE_LEN)
    }

    /// The device's SGD velocity, laid out like the parameters (for a
    /// checkpoint).
    pub fn velocity(&mut self) -> Result<Vec<T>, GpuError> {
        self.download_vec(Which::Velocity, M::PARAMETERS)
    }

    /// Replaces the device's SGD velocity (resuming from a checkpoint).
    pub fn set_velocity(&mut self, v: &[T]) -> Result<(), GpuError> {
        assert_eq!(
            v.len(),
            M::PARAMETERS,
            "velocity is laid out like the parameters"
        );
        self.backend.upload(&mut self.velocity, 0, v)
    }

    /// Replaces the device's parameters and running statistics with
    /// `model`'s (after a `load`, say); the SGD velocity is kept.
    pub fn copy_from(&mut self, model: &M) -> Result<(), GpuError> {
        self.backend.upload(&mut self.params, 0, model.params())?;
        self.backend.upload(&mut self.state, 0, model.state())
    }

    /// Puts `ds` in device memory (its images as stored, u8, and its
    /// labels) with `transform`'s normalisation, so that each training
    /// batch is then built on the device ([`GpuModel::stage_batch`]): a
    /// step uploads only its picks. 50,000 CIFAR images take 150 MiB.
    pub fn upload_dataset(
        &mut self,
        ds: &Dataset,
        transform: &Transform,
    ) -> Result<DeviceDataset<B::Buffer>, GpuError> {
        let shape = [ds.channels, ds.height, ds.width];
        let bad = |reason: String| GpuError::Dataset {
            network: M::NAME,
            reason,
        };
        if shape != M::INPUT {
            let [c, h, w] = M::INPUT;
            return Err(bad(format!(
                "the images of {} are {}x{}x{}, the network takes {c}x{h}x{w}",
                ds.source.display(),
                shape[0],
                shape[1],
                shape[2]
            )));
        }
        if let Some(&l) = ds.labels.iter().find(|&&l| l as usize >= M::CLASSES) {
            return Err(bad(format!(
                "{} has label {l}, the network has {} classes",
                ds.source.display(),
                M::CLASSES
            )));
        }
        let lut = transform.lut();
        if lut.len() != 256 * ds.channels {
            return Err(bad(format!(
                "the normalisation has {} channel(s), the images {}",
                lut.len() / 256,
                ds.channels
            )));
        }
        let size = std::mem::size_of::<T>();
        let mut images = self.backend.alloc(ds.pixels.len().div_ceil(size).max(1))?;
        self.backend.upload_bytes(&mut images, &ds.pixels)?;
        let ints: Vec<i32> = ds.labels.iter().map(|&l| l as i32).collect();
        let mut labels = self.backend.alloc((4 * ints.len()).div_ceil(size).max(1))?;
        self.backend.upload_i32(&mut labels, &ints)?;
        let mut table = self.backend.alloc(lut.len())?;
        let lut_t: Vec<T> = lut.iter().map(|&v| T::from_f64c(v as f64)).collect();
        self.backend.upload(&mut table, 0, &lut_t)?;
        Ok(DeviceDataset {
            images,
            labels,
            lut: table,
            len: ds.len,
        })
    }

    /// Builds the next input batch and its labels on the device from
    /// `data`: image `i` is `data`'s image `picks[i].0` with the crop shift
    /// and flip `picks[i].1`, normalised, exactly as the CPU pipeline
    /// (`Transform::apply`) makes it. [`GpuModel::train_step_staged`] then
    /// trains on it.
    pub fn stage_batch(
        &mut self,
        data: &DeviceDataset<B::Buffer>,
        picks: &[(usize, Augment)],
    ) -> Result<(), GpuError> {
        let n = picks.len();
        if n == 0 || n > self.capacity {
            return Err(GpuError::Batch {
                network: M::NAME,
                capacity: self.capacity,
                found: n,
            });
        }
        let mut ints = Vec::with_capacity(4 * n);
        for &(index, aug) in picks {
            if index >= data.len {
                return Err(GpuError::Dataset {
                    network: M::NAME,
                    reason: format!("pick {index} is outside the dataset of {} images", data.len),
                });
            }
            // Shifts beyond the image read only padding; clamped to keep
            // the kernel's index arithmetic in range.
            let [_, h, w] = M::INPUT;
            let dy = aug.dy.clamp(-(h as isize), h as isize) as i32;
            let dx = aug.dx.clamp(-(w as isize), w as isize) as i32;
            ints.extend([index as i32, dy, dx, aug.flip as i32]);
        }
        self.backend.upload_i32(&mut self.picks, &ints)?;
        let mut args = self.args(n, Mode::Train);
        args.images = self.backend.address(&data.images);
        args.dataset_labels = self.backend.address(&data.labels);
        args.lut = self.backend.address(&data.lut);
        let kernel = self.augment_kernel;
        let [c, h, w] = M::INPUT;
        let launch = Launch {
            kernel,
            per_image: c * h * w,
            fixed: 0,
            block: 256,
            per_block: 256,
        };
        self.backend
            .launch(kernel, launch.blocks(n), launch.block, &args)?;
        self.staged = Some(n);
        Ok(())
    }

    /// One SGD step on the batch [`GpuModel::stage_batch`] built (nothing
    /// but the hyper-parameters goes to the device; the loss and accuracy
    /// come back). An error if no batch is staged; a staged batch is used
    /// once.
    pub fn train_step_staged(
        &mut self,
        opt: &Sgd,
        lr: f64,
        label_smoothing: f64,
    ) -> Result<StepOutcome, GpuError> {
        let n = self.staged.take().ok_or(GpuError::Dataset {
            network: M::NAME,
            reason: "no batch is staged: call stage_batch first".into(),
        })?;
        self.step_on_device(n, opt, lr, label_smoothing)
    }

    /// Inference-mode logits `[n, classes]` of the batch
    /// [`GpuModel::stage_batch`] built (used once, as by
    /// [`GpuModel::train_step_staged`]).
    pub fn infer_staged(&mut self) -> Result<Array2<T>, GpuError> {
        let n = self.staged.take().ok_or(GpuError::Dataset {
            network: M::NAME,
            reason: "no batch is staged: call stage_batch first".into(),
        })?;
        self.forward_on_device(n, Mode::Eval)
    }

    /// The first `n` images of the input batch on the device (the last
    /// one staged or uploaded), laid out `[n, C, H, W]`.
    pub fn input_batch(&mut self, n: usize) -> Result<Vec<T>, GpuError> {
        let [c, h, w] = M::INPUT;
        let len = n.min(self.capacity) * c * h * w;
        if self.precision != Precision::Bf16 {
            let mut v = vec![T::zero(); len];
            self.backend.download(&self.act, &mut v)?;
            return Ok(v);
        }
        let t = std::mem::size_of::<T>();
        let mut raw = vec![T::zero(); (2 * len).div_ceil(t)];
        self.backend.download(&self.act, &mut raw)?;
        let bytes: &[u8] = bytemuck::cast_slice(&raw);
        Ok(bytes[..2 * len]
            .chunks_exact(2)
            .map(|b| {
                T::from(half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .expect("f32 fits")
            })
            .collect())
    }

    /// Copies the device's parameters and running statistics into `model`.
    pub fn copy_to(&mut self, model: &mut M) -> Result<(), GpuError> {
        let p = self.params()?;
        let s = self.state()?;
        model.params_mut().copy_from_slice(&p);
        model.state_mut().copy_from_slice(&s);
        Ok(())
    }
}

/// Element counts of a [`GpuModel`]'s device buffers.
struct BufferLens {
    act: usize,
    gact: usize,
    aux: usize,
    params: usize,
    state: usize,
    logits: usize,
    dlogits: usize,
    labels: usize,
    losses: usize,
    hyper: usize,
    partials: usize,
}

#[derive(Clone, Copy)]
enum Which {
    Params,
    Grads,
    State,
    Velocity,
}

/// A short stable hash (FNV-1a, 64 bits) of a compiler's input, naming its
/// cached output.
pub fn cache_key(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
