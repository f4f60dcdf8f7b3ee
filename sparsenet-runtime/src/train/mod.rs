//! Training support: optimiser, learning-rate schedules and the paper's recipe,
//! loss, checkpoints, and metrics logs with plots.
//!
//! * [`optim`]: SGD with (Nesterov) momentum and weight decay, PyTorch semantics.
//! * [`schedule`]: learning rate per fractional epoch (warm-up, step, cosine),
//!   [`Recipe::paper`] (the SparseNet paper's CIFAR recipe), and a parser for
//!   schedule strings.
//! * [`loss`]: softmax cross-entropy with label smoothing and its gradient.
//! * [`checkpoint`]: model, optimiser velocity and progress in one safetensors
//!   file, saved atomically.
//! * [`metrics`]: per-epoch records as CSV (atomically rewritten, readable for
//!   resumed runs) and a PNG of the loss and accuracy curves.

pub mod checkpoint;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod schedule;

pub use checkpoint::{
    load_checkpoint, load_checkpoint_for, read_checkpoint_progress, save_checkpoint,
    CheckpointError, TrainProgress,
};
pub use loss::{softmax_cross_entropy, softmax_cross_entropy_into};
pub use metrics::{EpochRecord, MetricsError, MetricsLog};
pub use optim::{Sgd, SgdState};
pub use schedule::{paper_recipe, parse_schedule, LrPolicy, Recipe, Schedule};
