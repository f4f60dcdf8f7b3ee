//! The training loop: [`Trainer`] trains any generated model on an image
//! dataset with SGD and a learning-rate policy, evaluates it after every
//! epoch, and writes metrics (CSV and PNG) and atomic checkpoints, from
//! which a run resumes bitwise exactly. [`train`] and [`train_with`] run a
//! whole training in one call.
//!
//! Determinism: the batch order and augmentation depend only on (seed,
//! epoch, sample), dropout masks on (seed, step), and every kernel reduces
//! in an order fixed by the thread count; so a run is reproducible for a
//! given seed and thread count, and a resumed run continues exactly as an
//! uninterrupted one would.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint::{load_checkpoint_for, save_checkpoint, TrainProgress};
use super::config::{validate, TrainConfig, TrainError};
use super::engine::{CpuEngine, Engine};
use super::loss::softmax_cross_entropy;
use super::metrics::{EpochRecord, MetricsLog};
use super::optim::SgdState;
use super::run_dir::{self, RunDirError, RunLock, RUN_FILES};
use super::schedule::Schedule;
use crate::data::{
    batch_picks, epoch_batches, epoch_len, epoch_order, Augment, Batch, Dataset, LoaderConfig,
    Transform,
};
use crate::{Float, Model};

/// What a finished (or resumed and finished) run reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Every epoch's record, those of earlier (resumed) runs included.
    pub metrics: MetricsLog,
    /// The epoch training started from (0 unless resumed).
    pub resumed_from_epoch: u64,
    /// The global step count at the end.
    pub steps: u64,
    /// Seconds since the trainer was built (this run only).
    pub wall_seconds: f64,
}

/// A training run of model `M` on engine `E` (a [`CpuEngine`] or a
/// [`GpuEngine`](super::GpuEngine)), driven epoch by epoch.
///
/// [`Trainer::new`] checks the data and the [`TrainConfig`], creates the
/// output folder, and builds the model: freshly initialised from the seed,
/// or, with [`TrainConfig::resume`] and a checkpoint in the output folder,
/// restored from it (weights, running statistics, optimiser velocity,
/// step, metrics). Each [`run_epoch`](Trainer::run_epoch) then trains one
/// epoch, evaluates on the test set, and writes `metrics.csv`,
/// `checkpoint.safetensors` and `metrics.png` into
/// [`TrainConfig::out_dir`]; [`fit`](Trainer::fit) does so until the run
/// is done (or reaches [`TrainConfig::stop_after_epoch`]), which is what
/// [`train`] and [`train_with`] do.
///
/// After an error from `run_epoch` the model in memory is part-way through
/// an epoch: drop the trainer and build a new one with `resume` set to go
/// on from the last checkpoint.
///
/// Driving a run by hand, e.g. to stop early at a target accuracy (the
/// crate `sparsenet` documents a complete example with a declared model and
/// an in-memory dataset):
///
/// ```
/// use std::sync::Arc;
/// use sparsenet_runtime::data::{Dataset, Transform};
/// use sparsenet_runtime::train::{TrainConfig, TrainError, Trainer};
/// use sparsenet_runtime::Model;
///
/// fn train_until<M: Model<f32>>(
///     cfg: TrainConfig,
///     train: Arc<Dataset>,
///     test: Arc<Dataset>,
///     target_accuracy: f64,
/// ) -> Result<M, TrainError> {
///     let transform = Transform::from_dataset_stats(&train);
///     let mut trainer = Trainer::<M, _>::cpu(cfg, train, test, transform)?;
///     while !trainer.is_finished() {
///         let record = trainer.run_epoch()?;
///         println!("epoch {}: test accuracy {:.3}", record.epoch, record.test_acc);
///         if record.test_acc >= target_accuracy {
///             break;
///         }
///     }
///     Ok(trainer.into_model())
/// }
/// ```
pub struct Trainer<M, E> {
    cfg: TrainConfig,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    /// The normalisation with the configured augmentation.
    train_transform: Arc<Transform>,
    /// The same normalisation without augmentation.
    eval_transform: Arc<Transform>,
    model: M,
    opt: SgdState<f32>,
    engine: E,
    metrics: MetricsLog,
    /// Completed epochs.
    epoch: u64,
    /// Completed steps (global).
    step: u64,
    steps_per_epoch: u64,
    resumed_from_epoch: u64,
    /// Seconds the run had taken before this trainer resumed it.
    elapsed_before: f64,
    run_start: Instant,
    /// Steps of the current (unfinished) epoch already done: non-zero after
    /// an interruption, or when resumed from a checkpoint written mid-epoch.
    epoch_step: u64,
    /// The running sums of those steps.
    partial: Option<EpochTraining>,
    /// Set (by Ctrl-C) to stop after the current step.
    interrupt: Option<&'static AtomicBool>,
    /// The output folder's lock, held as long as the trainer lives (none on
    /// a rank that does not write, [`TrainConfig::primary`]).
    _lock: Option<RunLock>,
}

