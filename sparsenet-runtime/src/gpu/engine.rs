//! [`GpuEngine`]: the steps of a run on the generated GPU program.

use std::sync::Arc;

use ndarray::Array2;

use super::{Backend, DeviceDataset, GpuError, GpuModel, GpuNetwork, Precision};
use crate::data::{build_batch, Dataset, Pick, Transform};
use crate::engine::{Engine, EngineData, EngineError, Split, StepOutcome, StepSpec};
use crate::optim::SgdState;
use crate::{Mode, Model};

/// The generated GPU program on a device: parameters, running statistics
/// and SGD velocity live there, and a step (forward, loss, backward, update)
/// runs without the host; only the loss comes back. The weights update in
/// the same launch sequence as the loss, so a non-finite loss stops the run
/// one update late (the last checkpoint is untouched either way).
///
/// By default the datasets are copied to device memory once
/// ([`Engine::attach`]) and each batch is built there from its picks;
/// [`GpuEngine::host_batches`] builds them on the host instead.
pub struct GpuEngine<M: GpuNetwork, B: Backend<f32>> {
    device: GpuModel<M, B>,
    data: Option<Data<B::Buffer>>,
    host_batches: bool,
}

/// Where the batches come from.
enum Data<Buf> {
    /// The training and test sets in device memory.
    Device {
        train: DeviceDataset<Buf>,
        test: DeviceDataset<Buf>,
    },
    /// The sets on the host with their lookup tables.
    Host {
        train: (Arc<Dataset>, Vec<f32>),
        test: (Arc<Dataset>, Vec<f32>),
    },
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
    ) -> Result<Self, EngineError> {
        let mut device = GpuModel::new(backend, model, capacity, precision)?;
        device.set_velocity(&opt.velocity)?;
        Ok(GpuEngine {
            device,
            data: None,
            host_batches: false,
        })
    }

    /// Builds the batches on the host and uploads them each step, instead
    /// of keeping the datasets in device memory (the default): for a
    /// dataset larger than the device's memory, or to compare.
    pub fn host_batches(mut self) -> Self {
        self.host_batches = true;
        self
    }

    /// The model on the device (its weights are newer than the host's
    /// between checkpoints).
    pub fn device(&mut self) -> &mut GpuModel<M, B> {
        &mut self.device
    }

    /// Puts the batch `picks` of `split` in the device's input buffer;
    /// returns its labels when they must be uploaded with a host batch.
    fn stage(&mut self, split: Split, picks: &[Pick]) -> Result<Option<Batch>, EngineError> {
        match self.data.as_ref().ok_or(EngineError::NotAttached(split))? {
            Data::Device { train, test } => {
                let ds = if split == Split::Train { train } else { test };
                self.device.stage_batch(ds, picks)?;
                Ok(None)
            }
            Data::Host { train, test } => {
                let (ds, lut) = if split == Split::Train { train } else { test };
                if let Some(&(i, _)) = picks.iter().find(|&&(i, _)| i >= ds.len) {
                    return Err(EngineError::Unsupported(format!(
                        "image {i} picked from a {split:?} set of {} images",
                        ds.len
                    )));
                }
                Ok(Some(build_batch(ds, lut, picks)))
            }
        }
    }
}

type Batch = crate::data::Batch;

impl<M, B> Engine<M> for GpuEngine<M, B>
where
    M: GpuNetwork + Model<f32>,
    B: Backend<f32>,
{
    fn attach(&mut self, data: &EngineData) -> Result<(), EngineError> {
        let upload = |device: &mut GpuModel<M, B>, ds: &Arc<Dataset>, t: &Transform| {
            device.upload_dataset(ds, t).map_err(EngineError::from)
        };
        self.data = Some(if self.host_batches {
            Data::Host {
                train: (data.train.clone(), data.train_transform.lut()),
                test: (data.test.clone(), data.eval_transform.lut()),
            }
        } else {
            Data::Device {
                train: upload(&mut self.device, &data.train, &data.train_transform)?,
                test: upload(&mut self.device, &data.test, &data.eval_transform)?,
            }
        });
        Ok(())
    }

    fn step(
        &mut self,
        _: &mut M,
        _: &mut SgdState<f32>,
        spec: &StepSpec,
        picks: &[Pick],
    ) -> Result<StepOutcome, EngineError> {
        let out = match self.stage(Split::Train, picks)? {
            None => self
                .device
                .train_step_staged(&spec.sgd, spec.lr, spec.label_smoothing),
            Some(b) => self.device.train_step(
                b.images.view(),
                &b.labels,
                &spec.sgd,
                spec.lr,
                spec.label_smoothing,
            ),
        }?;
        Ok(StepOutcome {
            loss: out.loss,
            correct: out.correct,
        })
    }

    fn logits(&mut self, _: &mut M, picks: &[Pick]) -> Result<Array2<f32>, EngineError> {
        match self.stage(Split::Test, picks)? {
            None => self.device.infer_staged(),
            Some(b) => self.device.forward(b.images.view(), Mode::Eval),
        }
        .map_err(EngineError::from)
    }

    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), EngineError> {
        self.device.copy_to(model)?;
        opt.velocity = self.device.velocity()?;
        Ok(())
    }
}

impl From<GpuError> for EngineError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Input(e) => EngineError::Input(e),
            e => EngineError::backend(e),
        }
    }
}
