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

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint::{save_checkpoint, TrainProgress};
use super::config::{validate, TrainConfig, TrainError};
use super::cpu_engine::CpuEngine;
use super::metrics::{dataset_label, EpochRecord, MetricsLog};
use super::resume::{run_metadata, EpochSums, Start};
use super::run_dir::{self, prepare_out_dir, RunLock};
use super::say;
use crate::data::{BatchPlan, Dataset, Transform};
use crate::engine::{Engine, EngineData, EngineError, Split};
use crate::loss::softmax_cross_entropy;
use crate::optim::SgdState;
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
/// [`GpuEngine`](crate::gpu::GpuEngine)), driven epoch by epoch.
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
    partial: Option<EpochSums>,
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
        let workers = cfg.workers;
        Trainer::new(cfg, train, test, transform, |_: &M, _: &SgdState<f32>| {
            Ok(CpuEngine::new::<M>(workers))
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
        make_engine: impl FnOnce(&M, &SgdState<f32>) -> Result<E, EngineError>,
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
        let eval_transform = Arc::new((*train_transform).clone().with_augmentation(0, false));
        let mut engine = make_engine(&start.model, &start.opt)?;
        engine.attach(&EngineData {
            train: train.clone(),
            train_transform: train_transform.clone(),
            test: test.clone(),
            eval_transform: eval_transform.clone(),
        })?;
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
    /// by the program's own SIGINT handler, as `train` installs one): the
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
        let plan = BatchPlan::new(
            self.test.len,
            self.eval_transform.clone(),
            &self.cfg.eval_loader(),
            0,
        );
        evaluate_plan(&mut self.engine, &mut self.model, &self.test, &plan)
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
    fn train_epoch(&mut self) -> Result<Option<EpochSums>, TrainError> {
        let bar = progress_bar(
            self.cfg.progress && self.cfg.primary,
            self.steps_per_epoch,
            self.epoch + 1,
            self.cfg.epochs,
        );
        bar.set_position(self.epoch_step);
        let mut tally = self.partial.take().unwrap_or_else(|| {
            EpochSums::start(self.cfg.lr.lr_at_step(self.step, self.steps_per_epoch))
        });
        tally.start = Instant::now();
        // The batches depend only on (seed, epoch, batch): starting at the
        // steps already trained continues the epoch exactly where it stopped.
        let plan = BatchPlan::new(
            self.train.len,
            self.train_transform.clone(),
            &self.cfg.train_loader(),
            self.epoch,
        )
        .truncated(self.steps_per_epoch as usize);
        self.engine
            .begin(Split::Train, &plan, self.epoch_step as usize)?;
        for b in self.epoch_step as usize..plan.len() {
            let lr = self.cfg.lr.lr_at_step(self.step, self.steps_per_epoch);
            let picks = plan.picks(b);
            let spec = self.cfg.step_spec(lr, self.step);
            let out = self
                .engine
                .step(&mut self.model, &mut self.opt, &spec, &picks)?;
            if !out.loss.is_finite() {
                bar.abandon();
                return Err(self.non_finite(out.loss, b as u64 + 1));
            }
            self.step += 1;
            self.epoch_step += 1;
            tally.add(out.loss, out.correct, picks.len(), lr);
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
    fn record(&self, trained: &EpochSums, test_loss: f64, test_acc: f64) -> EpochRecord {
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
            extra: run_metadata(
                &self.cfg,
                &self.eval_transform,
                Some(&self.train.class_names[..]).filter(|n| n.len() == self.train.classes),
                self.partial.as_ref().filter(|_| self.epoch_step > 0),
                self.epoch_step,
            ),
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
    make_engine: impl FnOnce(&M, &SgdState<f32>) -> Result<E, EngineError>,
) -> Result<(M, TrainReport), TrainError> {
    Trainer::new(cfg.clone(), train, test, transform, make_engine)?.fit()
}

/// Mean loss and accuracy of `model` on `ds` in eval mode, normalised by
/// `transform` (its augmentation is not applied), in batches of
/// `batch_size` built ahead on `workers` threads.
pub fn evaluate<M: Model<f32>>(
    model: &mut M,
    ds: &Arc<Dataset>,
    transform: &Arc<Transform>,
    batch_size: usize,
    workers: usize,
) -> Result<(f64, f64), TrainError> {
    let eval_transform = Arc::new((**transform).clone().with_augmentation(0, false));
    let mut engine = CpuEngine::new::<M>(workers);
    Engine::<M>::attach(
        &mut engine,
        &EngineData {
            train: ds.clone(),
            train_transform: eval_transform.clone(),
            test: ds.clone(),
            eval_transform: eval_transform.clone(),
        },
    )?;
    let loader = crate::data::LoaderConfig {
        batch_size: batch_size.max(1),
        shuffle: false,
        augment: false,
        drop_last: false,
        seed: 0,
        workers,
        prefetch: 2 * workers.max(1),
    };
    let plan = BatchPlan::new(ds.len, eval_transform, &loader, 0);
    evaluate_plan(&mut engine, model, ds, &plan)
}

/// Mean loss and accuracy over the test-set batches of `plan` on `engine`.
fn evaluate_plan<M: Model<f32>, E: Engine<M>>(
    engine: &mut E,
    model: &mut M,
    test: &Dataset,
    plan: &BatchPlan,
) -> Result<(f64, f64), TrainError> {
    engine.begin(Split::Test, plan, 0)?;
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    for b in 0..plan.len() {
        let picks = plan.picks(b);
        let labels: Vec<usize> = picks.iter().map(|&(i, _)| test.label(i)).collect();
        let logits = engine.logits(model, &picks)?;
        let (loss, _, c) = softmax_cross_entropy(logits.view(), &labels, 0.0)?;
        loss_sum += loss.to_f64c() * labels.len() as f64;
        correct += c;
        seen += labels.len();
    }
    Ok((
        loss_sum / seen.max(1) as f64,
        correct as f64 / seen.max(1) as f64,
    ))
}
