//! Where a training run's steps execute: the [`Engine`] trait, the CPU path
//! of a generated model ([`CpuEngine`]) and its GPU program on a
//! [`Backend`] ([`GpuEngine`]). The loop, data, schedule, metrics and
//! checkpoints of [`Trainer`](super::Trainer) are the same on every engine.

use std::sync::Arc;

use ndarray::{Array2, ArrayView4};

use super::config::{TrainConfig, TrainError};
use super::loss::softmax_cross_entropy;
use super::optim::SgdState;
use crate::data::{Augment, Dataset, Transform};
use crate::gpu::{Backend, DeviceDataset, GpuModel, GpuNetwork, Precision};
use crate::{Float, Mode, Model, NetworkSpec};

/// Where a run's steps execute: the CPU path of the generated model, or
/// its GPU program on a [`Backend`]. The training loop, data, schedule,
/// metrics and checkpoints are the same.
pub trait Engine<M: Model<f32>> {
    /// One SGD step on a batch; returns the mean loss and the number of
    /// correct predictions, or a non-finite loss as is.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        global_step: u64,
    ) -> Result<(f64, usize), TrainError>;
    /// Eval-mode logits.
    fn logits(
        &mut self,
        model: &mut M,
        images: ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError>;
    /// Brings `model` and `opt` on the host up to date (before a checkpoint).
    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), TrainError>;

    /// Given the training set and its normalisation once, before the first
    /// step: an engine that keeps the data in its own memory takes it here
    /// and then builds its batches itself ([`Engine::step_picks`]).
    fn attach_training_data(&mut self, _: &Arc<Dataset>, _: &Transform) -> Result<(), TrainError> {
        Ok(())
    }

    /// Given the test set and its normalisation once: an engine that keeps
    /// it in its own memory evaluates from picks ([`Engine::logits_picks`]).
    fn attach_eval_data(&mut self, _: &Arc<Dataset>, _: &Transform) -> Result<(), TrainError> {
        Ok(())
    }

    /// Whether evaluation on the attached test set goes through
    /// [`Engine::logits_picks`].
    fn eval_takes_picks(&self) -> bool {
        false
    }

    /// Eval-mode logits of the test-set images `picks` names, built by the
    /// engine from the data it was given ([`Engine::attach_eval_data`]).
    fn logits_picks(
        &mut self,
        _model: &mut M,
        _picks: &[(usize, Augment)],
    ) -> Result<Array2<f32>, TrainError> {
        Err(TrainError::Config(
            "this engine keeps no test set of its own: give it images (logits)".into(),
        ))
    }

    /// Whether the trainer should hand this engine picks (dataset index and
    /// augmentation per image, [`Engine::step_picks`]) instead of images.
    fn takes_picks(&self) -> bool {
        false
    }

    /// One SGD step on the batch `picks` describes, built by the engine
    /// from the data it was given ([`Engine::attach_training_data`]): the
    /// same batch the host loader would build from those picks.
    #[allow(clippy::too_many_arguments)]
    fn step_picks(
        &mut self,
        _model: &mut M,
        _opt: &mut SgdState<f32>,
        _cfg: &TrainConfig,
        _picks: &[(usize, Augment)],
        _lr: f64,
        _global_step: u64,
    ) -> Result<(f64, usize), TrainError> {
        Err(TrainError::Config(
            "this engine builds no batches of its own: give it images (step)".into(),
        ))
    }
}

/// The generated model's own CPU forward and backward passes.
pub struct CpuEngine {
    /// The parameter gradients of the latest step, laid out like the
    /// parameters (kept between steps to avoid reallocating them).
    grads: Vec<f32>,
}

impl CpuEngine {
    /// An engine for models of type `M` (sizes its gradient buffer).
    pub fn new<M: NetworkSpec>() -> Self {
        CpuEngine {
            grads: vec![0.0; M::PARAMETERS],
        }
    }
}