impl<M: Model<f32>> Trainer<M, CpuEngine> {
    /// A trainer on the CPU path of the generated model: [`Trainer::new`]
    /// with a [`CpuEngine`].
    pub fn cpu(
        cfg: TrainConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        transform: Transform,
    ) -> Result<Self, TrainError> {
        Trainer::new(cfg, train, test, transform, |_: &M, _: &SgdState<f32>| {
            Ok(CpuEngine::new::<M>())
        })
    }
}

impl<M: Model<f32>, E: Engine<M>> Trainer<M, E> {
    /// Checks `train`, `test` and `cfg` (before anything else), creates the
    /// output folder, builds the model (resuming from the checkpoint when
    /// `cfg.resume` is set and one exists), and builds the engine with
    /// `make_engine` from that model and optimiser state. `transform` is the
    /// normalisation; the configured augmentation is added for training.
    pub fn new(
        cfg: TrainConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        transform: Transform,
        make_engine: impl FnOnce(&M, &SgdState<f32>) -> Result<E, TrainError>,
    ) -> Result<Self, TrainError> {
        let steps_per_epoch = validate::<M>(&cfg, &train, &test)?;
        // Only the primary process touches the folder; the other ranks of a
        // data-parallel run read the checkpoint it wrote, if resuming.
        let lock = if cfg.primary {
            std::fs::create_dir_all(&cfg.out_dir).map_err(|source| TrainError::OutDir {
                path: cfg.out_dir.clone(),
                source,
            })?;
            Some(prepare_out_dir(&cfg, true)?)
        } else {
            None
        };
        let start = Start::<M>::fresh(&cfg);
        let start = if cfg.resume && cfg.checkpoint_path().exists() {
            start.resume(&cfg, steps_per_epoch)?
        } else {
            start
        };
        let train_transform = Arc::new(transform.with_augmentation(cfg.pad_crop, cfg.hflip));
        let eval_transform = Arc::new(Transform {
            pad_crop: 0,
            hflip: false,
            ..(*train_transform).clone()
        });
        let mut engine = make_engine(&start.model, &start.opt)?;
        engine.attach_training_data(&train, &train_transform)?;
        engine.attach_eval_data(&test, &eval_transform)?;
        Ok(Trainer {
            cfg,
            train,
            test,
            train_transform,
            eval_transform,
            model: start.model,
            opt: start.opt,
            engine,
            metrics: start.metrics,
            epoch: start.epoch,
            step: start.step,
            steps_per_epoch,
            resumed_from_epoch: start.epoch,
            elapsed_before: start.elapsed_before,
            run_start: Instant::now(),
            epoch_step: start.epoch_step,
            partial: start.partial,
            interrupt: None,
            _lock: lock,
        })
    }

