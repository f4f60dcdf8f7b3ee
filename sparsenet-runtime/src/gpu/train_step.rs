//! The training step on the device: forward, loss, backward and the SGD
//! update as three launch sequences, with only the hyper-parameters going
//! to the device and the loss and accuracy coming back.

use super::{Backend, GpuError, GpuModel, GpuNetwork, Sgd};
use crate::model::Model;
use crate::{Float, Mode};
use ndarray::ArrayView4;

/// Loss and accuracy of one training step on the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the batch (softmax cross-entropy, with the step's
    /// label smoothing).
    pub loss: f64,
    /// Images whose prediction (the first largest logit) is their label.
    pub correct: usize,
}

impl<T: Float, M: GpuNetwork + Model<T>, B: Backend<T>> GpuModel<M, B, T> {
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
}