impl<M: Model<f32>> Engine<M> for CpuEngine {
    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        global_step: u64,
    ) -> Result<(f64, usize), TrainError> {
        model.reseed(mix(cfg.seed, global_step));
        let (loss, c) = train_pass(model, images, labels, cfg.label_smoothing, &mut self.grads)?;
        let loss = loss.to_f64c();
        if !loss.is_finite() {
            return Ok((loss, c));
        }
        if self.grads.iter().any(|g| !g.is_finite()) {
            // Reported as a non-finite loss: the run stops before updating.
            return Ok((f64::NAN, c));
        }
        cfg.sgd.step(opt, model.params_mut(), &self.grads, lr);
        Ok((loss, c))
    }

    fn logits(
        &mut self,
        model: &mut M,
        images: ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError> {
        Ok(model.forward(images, Mode::Eval)?)
    }

    fn sync(&mut self, _: &mut M, _: &mut SgdState<f32>) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The generated GPU program on a device: parameters, running statistics
/// and SGD velocity live there, and a step (forward, loss, backward, update)
/// runs without the host; only the loss comes back. The weights update in
/// the same launch sequence as the loss, so a non-finite loss stops the run
/// one update late (the last checkpoint is untouched either way).
pub struct GpuEngine<M: GpuNetwork, B: Backend<f32>> {
    device: GpuModel<M, B>,
    /// The training set in device memory, once attached (unless
    /// `host_batches`): each step then uploads only its picks.
    data: Option<DeviceDataset<B::Buffer>>,
    /// The test set in device memory, likewise.
    eval_data: Option<DeviceDataset<B::Buffer>>,
    host_batches: bool,
}

impl<M, B> GpuEngine<M, B>
where
    M: GpuNetwork + Model<f32>,
    B: Backend<f32>,
{
    /// Uploads `model` and `opt` to `backend`, for batches up to `capacity`,
    /// with the convolutions' products in `precision`.
    pub fn new(
        backend: B,
        model: &M,
        opt: &SgdState<f32>,
        capacity: usize,
        precision: Precision,
    ) -> Result<Self, TrainError> {
        let mut device = GpuModel::new(backend, model, capacity, precision)?;
        device.set_velocity(&opt.velocity)?;
        Ok(GpuEngine {
            device,
            data: None,
            eval_data: None,
            host_batches: false,
        })
    }

    /// Builds the training batches on the host and uploads them each step,
    /// instead of keeping the training set in device memory (the default):
    /// for a dataset larger than the device's memory, or to compare.
    pub fn host_batches(mut self) -> Self {
        self.host_batches = true;
        self
    }

    /// The model on the device (its weights are newer than the host's
    /// between checkpoints).
    pub fn device(&mut self) -> &mut GpuModel<M, B> {
        &mut self.device
    }
}

impl<M, B> Engine<M> for GpuEngine<M, B>
where
    M: GpuNetwork + Model<f32>,
    B: Backend<f32>,
{
    fn step(
        &mut self,
        _: &mut M,
        _: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        _: u64,
    ) -> Result<(f64, usize), TrainError> {
        let out = self
            .device
            .train_step(images, labels, &cfg.sgd, lr, cfg.label_smoothing)?;
        Ok((out.loss, out.correct))
    }

    fn logits(
        &mut self,
        _: &mut M,
        images: ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError> {
        Ok(self.device.forward(images, Mode::Eval)?)
    }

    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), TrainError> {
        self.device.copy_to(model)?;
        opt.velocity = self.device.velocity()?;
        Ok(())
    }

    fn attach_training_data(
        &mut self,
        train: &Arc<Dataset>,
        transform: &Transform,
    ) -> Result<(), TrainError> {
        if !self.host_batches {
            self.data = Some(self.device.upload_dataset(train, transform)?);
        }
        Ok(())
    }

    fn takes_picks(&self) -> bool {
        self.data.is_some()
    }

    fn attach_eval_data(
        &mut self,
        test: &Arc<Dataset>,
        transform: &Transform,
    ) -> Result<(), TrainError> {
        if !self.host_batches {
            self.eval_data = Some(self.device.upload_dataset(test, transform)?);
        }
        Ok(())
    }

    fn eval_takes_picks(&self) -> bool {
        self.eval_data.is_some()
    }

    fn logits_picks(
        &mut self,
        _: &mut M,
        picks: &[(usize, Augment)],
    ) -> Result<Array2<f32>, TrainError> {
        let data = self
            .eval_data
            .as_ref()
            .ok_or_else(|| TrainError::Config("the test set is not on the device".into()))?;
        self.device.stage_batch(data, picks)?;
        Ok(self.device.infer_staged()?)
    }

    fn step_picks(
        &mut self,
        _: &mut M,
        _: &mut SgdState<f32>,
        cfg: &TrainConfig,
        picks: &[(usize, Augment)],
        lr: f64,
        _: u64,
    ) -> Result<(f64, usize), TrainError> {
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| TrainError::Config("the training data is not on the device".into()))?;
        self.device.stage_batch(data, picks)?;
        let out = self
            .device
            .train_step_staged(&cfg.sgd, lr, cfg.label_smoothing)?;
        Ok((out.loss, out.correct))
    }
}

/// One training-mode forward and backward pass with the label-smoothed
/// softmax cross-entropy: the batch's mean loss and correct predictions,
/// the parameter gradients into `grads`.
pub(crate) fn train_pass<M: Model<f32>>(
    model: &mut M,
    images: ArrayView4<'_, f32>,
    labels: &[usize],
    smoothing: f64,
    grads: &mut [f32],
) -> Result<(f32, usize), TrainError> {
    let mut outcome = Ok((0.0f32, 0usize));
    model.forward_backward(
        images,
        Mode::Train,
        grads,
        &mut |logits| match softmax_cross_entropy(logits.view(), labels, smoothing) {
            Ok((l, d, c)) => {
                outcome = Ok((l, c));
                d
            }
            Err(e) => {
                outcome = Err(e);
                Array2::zeros(logits.raw_dim())
            }
        },
    )?;
    outcome.map_err(TrainError::Loss)
}

/// Mixes a run seed and a counter into a well-spread 64-bit seed (the
/// dropout seed of a step, so that a resumed run draws the same masks).
pub(crate) fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
