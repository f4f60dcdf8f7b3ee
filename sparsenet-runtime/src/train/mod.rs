//! Training: the training loop and its parts (optimiser, learning-rate
//! schedules and the paper's recipe, loss, checkpoints, and metrics logs with
//! plots).
//!
//! * [`trainer`]: [`Trainer`], the loop a user drives epoch by epoch or runs
//!   whole ([`Trainer::fit`], [`train`], [`train_with`]), with per-epoch
//!   evaluation, metrics, atomic checkpoints and bitwise-exact resumption.
//! * [`config`]: [`TrainConfig`], the settings of a run, and [`TrainError`].
//! * [`engine`]: where the steps run: [`CpuEngine`] (the generated CPU code)
//!   or [`GpuEngine`] (the generated GPU program on a backend).
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
pub mod config;
pub mod engine;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use checkpoint::{
    load_checkpoint, load_checkpoint_for, read_checkpoint_progress, save_checkpoint,
    CheckpointError, TrainProgress,
};
pub use config::{TrainConfig, TrainError};
pub use engine::{CpuEngine, Engine, GpuEngine};
pub use loss::{softmax_cross_entropy, softmax_cross_entropy_into, LossError};
pub use metrics::{EpochRecord, MetricsError, MetricsLog};
pub use optim::{Sgd, SgdState};
pub use run_dir::{
    check_writable, install_sigint_handler, remove_stale_temp_files, RunDirError, RunLock,
};
pub use schedule::{
    paper_recipe, parse_schedule, LrParam, LrPolicy, LrPolicyError, Recipe, Schedule,
};
pub use step::{loss_and_gradients, BatchOutcome, Gradients, StepError};
pub use trainer::{
    check_out_dir, evaluate, evaluate_on, load_weights_any, train, train_with, TrainReport, Trainer,
};
