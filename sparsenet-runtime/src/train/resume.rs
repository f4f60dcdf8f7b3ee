//! The resume policy of a run: where a run starts (fresh, or from its
//! checkpoint: weights, optimiser state, progress, the running sums of an
//! interrupted epoch), what a checkpoint records of the run's settings, and
//! which changed settings refuse a resume.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use super::checkpoint::{load_checkpoint_for, TrainProgress};
use super::config::{TrainConfig, TrainError};
use super::metrics::MetricsLog;
use super::say;
use super::schedule::Schedule;
use crate::data::Transform;
use crate::optim::SgdState;
use crate::Model;

/// The model, optimiser and progress a run starts from: fresh, or restored
/// from the checkpoint.
pub(crate) struct Start<M> {
    pub(crate) model: M,
    pub(crate) opt: SgdState<f32>,
    pub(crate) metrics: MetricsLog,
    pub(crate) epoch: u64,
    pub(crate) step: u64,
    pub(crate) elapsed_before: f64,
    pub(crate) epoch_step: u64,
    pub(crate) partial: Option<EpochSums>,
}

impl<M: Model<f32>> Start<M> {
    /// A model initialised from the seed, zero velocity, no history.
    pub(crate) fn fresh(cfg: &TrainConfig) -> Self {
        Start {
            model: M::new(cfg.seed),
            opt: cfg.sgd.init::<f32>(M::PARAMETERS),
            metrics: MetricsLog::new(),
            epoch: 0,
            step: 0,
            elapsed_before: 0.0,
            epoch_step: 0,
            partial: None,
        }
    }

    /// Loads the checkpoint of `cfg` (which must be from the same model, and
    /// with the same settings unless `cfg.resume_with_changes`) and the
    /// metrics up to its epoch; with epochs of `steps_per_epoch` steps.
    pub(crate) fn resume(
        mut self,
        cfg: &TrainConfig,
        steps_per_epoch: u64,
    ) -> Result<Self, TrainError> {
        let ckpt = cfg.checkpoint_path();
        let (params, state) = self.model.stores_mut();
        let progress = load_checkpoint_for(
            &ckpt,
            M::NAME,
            M::tensors(),
            params,
            state,
            &mut self.opt.velocity,
        )?;
        let changes = changed_settings(cfg, &progress);
        if !changes.is_empty() && !cfg.resume_with_changes {
            return Err(TrainError::SettingsChanged {
                checkpoint: ckpt,
                changes,
            });
        }
        let stored = run_settings(cfg)
            .iter()
            .filter(|(key, _, _)| progress.extra.contains_key(*key))
            .count();
        if stored == 0 && cfg.verbose && cfg.primary {
            // Checkpoints written before the settings were stored: refusing
            // them would strand their runs, so they resume unchecked.
            eprintln!(
                "warning: {} stores no run settings (an older checkpoint): only the model and \
                 the seed are checked against this run's",
                ckpt.display()
            );
        }
        self.epoch = progress.epoch;
        self.step = progress.step;
        self.epoch_step = mid_epoch(&ckpt, &progress, steps_per_epoch)?;
        if self.epoch_step > 0 {
            let meta = |key: &str| progress.extra.get(key).map(String::as_str).unwrap_or("");
            let bad = |key: &str| TrainError::Resume {
                checkpoint: ckpt.clone(),
                problem: format!(
                    "metadata `{key}` of the interrupted epoch is missing or malformed: `{}`",
                    crate::files::excerpt(meta(key))
                ),
            };
            let float = |key: &str| meta(key).parse::<f64>().map_err(|_| bad(key));
            let count = |key: &str| meta(key).parse::<usize>().map_err(|_| bad(key));
            let mut tally = EpochSums::start(float("epoch_lr")?);
            tally.loss_sum = float("epoch_loss_sum")?;
            tally.correct = count("epoch_correct")?;
            tally.seen = count("epoch_seen")?;
            tally.secs_before = float("epoch_secs")?;
            self.partial = Some(tally);
        }
        let csv = cfg.metrics_csv_path();
        if csv.exists() {
            self.metrics = MetricsLog::read_csv(&csv)?;
            self.metrics.truncate_after_epoch(self.epoch);
        }
        self.elapsed_before = self.metrics.records().last().map_or(0.0, |r| r.elapsed_sec);
        if cfg.verbose && cfg.primary {
            say(format_args!(
                "resumed from {} at epoch {}, step {}{}",
                ckpt.display(),
                self.epoch,
                self.step,
                match self.epoch_step {
                    0 => String::new(),
                    k => format!(" ({k} steps into epoch {})", self.epoch + 1),
                }
            ));
            for (flag, old, new) in &changes {
                say(format_args!(
                    "  with a changed setting: {flag} {old} -> {new}"
                ));
            }
        }
        Ok(self)
    }
}