    /// Stops the run after the step during which `flag` becomes set (e.g.
    /// by [`install_sigint_handler`](super::install_sigint_handler)): the
    /// trainer writes a checkpoint from which `resume` continues exactly,
    /// mid-epoch if need be, and returns [`TrainError::Interrupted`].
    pub fn stop_on(mut self, flag: &'static AtomicBool) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Trains the next epoch, evaluates the model on the test set, and
    /// writes the metrics and the checkpoint; returns the epoch's record
    /// (also appended to [`metrics`](Trainer::metrics)). A non-finite loss
    /// stops the epoch with [`TrainError::NonFinite`]; after the run's last
    /// epoch this is [`TrainError::Finished`].
    pub fn run_epoch(&mut self) -> Result<EpochRecord, TrainError> {
        if self.is_finished() {
            return Err(TrainError::Finished {
                epochs: self.cfg.epochs,
            });
        }
        let trained = match self.train_epoch()? {
            Some(trained) => trained,
            None => return Err(self.interrupted()),
        };
        let (test_loss, test_acc) = self.evaluate()?;
        let record = self.record(&trained, test_loss, test_acc);
        self.metrics.push(record);
        self.epoch += 1;
        self.save()?;
        self.print_epoch(&record);
        Ok(record)
    }

    /// Runs the epochs left (up to [`TrainConfig::stop_after_epoch`] if
    /// set) and returns the model and the report: the whole of [`train_with`].
    pub fn fit(mut self) -> Result<(M, TrainReport), TrainError> {
        while self.epoch < self.cfg.end_epoch() {
            self.run_epoch()?;
            // Stopped at an epoch's end: its checkpoint is already written.
            if run_dir::is_set(self.interrupt) && self.epoch < self.cfg.end_epoch() {
                return Err(TrainError::Interrupted {
                    epoch: self.epoch,
                    step: self.step,
                    checkpoint: self.cfg.checkpoint_path(),
                });
            }
        }
        Ok(self.finish())
    }

    /// Mean loss and accuracy of the model on the test set, in eval mode
    /// and without augmentation (what each epoch records).
    pub fn evaluate(&mut self) -> Result<(f64, f64), TrainError> {
        if self.engine.eval_takes_picks() {
            // The test set is in the engine's memory: the same batches as
            // the loader's (in order, no augmentation), built there.
            let (len, bs) = (self.test.len, self.cfg.eval_batch_size.max(1));
            let (mut loss_sum, mut correct) = (0.0f64, 0usize);
            for start in (0..len).step_by(bs) {
                let end = (start + bs).min(len);
                let picks: Vec<(usize, Augment)> =
                    (start..end).map(|i| (i, Augment::default())).collect();
                let labels: Vec<usize> =
                    (start..end).map(|i| self.test.labels[i] as usize).collect();
                let logits = self.engine.logits_picks(&mut self.model, &picks)?;
                let (loss, _, c) = softmax_cross_entropy(logits.view(), &labels, 0.0)?;
                loss_sum += loss.to_f64c() * labels.len() as f64;
                correct += c;
            }
            return Ok((
                loss_sum / len.max(1) as f64,
                correct as f64 / len.max(1) as f64,
            ));
        }
        evaluate_on(
            &mut self.engine,
            &mut self.model,
            &self.test,
            &self.eval_transform,
            self.cfg.eval_batch_size,
            self.cfg.workers,
        )
    }

    /// The model and the report of the run so far.
    pub fn finish(self) -> (M, TrainReport) {
        let report = TrainReport {
            metrics: self.metrics,
            resumed_from_epoch: self.resumed_from_epoch,
            steps: self.step,
            wall_seconds: self.run_start.elapsed().as_secs_f64(),
        };
        (self.model, report)
    }

    /// The model on the host. An engine that keeps its own copy (the GPU's)
    /// brings it up to date at every checkpoint, so after each
    /// [`run_epoch`](Trainer::run_epoch).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model on the host (see [`model`](Trainer::model)).
    pub fn into_model(self) -> M {
        self.model
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The records of the completed epochs, earlier runs' included.
    pub fn metrics(&self) -> &MetricsLog {
        &self.metrics
    }

    /// Completed epochs (those of a resumed run included).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Completed optimisation steps over the whole run.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Steps of each epoch: the training set's whole batches, at most
    /// [`TrainConfig::max_steps_per_epoch`].
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The epoch the run resumed from (0 when it started afresh).
    pub fn resumed_from_epoch(&self) -> u64 {
        self.resumed_from_epoch
    }

    /// Whether all [`TrainConfig::epochs`] are done (`stop_after_epoch`
    /// aside: that only stops [`fit`](Trainer::fit)).
    pub fn is_finished(&self) -> bool {
        self.epoch >= self.cfg.epochs
    }

    /// Writes the checkpoint of an interrupted epoch and returns the error
    /// that says so.
    fn interrupted(&mut self) -> TrainError {
        if let Err(e) = self.save_checkpoint() {
            return e;
        }
        TrainError::Interrupted {
            epoch: self.epoch + 1,
            step: self.step,
            checkpoint: self.cfg.checkpoint_path(),
        }
    }

    /// The training steps of the next epoch (or the rest of an interrupted
    /// one), with the progress bar; `None` if the interrupt flag stopped it
    /// before its last step (its sums are then kept in `partial`).
    fn train_epoch(&mut self) -> Result<Option<EpochTraining>, TrainError> {
        let bar = progress_bar(
            self.cfg.progress && self.cfg.primary,
            self.steps_per_epoch,
            self.epoch + 1,
            self.cfg.epochs,
        );
        bar.set_position(self.epoch_step);
        let mut tally = self.partial.take().unwrap_or_else(|| {
            EpochTraining::start(self.cfg.lr.lr_at_step(self.step, self.steps_per_epoch))
        });
        tally.start = Instant::now();
        let loader = self.cfg.train_loader();
        let batches: Box<dyn Iterator<Item = StepBatch>> =
            if self.engine.takes_picks() {
                // The engine builds the batches from the data in its memory:
                // it gets the loader's picks (the same order and augmentation
                // draws), not images.
                let total = epoch_len(self.train.len, &loader);
                let order = epoch_order(self.train.len, loader.seed, self.epoch, loader.shuffle);
                let (transform, epoch) = (self.train_transform.clone(), self.epoch);
                Box::new((0..total).map(move |b| {
                    StepBatch::Picks(batch_picks(&order, b, &transform, &loader, epoch))
                }))
            } else {
                Box::new(
                    epoch_batches(
                        self.train.clone(),
                        self.train_transform.clone(),
                        &loader,
                        self.epoch,
                    )
                    .map(StepBatch::Host),
                )
            };
        // The batches depend only on (seed, epoch, sample): skipping those
        // already trained continues the epoch exactly where it stopped.
        let batches = batches
            .take(self.steps_per_epoch as usize)
            .enumerate()
            .skip(self.epoch_step as usize);
        for (i, batch) in batches {
            let lr = self.cfg.lr.lr_at_step(self.step, self.steps_per_epoch);
            let (loss, correct) = match &batch {
                StepBatch::Host(b) => self.engine.step(
                    &mut self.model,
                    &mut self.opt,
                    &self.cfg,
                    b.images.view(),
                    &b.labels,
                    lr,
                    self.step,
                )?,
                StepBatch::Picks(picks) => self.engine.step_picks(
                    &mut self.model,
                    &mut self.opt,
                    &self.cfg,
                    picks,
                    lr,
                    self.step,
                )?,
            };
            if !loss.is_finite() {
                bar.abandon();
                return Err(self.non_finite(loss, i as u64 + 1));
            }
            self.step += 1;
            self.epoch_step += 1;
            tally.add(loss, correct, batch.len(), lr);
            bar.set_message(tally.message());
            bar.inc(1);
            if run_dir::is_set(self.interrupt) && self.epoch_step < self.steps_per_epoch {
                bar.abandon();
                tally.secs_before += tally.start.elapsed().as_secs_f64();
                self.partial = Some(tally);
                return Ok(None);
            }
        }
        bar.finish_and_clear();
        tally.secs = tally.secs_before + tally.start.elapsed().as_secs_f64();
        self.epoch_step = 0;
        Ok(Some(tally))
    }

    /// The error of a non-finite loss at step `step` (1-based) of the
    /// current epoch.
    fn non_finite(&self, loss: f64, step: u64) -> TrainError {
        TrainError::NonFinite {
            loss,
            epoch: self.epoch + 1,
            step,
            global_step: self.step + 1,
            checkpoint: self.cfg.checkpoint_path(),
        }
    }

    /// The record of the epoch being completed.
    fn record(&self, trained: &EpochTraining, test_loss: f64, test_acc: f64) -> EpochRecord {
        let seen = trained.seen.max(1) as f64;
        EpochRecord {
            epoch: self.epoch + 1,
            step: self.step,
            lr: trained.lr,
            train_loss: trained.loss_sum / seen,
            train_acc: trained.correct as f64 / seen,
            test_loss,
            test_acc,
            images_per_sec: trained.seen as f64 / trained.secs,
            elapsed_sec: self.elapsed_before + self.run_start.elapsed().as_secs_f64(),
        }
    }

    /// What a checkpoint carries besides the progress, so that the trained
    /// model can be used without the training data: the input normalisation
    /// (`normalize_mean`, `normalize_std`: per channel, comma-separated, each
    /// printed so that it parses back to the same `f32`) and the class names
    /// (`class_names`, one per line; left out if a name holds a line break).
    fn checkpoint_metadata(&self) -> BTreeMap<String, String> {
        let floats = |v: &[f32]| {
            v.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut extra = BTreeMap::new();
        extra.insert("normalize_mean".into(), floats(&self.eval_transform.mean));
        extra.insert("normalize_std".into(), floats(&self.eval_transform.std));
        let names = &self.train.class_names;
        if names.len() == self.train.classes && !names.iter().any(|n| n.contains(['\n', '\r'])) {
            extra.insert("class_names".into(), names.join("\n"));
        }
        for (key, _, value) in run_settings(&self.cfg) {
            extra.insert(key.into(), value);
        }
        if let Some(t) = self.partial.as_ref().filter(|_| self.epoch_step > 0) {
            extra.insert(EPOCH_STEP.into(), self.epoch_step.to_string());
            extra.insert("epoch_loss_sum".into(), format!("{:?}", t.loss_sum));
            extra.insert("epoch_correct".into(), t.correct.to_string());
            extra.insert("epoch_seen".into(), t.seen.to_string());
            extra.insert("epoch_secs".into(), format!("{:?}", t.secs_before));
            extra.insert("epoch_lr".into(), format!("{:?}", t.lr));
        }
        extra
    }

    /// Writes the metrics CSV, the checkpoint (after syncing the host model
    /// with the engine) and the plot.
    fn save(&mut self) -> Result<(), TrainError> {
        if !self.cfg.primary {
            return Ok(());
        }
        // Metrics first: a kill between the two writes then leaves a CSV one
        // epoch ahead of the checkpoint (resume truncates it), never a
        // checkpoint without its CSV.
        self.metrics.write_csv(&self.cfg.metrics_csv_path())?;
        self.save_checkpoint()?;
        self.metrics.plot_png(
            &self.cfg.metrics_png_path(),
            &format!("{} on {}", M::NAME, dataset_label(&self.train.source)),
        )?;
        Ok(())
    }

    /// Writes the checkpoint (after syncing the host model with the engine):
    /// at an epoch's end, or mid-epoch with the position and running sums.
    fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        self.engine.sync(&mut self.model, &mut self.opt)?;
        if !self.cfg.primary {
            return Ok(());
        }
        let progress = TrainProgress {
            epoch: self.epoch,
            step: self.step,
            seed: self.cfg.seed,
            model: M::NAME.to_string(),
            extra: self.checkpoint_metadata(),
        };
        save_checkpoint(
            &self.cfg.checkpoint_path(),
            M::tensors(),
            self.model.params(),
            self.model.state(),
            &self.opt.velocity,
            &progress,
        )?;
        Ok(())
    }

    /// The epoch's line on stdout, if `verbose`.
    fn print_epoch(&self, record: &EpochRecord) {
        if self.cfg.verbose && self.cfg.primary {
            say(format_args!(
                "epoch {:>3}/{}  train loss {:.4} acc {:6.2}%  test loss {:.4} acc {:6.2}%  lr {:.4}  {:.0} img/s  {:.0} s",
                record.epoch,
                self.cfg.epochs,
                record.train_loss,
                100.0 * record.train_acc,
                record.test_loss,
                100.0 * record.test_acc,
                record.lr,
                record.images_per_sec,
                record.elapsed_sec
            ));
        }
    }
}

/// The model, optimiser and progress a run starts from: fresh, or restored
/// from the checkpoint.
struct Start<M> {
    model: M,
    opt: SgdState<f32>,
    metrics: MetricsLog,
    epoch: u64,
    step: u64,
    elapsed_before: f64,
    epoch_step: u64,
    partial: Option<EpochTraining>,
}

impl<M: Model<f32>> Start<M> {
    /// A model initialised from the seed, zero velocity, no history.
    fn fresh(cfg: &TrainConfig) -> Self {
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
    fn resume(mut self, cfg: &TrainConfig, steps_per_epoch: u64) -> Result<Self, TrainError> {
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
                 --seed are checked against this run's",
                ckpt.display()
            );
        }
        self.epoch = progress.epoch;
        self.step = progress.step;
        self.epoch_step = mid_epoch(&ckpt, &progress, steps_per_epoch)?;
        if self.epoch_step > 0 {
            let meta = |key: &str| progress.extra.get(key).map(String::as_str).unwrap_or("");
            let bad = |key: &str| {
                TrainError::Config(format!(
                    "{}: metadata `{key}` of the interrupted epoch is missing or malformed: `{}`",
                    ckpt.display(),
                    meta(key)
                ))
            };
            let float = |key: &str| meta(key).parse::<f64>().map_err(|_| bad(key));
            let count = |key: &str| meta(key).parse::<usize>().map_err(|_| bad(key));
            let mut tally = EpochTraining::start(float("epoch_lr")?);
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

/// Writes one line to stdout, ignoring a failure: with stdout closed
/// (`train ... | head -1`) `println!` panics, which stopped the run before
/// its next checkpoint. The lines only report progress; the run's results
/// are the checkpoint and metrics files, which are written regardless.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Metadata key of a mid-epoch checkpoint: the steps of the unfinished
/// epoch already trained.
const EPOCH_STEP: &str = "epoch_step";

/// The steps of the unfinished epoch a checkpoint holds (0 at an epoch's
/// end); an error if they do not fit in an epoch of `steps_per_epoch`.
fn mid_epoch(
    ckpt: &Path,
    progress: &super::checkpoint::TrainProgress,
    steps_per_epoch: u64,
) -> Result<u64, TrainError> {
    let Some(text) = progress.extra.get(EPOCH_STEP) else {
        return Ok(0);
    };
    match text.parse::<u64>() {
        Ok(k) if k < steps_per_epoch => Ok(k),
        _ => Err(TrainError::Config(format!(
            "{} was written {text} steps into epoch {}, but this run's epochs have {} steps: \
             a run interrupted mid-epoch resumes only with the same batch size and steps per \
             epoch",
            ckpt.display(),
            progress.epoch + 1,
            steps_per_epoch
        ))),
    }
}

/// The settings a checkpoint stores to refuse a resume that changes them:
/// (metadata key, flag, value). Floats print so that they parse back to
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
        ("run.epochs", "--epochs", cfg.epochs.to_string()),
        ("run.batch_size", "--batch-size", cfg.batch_size.to_string()),
        ("run.lr", "--lr", format!("{:?}", cfg.lr.base_lr)),
        ("run.schedule", "--schedule", schedule),
        (
            "run.warmup",
            "--warmup",
            format!("{:?}", cfg.lr.warmup_epochs),
        ),
        (
            "run.momentum",
            "--momentum",
            format!("{:?}", cfg.sgd.momentum),
        ),
        (
            "run.nesterov",
            "nesterov (--no-nesterov)",
            cfg.sgd.nesterov.to_string(),
        ),
        (
            "run.weight_decay",
            "--weight-decay",
            format!("{:?}", cfg.sgd.weight_decay),
        ),
        (
            "run.label_smoothing",
            "--label-smoothing",
            format!("{:?}", cfg.label_smoothing),
        ),
        ("run.pad_crop", "--pad-crop", cfg.pad_crop.to_string()),
        ("run.hflip", "--hflip", cfg.hflip.to_string()),
        (
            "run.steps_per_epoch",
            "--steps-per-epoch",
            cfg.max_steps_per_epoch
                .map_or("all".into(), |n| n.to_string()),
        ),
    ]
}

/// Each setting of `cfg` that differs from the checkpoint's: (flag, the
/// checkpoint's value, this run's). Settings the checkpoint does not store
/// (older checkpoints) are not compared; the seed always is.
fn changed_settings(
    cfg: &TrainConfig,
    progress: &super::checkpoint::TrainProgress,
) -> Vec<(String, String, String)> {
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
            "--seed".into(),
            progress.seed.to_string(),
            cfg.seed.to_string(),
        ));
    }
    changes
}

