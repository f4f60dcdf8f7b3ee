//! [`GpuModel`]: a network's device memory, allocated once from the
//! compile-time plan, and what moves between it and the host (the input
//! batch, labels, parameters, running statistics, velocity), with the
//! forward pass. The training step is in `train_step.rs`, the dataset on
//! the device and batch staging in `dataset.rs`.

use super::{Backend, GpuError, GpuNetwork, KernelArgs, Launch, Precision};
use crate::model::{check_input, Model};
use crate::{Float, Mode};
use ndarray::{Array2, ArrayView4};
use std::marker::PhantomData;

/// A network's parameters, statistics and working memory on a device.
///
/// The fields the training step (`train_step.rs`) and the staging of
/// batches (`dataset.rs`) use are visible to those modules; the other
/// buffers only to this one.
pub struct GpuModel<M: GpuNetwork, B: Backend<T>, T: Float = f32> {
    pub(super) backend: B,
    pub(super) capacity: usize,
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
    pub(super) losses: B::Buffer,
    pub(super) hyper: B::Buffer,
    /// Doubles, allocated as enough `T`s.
    partials: B::Buffer,
    /// The batch size of a batch [`GpuModel::stage_batch`] built and no
    /// step used yet.
    pub(super) staged: Option<usize>,
    /// The staged batch's picks (4 `int`s per image), as enough `T`s.
    pub(super) picks: B::Buffer,
    /// The program's input-staging launch ([`GpuProgram::stage_input`](super::GpuProgram::stage_input)),
    /// checked once here, not per step.
    pub(super) stage_input: Launch,
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
        // Before compiling: a program that does not fit is refused at once.
        let program = |reason| GpuError::Program {
            network: M::NAME,
            reason,
        };
        let stage_input = prog.check(M::INPUT).map_err(program)?;
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
            stage_input,
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

    /// The kernels' argument for a batch of `n` in `mode`: the buffers'
    /// addresses (no dataset: [`GpuModel::stage_batch`] adds its own).
    pub(super) fn args(&self, n: usize, mode: Mode) -> KernelArgs {
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

    pub(super) fn upload_input(
        &mut self,
        x: ArrayView4<'_, T>,
        mode: Mode,
    ) -> Result<usize, GpuError> {
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

    pub(super) fn upload_labels(&mut self, labels: &[usize], n: usize) -> Result<(), GpuError> {
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

    /// Logits `[n, classes]`; in training mode BatchNorm uses batch
    /// statistics and updates the running statistics on the device.
    pub fn forward(&mut self, x: ArrayView4<'_, T>, mode: Mode) -> Result<Array2<T>, GpuError> {
        let n = self.upload_input(x, mode)?;
        self.forward_on_device(n, mode)
    }

    /// The logits of a forward pass in `mode` over the `n` images already
    /// on the device.
    pub(super) fn forward_on_device(
        &mut self,
        n: usize,
        mode: Mode,
    ) -> Result<Array2<T>, GpuError> {
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