/// Metadata key of a mid-epoch checkpoint: the steps of the unfinished
/// epoch already trained.
const EPOCH_STEP: &str = "epoch_step";

/// The steps of the unfinished epoch a checkpoint holds (0 at an epoch's
/// end); an error if they do not fit in an epoch of `steps_per_epoch`.
fn mid_epoch(
    ckpt: &Path,
    progress: &TrainProgress,
    steps_per_epoch: u64,
) -> Result<u64, TrainError> {
    let Some(text) = progress.extra.get(EPOCH_STEP) else {
        return Ok(0);
    };
    match text.parse::<u64>() {
        Ok(k) if k < steps_per_epoch => Ok(k),
        _ => Err(TrainError::Resume {
            checkpoint: ckpt.to_path_buf(),
            problem: format!(
                "it was written {} steps into epoch {}, but this run's epochs have {} steps: a \
                 run interrupted mid-epoch resumes only with the same batch size and steps per \
                 epoch",
                crate::files::excerpt(text),
                progress.epoch.saturating_add(1),
                steps_per_epoch
            ),
        }),
    }
}

/// The settings a checkpoint stores to refuse a resume that changes them:
/// (metadata key, setting name, value); the names are [`TrainConfig`]'s
/// (the command line maps them to its flags). Floats print so that they parse back to
/// the same value. The model and the seed are stored by the checkpoint
/// itself.
fn run_settings(cfg: &TrainConfig) -> Vec<(&'static str, &'static str, String)> {
    let schedule = match &cfg.lr.schedule {
        Schedule::Constant => "constant".to_string(),
        Schedule::Step { milestones, gamma } => format!(
            "step:{} (gamma {gamma:?})",
            milestones
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Schedule::Cosine { min_lr } => format!("cosine:{min_lr:?}"),
    };
    vec![
        ("run.epochs", "epochs", cfg.epochs.to_string()),
        ("run.batch_size", "batch_size", cfg.batch_size.to_string()),
        ("run.lr", "lr", format!("{:?}", cfg.lr.base_lr)),
        ("run.schedule", "schedule", schedule),
        (
            "run.warmup",
            "warmup_epochs",
            format!("{:?}", cfg.lr.warmup_epochs),
        ),
        (
            "run.momentum",
            "momentum",
            format!("{:?}", cfg.sgd.momentum),
        ),
        ("run.nesterov", "nesterov", cfg.sgd.nesterov.to_string()),
        (
            "run.weight_decay",
            "weight_decay",
            format!("{:?}", cfg.sgd.weight_decay),
        ),
        (
            "run.label_smoothing",
            "label_smoothing",
            format!("{:?}", cfg.label_smoothing),
        ),
        ("run.pad_crop", "pad_crop", cfg.pad_crop.to_string()),
        ("run.hflip", "hflip", cfg.hflip.to_string()),
        (
            "run.steps_per_epoch",
            "max_steps_per_epoch",
            cfg.max_steps_per_epoch
                .map_or("all".into(), |n| n.to_string()),
        ),
    ]
}

/// Each setting of `cfg` that differs from the checkpoint's: (setting, the
/// checkpoint's value, this run's). Settings the checkpoint does not store
/// (older checkpoints) are not compared; the seed always is.
fn changed_settings(cfg: &TrainConfig, progress: &TrainProgress) -> Vec<(String, String, String)> {
    let mut changes = Vec::new();
    for (key, flag, new) in run_settings(cfg) {
        if let Some(old) = progress.extra.get(key) {
            if *old != new {
                changes.push((flag.to_string(), old.clone(), new));
            }
        }
    }
    if progress.seed != cfg.seed {
        changes.push((
            "seed".into(),
            progress.seed.to_string(),
            cfg.seed.to_string(),
        ));
    }
    changes
}

/// What a checkpoint carries besides the progress, so that the trained
/// model can be used without the training data and a resume can check its
/// settings: the input normalisation (`normalize_mean`, `normalize_std`:
/// per channel, comma-separated, each printed so that it parses back to the
/// same `f32`), the class names (`class_names`, one per line; left out if
/// a name holds a line break), the run's settings ([`run_settings`]) and,
/// mid-epoch, the position and running sums of the unfinished epoch.
pub(crate) fn run_metadata(
    cfg: &TrainConfig,
    transform: &Transform,
    class_names: Option<&[String]>,
    partial: Option<&EpochSums>,
    epoch_step: u64,
) -> BTreeMap<String, String> {
    let floats = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut extra = BTreeMap::new();
    extra.insert("normalize_mean".into(), floats(&transform.mean));
    extra.insert("normalize_std".into(), floats(&transform.std));
    if let Some(names) = class_names.filter(|n| !n.iter().any(|n| n.contains(['\n', '\r']))) {
        extra.insert("class_names".into(), names.join("\n"));
    }
    for (key, _, value) in run_settings(cfg) {
        extra.insert(key.into(), value);
    }
    if let Some(t) = partial {
        extra.insert(EPOCH_STEP.into(), epoch_step.to_string());
        extra.insert("epoch_loss_sum".into(), format!("{:?}", t.loss_sum));
        extra.insert("epoch_correct".into(), t.correct.to_string());
        extra.insert("epoch_seen".into(), t.seen.to_string());
        extra.insert("epoch_secs".into(), format!("{:?}", t.secs_before));
        extra.insert("epoch_lr".into(), format!("{:?}", t.lr));
    }
    extra
}

/// The running sums of an epoch's training steps.
pub(crate) struct EpochSums {
    pub(crate) start: Instant,
    /// Seconds of this epoch's training before an interruption.
    pub(crate) secs_before: f64,
    /// Learning rate of the latest step.
    pub(crate) lr: f64,
    pub(crate) loss_sum: f64,
    pub(crate) correct: usize,
    pub(crate) seen: usize,
    /// Seconds the epoch's training took (set at its end).
    pub(crate) secs: f64,
}

impl EpochSums {
    /// Starts the clock; `lr` stands until the first step.
    pub(crate) fn start(lr: f64) -> Self {
        EpochSums {
            start: Instant::now(),
            secs_before: 0.0,
            lr,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            secs: 0.0,
        }
    }

    /// Adds a step of mean loss `loss` and `correct` right answers on `n`
    /// images at learning rate `lr`.
    pub(crate) fn add(&mut self, loss: f64, correct: usize, n: usize, lr: f64) {
        self.lr = lr;
        self.loss_sum += loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    /// The progress bar's message: the epoch's running means and speed.
    pub(crate) fn message(&self) -> String {
        let seen = self.seen as f64;
        format!(
            "loss {:.4} acc {:.2}% lr {:.4} {:.0} img/s",
            self.loss_sum / seen,
            100.0 * self.correct as f64 / seen,
            self.lr,
            seen / self.start.elapsed().as_secs_f64()
        )
    }
}
