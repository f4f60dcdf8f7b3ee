//! The one protocol between a training loop and the place its steps run.
//!
//! The loop ([`crate::train::Trainer`], or a user's own) gives an [`Engine`]
//! the datasets once ([`Engine::attach`]), then asks for steps and
//! evaluation logits batch by batch. A batch is always described the same
//! way, by its [`Pick`]s (dataset index and augmentation per image, from a
//! [`BatchPlan`], deterministic by seed, epoch and batch), never by images:
//! each engine builds its batches where its arithmetic runs. The CPU engine
//! builds images on background threads ahead of the steps
//! ([`Engine::begin`] tells it what comes), the GPU engine from the data in
//! device memory, a data-parallel rank only its share. What a step needs
//! besides its batch is a [`StepSpec`], not the run's whole configuration.
//!
//! The engines live with what they run on: `train::CpuEngine` (the
//! generated model's own passes), `gpu::GpuEngine`, and
//! `distributed::DataParallel`. Their failures reach the loop as an
//! [`EngineError`], which names no backend.

use std::sync::Arc;

use ndarray::Array2;

use crate::data::{BatchPlan, Dataset, Pick, Transform};
use crate::loss::LossError;
use crate::model::{InputError, Model};
use crate::optim::{Sgd, SgdState};

/// Which of the attached datasets a pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training set, through the training transform (augmentation).
    Train,
    /// The test set, through the evaluation transform.
    Test,
}

/// The data an engine builds its batches from, given once before the
/// first batch ([`Engine::attach`]).
#[derive(Clone, Debug)]
pub struct EngineData {
    /// The training set.
    pub train: Arc<Dataset>,
    /// Its normalisation, with the run's augmentation.
    pub train_transform: Arc<Transform>,
    /// The test set.
    pub test: Arc<Dataset>,
    /// Its normalisation, without augmentation.
    pub eval_transform: Arc<Transform>,
}

impl EngineData {
    /// The dataset and transform of `split`.
    pub fn split(&self, split: Split) -> (&Arc<Dataset>, &Arc<Transform>) {
        match split {
            Split::Train => (&self.train, &self.train_transform),
            Split::Test => (&self.test, &self.eval_transform),
        }
    }
}

/// What one training step needs besides its batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSpec {
    /// The learning rate of this step.
    pub lr: f64,
    /// Steps done before this one in the whole run (the dropout masks'
    /// stream, so that a resumed run draws the same masks).
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// Label smoothing of the loss, in `[0, 1)`.
    pub label_smoothing: f64,
    /// The optimiser's hyper-parameters.
    pub sgd: Sgd,
}

impl StepSpec {
    /// The seed of this step's dropout masks.
    pub fn dropout_seed(&self) -> u64 {
        stream_seed(self.seed, self.step)
    }
}

/// A step's mean loss over its batch (non-finite when the run diverged:
/// the engine then did not update the weights, unless it says otherwise)
/// and its number of correct predictions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The batch's mean loss.
    pub loss: f64,
    /// Images whose highest logit is their label.
    pub correct: usize,
}

/// Where a run's steps execute. Every engine is handed the same things:
/// the datasets once, then batches as picks.
pub trait Engine<M: Model<f32>> {
    /// Takes the datasets, before the first batch. An engine that keeps
    /// data in its own memory (the GPU's) copies it there now.
    fn attach(&mut self, data: &EngineData) -> Result<(), EngineError>;

    /// Says that the batches `first..plan.len()` of `plan` over `split`
    /// will be asked for next, in order: an engine that builds batches
    /// ahead (the CPU's loader threads) starts here. Picks that differ
    /// from the plan's are still served, only not ahead.
    fn begin(&mut self, split: Split, plan: &BatchPlan, first: usize) -> Result<(), EngineError> {
        let _ = (split, plan, first);
        Ok(())
    }

    /// One optimiser step of `model` on the training-set batch `picks`.
    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        spec: &StepSpec,
        picks: &[Pick],
    ) -> Result<StepOutcome, EngineError>;

    /// Eval-mode logits of the test-set batch `picks`.
    fn logits(&mut self, model: &mut M, picks: &[Pick]) -> Result<Array2<f32>, EngineError>;

    /// Brings `model` and `opt` on the host up to date (before a
    /// checkpoint); a no-op for an engine that trains them in place.
    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), EngineError>;
}

/// Why an engine could not run a step or an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A batch the model does not accept.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The loss could not be computed (a label out of range, ...).
    #[error(transparent)]
    Loss(#[from] LossError),
    /// A batch asked for before its data was attached.
    #[error("the engine has no {0:?} data: attach the datasets first")]
    NotAttached(Split),
    /// A batch this engine cannot run as configured.
    #[error("{0}")]
    Unsupported(String),
    /// The device or the collective under the engine failed (a GPU
    /// driver error, a rank that stopped, ...).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl EngineError {
    /// A backend's own error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        EngineError::Backend(Box::new(e))
    }
}

/// The seed of stream `n` of a run seed (SplitMix64's finaliser over their
/// combination): a step's dropout masks, a rank's.
pub(crate) fn stream_seed(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
