//! Training: the loop and what a run keeps on disk (learning-rate
//! schedules and the paper's recipe, checkpoints, the resume policy, the
//! run folder, metrics logs with plots), and the CPU engine.
//!
//! * [`Trainer`]: the loop a user drives epoch by epoch or runs whole
//!   ([`Trainer::fit`], [`train`], [`train_with`]), with per-epoch
//!   evaluation, metrics, atomic checkpoints and bitwise-exact resumption;
//!   it hands its [`Engine`](crate::engine::Engine) batches as picks.
//! * [`TrainConfig`]: the settings of a run, and [`TrainError`].
//! * [`CpuEngine`]: the steps on the generated model's own CPU passes (the
//!   GPU's engine is [`crate::gpu::GpuEngine`], the data-parallel one
//!   [`crate::distributed::DataParallel`]).
//! * schedules: learning rate per fractional epoch (warm-up, step, cosine),
//!   [`Recipe::paper`] (the SparseNet paper's CIFAR recipe), and a parser
//!   for schedule strings.
//! * checkpoints: model, optimiser velocity and progress in one
//!   safetensors file, saved atomically; the resume policy checks a run's
//!   settings against the checkpoint's.
//! * metrics: per-epoch records as CSV (atomically rewritten, readable for
//!   resumed runs) and a PNG of the loss and accuracy curves.
//! * [`loss_and_gradients`]: one step's gradients by tensor name, for a
//!   user's own loop.
//!
//! The loop names no backend: it runs on any [`Engine`](crate::engine::Engine).

mod checkpoint;
mod config;
mod cpu_engine;
mod metrics;
mod resume;
pub(crate) mod run_dir;
mod schedule;
mod step;
mod trainer;

pub use checkpoint::{
    load_checkpoint, load_checkpoint_for, load_weights_any, read_checkpoint_progress,
    save_checkpoint, CheckpointError, TrainProgress, RESERVED_KEYS,
};
pub use config::{TrainConfig, TrainError};
pub use cpu_engine::CpuEngine;
pub(crate) use cpu_engine::{train_pass, update_if_finite};
pub use metrics::{EpochRecord, MetricsError, MetricsLog};
pub use run_dir::RunDirError;
pub use schedule::{
    paper_recipe, parse_schedule, LrParam, LrPolicy, LrPolicyError, Recipe, Schedule,
};
pub use step::{loss_and_gradients, BatchOutcome, Gradients, StepError};
pub use trainer::{evaluate, train, train_with, TrainReport, Trainer};

/// Writes one line to stdout, ignoring a failure: with stdout closed
/// (`train ... | head -1`) `println!` panics, which stopped the run before
/// its next checkpoint. The lines only report progress; the run's results
/// are the checkpoint and metrics files, which are written regardless.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
