//! What a device must provide ([`Backend`]: compile, allocate, copy,
//! launch, wait), the one argument every kernel takes ([`KernelArgs`]), and
//! what can go wrong on the GPU path ([`GpuError`]).

use super::{GpuProgram, Launch, Precision};
use crate::model::InputError;

/// The one argument of every kernel (`struct Args` in
/// `kernels/common.cuh`): device addresses, the batch size and the mode.
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
    /// The parameters, laid out as [`Model::params`](crate::model::Model::params).
    pub params: u64,
    /// The parameter gradients, laid out like the parameters.
    pub grads: u64,
    /// The running statistics, laid out as [`Model::state`](crate::model::Model::state).
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
    /// ([`GpuModel::upload_dataset`](super::GpuModel::upload_dataset)); 0
    /// when none.
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
    /// [`GpuModel::new`](super::GpuModel::new) was given a network whose
    /// program says it cannot run on the GPU ([`GpuProgram::unsupported`],
    /// e.g. with dropout).
    #[error("{network}: the GPU path cannot run this network: {reason}")]
    Unsupported {
        /// The network's [`NetworkSpec::NAME`](crate::model::NetworkSpec::NAME).
        network: &'static str,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// The generated kernels did not compile, or the compiler could not be
    /// found or run.
    #[error("{network}: compiling the generated kernels failed ({compiler}):\n{log}")]
    Compile {
        /// The network's [`NetworkSpec::NAME`](crate::model::NetworkSpec::NAME).
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
    /// A batch of no image, or of more than the model was created for (also
    /// when [`GpuModel::new`](super::GpuModel::new) is asked for a capacity
    /// of 0).
    #[error("{network}: expected a batch of 1..={capacity} images (the size this GPU model was created for), found {found}")]
    Batch {
        /// The network's [`NetworkSpec::NAME`](crate::model::NetworkSpec::NAME).
        network: &'static str,
        /// The largest batch the model has memory for.
        capacity: usize,
        /// The batch size given.
        found: usize,
    },
    /// A dataset that does not fit the network, or a pick outside it
    /// ([`GpuModel::upload_dataset`](super::GpuModel::upload_dataset),
    /// [`GpuModel::stage_batch`](super::GpuModel::stage_batch)).
    #[error("{network}: {reason}")]
    Dataset {
        /// The network's [`NetworkSpec::NAME`](crate::model::NetworkSpec::NAME).
        network: &'static str,
        /// What does not fit, with the values.
        reason: String,
    },
    /// Not one label per image, or a label that is not a class.
    #[error("{network}: expected {expected} labels in 0..{classes}, found {found}")]
    Labels {
        /// The network's [`NetworkSpec::NAME`](crate::model::NetworkSpec::NAME).
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

/// A short stable hash (FNV-1a, 64 bits) of a compiler's input, naming its
/// cached output.
pub(crate) fn cache_key(parts: &[&[u8]]) -> String {
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
