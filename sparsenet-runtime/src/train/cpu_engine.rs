//! [`CpuEngine`]: the steps of a run on the generated model's own CPU
//! passes, with the batches built ahead by the loader's threads.

use ndarray::{Array2, ArrayView4};

use crate::data::{build_batch, Batch, BatchPlan, EpochBatches, Pick};
use crate::engine::{Engine, EngineData, EngineError, Split, StepOutcome, StepSpec};
use crate::loss::softmax_cross_entropy;
use crate::optim::{Sgd, SgdState};
use crate::{Float, Mode, Model, NetworkSpec};

/// The generated model's own CPU forward and backward passes. The batches
/// a run announces ([`Engine::begin`]) are built ahead by `workers`
/// background threads, as [`crate::data::epoch_batches`] builds them.
pub struct CpuEngine {
    /// The parameter gradients of the latest step, laid out like the
    /// parameters (kept between steps to avoid reallocating them).
    grads: Vec<f32>,
    workers: usize,
    data: Option<Attached>,
    /// The announced batches being built, and the split they read.
    ahead: Option<(Split, EpochBatches)>,
}

/// The attached datasets with their transforms' lookup tables.
struct Attached {
    data: EngineData,
    train_lut: Vec<f32>,
    test_lut: Vec<f32>,
}

impl CpuEngine {
    /// An engine for models of type `M`, building batches ahead on
    /// `workers` threads (0 is taken as 1).
    pub fn new<M: NetworkSpec>(workers: usize) -> Self {
        CpuEngine {
            grads: vec![0.0; M::PARAMETERS],
            workers: workers.max(1),
            data: None,
            ahead: None,
        }
    }

    /// The batch `picks` names from `split`: the one built ahead when it is
    /// the next announced batch, else built now.
    fn batch(&mut self, split: Split, picks: &[Pick]) -> Result<Batch, EngineError> {
        if let Some((s, ahead)) = &mut self.ahead {
            if *s == split {
                match ahead.next_with_picks() {
                    Some((p, batch)) if p == picks => return Ok(batch),
                    // Not what was announced: the rest of the plan is of
                    // no use either.
                    _ => self.ahead = None,
                }
            }
        }
        let att = self.data.as_ref().ok_or(EngineError::NotAttached(split))?;
        let (ds, _) = att.data.split(split);
        let lut = match split {
            Split::Train => &att.train_lut,
            Split::Test => &att.test_lut,
        };
        if let Some(&(i, _)) = picks.iter().find(|&&(i, _)| i >= ds.len) {
            return Err(EngineError::Unsupported(format!(
                "image {i} picked from a {split:?} set of {} images",
                ds.len
            )));
        }
        Ok(build_batch(ds, lut, picks))
    }
}

impl<M: Model<f32>> Engine<M> for CpuEngine {
    fn attach(&mut self, data: &EngineData) -> Result<(), EngineError> {
        self.data = Some(Attached {
            train_lut: data.train_transform.lut(),
            test_lut: data.eval_transform.lut(),
            data: data.clone(),
        });
        self.ahead = None;
        Ok(())
    }

    fn begin(&mut self, split: Split, plan: &BatchPlan, first: usize) -> Result<(), EngineError> {
        let att = self.data.as_ref().ok_or(EngineError::NotAttached(split))?;
        let (ds, _) = att.data.split(split);
        let mut plan = plan.clone();
        plan.set_workers(self.workers);
        self.ahead = Some((split, EpochBatches::new(ds.clone(), &plan, first)));
        Ok(())
    }

    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        spec: &StepSpec,
        picks: &[Pick],
    ) -> Result<StepOutcome, EngineError> {
        let batch = self.batch(Split::Train, picks)?;
        model.reseed(spec.dropout_seed());
        let (loss, correct) = train_pass(
            model,
            batch.images.view(),
            &batch.labels,
            spec.label_smoothing,
            &mut self.grads,
        )?;
        let loss = update_if_finite(
            &spec.sgd,
            opt,
            model.params_mut(),
            &self.grads,
            spec.lr,
            loss.to_f64c(),
        );
        Ok(StepOutcome { loss, correct })
    }

    fn logits(&mut self, model: &mut M, picks: &[Pick]) -> Result<Array2<f32>, EngineError> {
        let batch = self.batch(Split::Test, picks)?;
        Ok(model.forward(batch.images.view(), Mode::Eval)?)
    }

    fn sync(&mut self, _: &mut M, _: &mut SgdState<f32>) -> Result<(), EngineError> {
        Ok(())
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
) -> Result<(f32, usize), EngineError> {
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
    Ok(outcome?)
}

/// The SGD update of `params` by `grads` when the step's `loss` and every
/// gradient are finite; returns the loss to report: `loss`, or NaN for
/// finite loss with a non-finite gradient (the run then stops before any
/// update, its last checkpoint intact).
pub(crate) fn update_if_finite(
    sgd: &Sgd,
    opt: &mut SgdState<f32>,
    params: &mut [f32],
    grads: &[f32],
    lr: f64,
    loss: f64,
) -> f64 {
    if !loss.is_finite() {
        return loss;
    }
    if grads.iter().any(|g| !g.is_finite()) {
        return f64::NAN;
    }
    sgd.step(opt, params, grads, lr);
    loss
}