/// The checks [`Trainer::new`] makes of the run's output folder, made
/// before anything else so that a program can fail fast, before it loads
/// its data: another run holds the folder, it cannot be written, or it
/// holds another run's files (without `resume` or `overwrite`). Takes the
/// folder's lock and lets it go; removes temporary files a killed run left;
/// deletes nothing else. A folder that does not exist yet passes (the
/// trainer creates it).
pub fn check_out_dir(cfg: &TrainConfig) -> Result<(), TrainError> {
    if !cfg.out_dir.is_dir() {
        return Ok(());
    }
    prepare_out_dir(cfg, false).map(drop)
}

/// Makes the output folder (which exists) ready for the run: takes its
/// lock (held by the trainer), checks that files can be written there,
/// removes the temporary files a killed run left, and refuses to start a
/// new run over another run's files unless `cfg.overwrite` (which deletes
/// them when `delete`) or `cfg.resume`.
fn prepare_out_dir(cfg: &TrainConfig, delete: bool) -> Result<RunLock, TrainError> {
    let dir = &cfg.out_dir;
    let lock = RunLock::acquire(dir)?;
    run_dir::check_writable(dir)?;
    let not_writable = |what: String| {
        move |source| {
            TrainError::RunDir(RunDirError::NotWritable {
                dir: dir.clone(),
                what,
                source,
            })
        }
    };
    let removed = run_dir::remove_stale_temp_files(dir)
        .map_err(not_writable("removing stale temporary files".into()))?;
    if cfg.verbose && !removed.is_empty() {
        say(format_args!(
            "removed {} temporary file(s) left by an interrupted write: {}",
            removed.len(),
            removed
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let existing: Vec<String> = [cfg.checkpoint_path(), cfg.metrics_csv_path()]
        .iter()
        .filter(|p| p.exists())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if !cfg.resume && !existing.is_empty() {
        if !cfg.overwrite {
            return Err(TrainError::RunExists {
                dir: dir.clone(),
                files: existing,
            });
        }
        for name in RUN_FILES.iter().filter(|_| delete) {
            let path = dir.join(name);
            if path.exists() {
                std::fs::remove_file(&path)
                    .map_err(not_writable(format!("removing {}", path.display())))?;
            }
        }
    }
    Ok(lock)
}

/// A training step's batch: built on the host, or the picks an engine
/// builds it from ([`Engine::takes_picks`]).
enum StepBatch {
    Host(Batch),
    Picks(Vec<(usize, Augment)>),
}

impl StepBatch {
    fn len(&self) -> usize {
        match self {
            StepBatch::Host(b) => b.len(),
            StepBatch::Picks(p) => p.len(),
        }
    }
}

/// The running sums of an epoch's training steps.
struct EpochTraining {
    start: Instant,
    /// Seconds of this epoch's training before an interruption.
    secs_before: f64,
    /// Learning rate of the latest step.
    lr: f64,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    /// Seconds the epoch's training took (set at its end).
    secs: f64,
}

impl EpochTraining {
    /// Starts the clock; `lr` stands until the first step.
    fn start(lr: f64) -> Self {
        EpochTraining {
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
    fn add(&mut self, loss: f64, correct: usize, n: usize, lr: f64) {
        self.lr = lr;
        self.loss_sum += loss * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    /// The progress bar's message: the epoch's running means and speed.
    fn message(&self) -> String {
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

/// A bar of `len` steps for epoch `epoch` of `epochs`, or a hidden one.
fn progress_bar(show: bool, len: u64, epoch: u64, epochs: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}

/// A short name for a dataset's origin, for plot captions: the folder that
/// holds a dataset's files (`fashion-mnist` for
/// `/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`), or an
/// archive's or folder's own name without extensions.
fn dataset_label(source: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let own = name(source).unwrap_or_default();
    let archive = [".tar.gz", ".tgz", ".tar", ".zip"]
        .iter()
        .find_map(|ext| own.strip_suffix(ext));
    if let Some(stem) = archive {
        return stem.to_string();
    }
    if source.is_dir() {
        return own;
    }
    source.parent().and_then(name).unwrap_or(own)
}

/// Trains `M` on `train`, evaluating on `test` after every epoch. Writes
/// `checkpoint.safetensors` (weights, running statistics, optimiser state,
/// progress), `metrics.csv` and `metrics.png` into `cfg.out_dir` each epoch.
/// [`Trainer::cpu`] and [`Trainer::fit`] in one call.
pub fn train<M: Model<f32>>(
    cfg: &TrainConfig,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    transform: Transform,
) -> Result<(M, TrainReport), TrainError> {
    Trainer::<M, CpuEngine>::cpu(cfg.clone(), train, test, transform)?.fit()
}

/// [`train`] on the engine `make_engine` builds from the initial (or
/// resumed) model and optimiser state: [`Trainer::new`] and
/// [`Trainer::fit`] in one call.
pub fn train_with<M: Model<f32>, E: Engine<M>>(
    cfg: &TrainConfig,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    transform: Transform,
    make_engine: impl FnOnce(&M, &SgdState<f32>) -> Result<E, TrainError>,
) -> Result<(M, TrainReport), TrainError> {
    Trainer::new(cfg.clone(), train, test, transform, make_engine)?.fit()
}

/// Mean loss and accuracy of `model` on `ds` in eval mode.
pub fn evaluate<M: Model<f32>>(
    model: &mut M,
    ds: &Arc<Dataset>,
    transform: &Arc<Transform>,
    batch_size: usize,
    workers: usize,
) -> Result<(f64, f64), TrainError> {
    evaluate_on(
        &mut CpuEngine::new::<M>(),
        model,
        ds,
        transform,
        batch_size,
        workers,
    )
}

/// [`evaluate`] on any engine.
pub fn evaluate_on<M: Model<f32>, E: Engine<M>>(
    engine: &mut E,
    model: &mut M,
    ds: &Arc<Dataset>,
    transform: &Arc<Transform>,
    batch_size: usize,
    workers: usize,
) -> Result<(f64, f64), TrainError> {
    let cfg = LoaderConfig {
        batch_size,
        shuffle: false,
        augment: false,
        drop_last: false,
        seed: 0,
        workers,
        prefetch: 2 * workers.max(1),
    };
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    for batch in epoch_batches(ds.clone(), transform.clone(), &cfg, 0) {
        let logits = engine.logits(model, batch.images.view())?;
        let (loss, _, c) =
            softmax_cross_entropy(logits.view(), &batch.labels, 0.0).map_err(TrainError::Loss)?;
        loss_sum += loss.to_f64c() * batch.len() as f64;
        correct += c;
        seen += batch.len();
    }
    Ok((
        loss_sum / seen.max(1) as f64,
        correct as f64 / seen.max(1) as f64,
    ))
}

/// Loads a model's weights file saved by [`Model::save`] or a checkpoint.
pub fn load_weights_any<M: Model<f32>>(model: &mut M, path: &Path) -> Result<(), TrainError> {
    if model.load(path).is_ok() {
        return Ok(());
    }
    let mut velocity = vec![0.0f32; M::PARAMETERS];
    let (p, s) = model.stores_mut();
    load_checkpoint_for(path, M::NAME, M::tensors(), p, s, &mut velocity)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dataset_label;
    use std::path::Path;

    #[test]
    fn plots_name_the_folder_of_a_file_or_an_archive_without_extension() {
        let label = |p: &str| dataset_label(Path::new(p));
        assert_eq!(
            label("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
            "fashion-mnist"
        );
        assert_eq!(label("shared/data/cifar10-jpeg.tar.gz"), "cifar10-jpeg");
        assert_eq!(label("in-memory"), "in-memory");
        let dir = std::env::temp_dir();
        assert_eq!(
            label(dir.to_str().unwrap()),
            dir.file_name().unwrap().to_string_lossy()
        );
    }
}
