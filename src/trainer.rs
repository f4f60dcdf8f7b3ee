//! Training and evaluation of any generated model on an image dataset:
//! SGD with a learning-rate policy, per-epoch evaluation, metrics (CSV and
//! PNG), atomic checkpoints and bitwise-exact resumption.
//!
//! Determinism: the batch order and augmentation depend only on (seed,
//! epoch, sample), dropout masks on (seed, step), and every kernel reduces
//! in an order fixed by the thread count; so a run is reproducible for a
//! given seed and thread count, and a resumed run continues exactly as an
//! uninterrupted one would.

use crate::runtime::data::{epoch_batches, Dataset, LoaderConfig, Transform};
use crate::runtime::train::{
    load_checkpoint_for, save_checkpoint, softmax_cross_entropy, CheckpointError, EpochRecord,
    LrPolicy, MetricsError, MetricsLog, Sgd, SgdState, TrainProgress,
};
use crate::runtime::{Float, InputError, Mode, Model, NetworkSpec};
use ndarray::Array2;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Everything a training run needs besides the model and the data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    /// Learning rate over training; `total_epochs` should equal `epochs`.
    pub lr: LrPolicy,
    pub sgd: Sgd,
    pub label_smoothing: f64,
    pub seed: u64,
    /// Random crop with this zero padding (0: none).
    pub pad_crop: usize,
    pub hflip: bool,
    /// Where the checkpoint, metrics.csv and metrics.png go.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.safetensors` if it exists.
    pub resume: bool,
    /// Stop each epoch after this many steps (smoke tests, quick looks).
    pub max_steps_per_epoch: Option<u64>,
    /// Stop (as if interrupted) once this many epochs are done; the schedule
    /// still spans `epochs`, so `resume` later continues the same run.
    pub stop_after_epoch: Option<u64>,
    /// Background threads decoding and augmenting batches.
    pub workers: usize,
    pub eval_batch_size: usize,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Print one line per epoch to stdout.
    pub verbose: bool,
}

impl TrainConfig {
    /// The checkpoint file of the run.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out_dir.join("checkpoint.safetensors")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Loss(String),
    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         stopped. The last good checkpoint is {}",
        checkpoint.display()
    )]
    NonFinite {
        loss: f64,
        epoch: u64,
        step: u64,
        global_step: u64,
        checkpoint: PathBuf,
    },
    #[error(transparent)]
    Gpu(#[from] crate::runtime::gpu::GpuError),
    #[error("creating output folder {}: {source}", path.display())]
    OutDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a finished (or resumed and finished) run reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub metrics: MetricsLog,
    /// The epoch training started from (0 unless resumed).
    pub resumed_from_epoch: u64,
    /// The global step count at the end.
    pub steps: u64,
    pub wall_seconds: f64,
}

/// Where a run's steps execute: the CPU path of the generated model, or
/// its GPU program on a [`Backend`](crate::runtime::gpu::Backend). The
/// training loop, data, schedule, metrics and checkpoints are the same.
pub trait Engine<M: Model<f32>> {
    /// One SGD step on a batch; returns the mean loss and the number of
    /// correct predictions, or a non-finite loss as is.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ndarray::ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        global_step: u64,
    ) -> Result<(f64, usize), TrainError>;
    /// Eval-mode logits.
    fn logits(
        &mut self,
        model: &mut M,
        images: ndarray::ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError>;
    /// Brings `model` and `opt` on the host up to date (before a checkpoint).
    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), TrainError>;
}

/// The generated model's own CPU forward and backward passes.
pub struct CpuEngine {
    grads: Vec<f32>,
}

impl CpuEngine {
    pub fn new<M: NetworkSpec>() -> Self {
        CpuEngine {
            grads: vec![0.0; M::PARAMETERS],
        }
    }
}

impl<M: Model<f32>> Engine<M> for CpuEngine {
    fn step(
        &mut self,
        model: &mut M,
        opt: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ndarray::ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        global_step: u64,
    ) -> Result<(f64, usize), TrainError> {
        model.reseed(mix(cfg.seed, global_step));
        let mut step_loss = Ok((0.0f32, 0usize));
        let smoothing = cfg.label_smoothing;
        model.forward_backward(images, Mode::Train, &mut self.grads, &mut |logits| {
            match softmax_cross_entropy(logits.view(), labels, smoothing) {
                Ok((l, d, c)) => {
                    step_loss = Ok((l, c));
                    d
                }
                Err(e) => {
                    step_loss = Err(e);
                    Array2::zeros(logits.raw_dim())
                }
            }
        })?;
        let (loss, c) = step_loss.map_err(TrainError::Loss)?;
        let loss = loss.to_f64c();
        if !loss.is_finite() {
            return Ok((loss, c));
        }
        if self.grads.iter().any(|g| !g.is_finite()) {
            // Reported as a non-finite loss: the run stops before updating.
            return Ok((f64::NAN, c));
        }
        cfg.sgd.step(opt, model.params_mut(), &self.grads, lr);
        Ok((loss, c))
    }

    fn logits(
        &mut self,
        model: &mut M,
        images: ndarray::ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError> {
        Ok(model.forward(images, Mode::Eval)?)
    }

    fn sync(&mut self, _: &mut M, _: &mut SgdState<f32>) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The generated GPU program on a device: parameters, running statistics
/// and SGD velocity live there, and a step (forward, loss, backward, update)
/// runs without the host; only the loss comes back. The weights update in
/// the same launch sequence as the loss, so a non-finite loss stops the run
/// one update late (the last checkpoint is untouched either way).
pub struct GpuEngine<M: crate::runtime::gpu::GpuNetwork, B: crate::runtime::gpu::Backend<f32>> {
    device: crate::runtime::gpu::GpuModel<M, B>,
}

impl<M, B> GpuEngine<M, B>
where
    M: crate::runtime::gpu::GpuNetwork + Model<f32>,
    B: crate::runtime::gpu::Backend<f32>,
{
    /// Uploads `model` and `opt` to `backend`, for batches up to `capacity`.
    pub fn new(
        backend: B,
        model: &M,
        opt: &SgdState<f32>,
        capacity: usize,
    ) -> Result<Self, TrainError> {
        let mut device = crate::runtime::gpu::GpuModel::new(backend, model, capacity)?;
        device.set_velocity(&opt.velocity)?;
        Ok(GpuEngine { device })
    }

    pub fn device(&mut self) -> &mut crate::runtime::gpu::GpuModel<M, B> {
        &mut self.device
    }
}

impl<M, B> Engine<M> for GpuEngine<M, B>
where
    M: crate::runtime::gpu::GpuNetwork + Model<f32>,
    B: crate::runtime::gpu::Backend<f32>,
{
    fn step(
        &mut self,
        _: &mut M,
        _: &mut SgdState<f32>,
        cfg: &TrainConfig,
        images: ndarray::ArrayView4<'_, f32>,
        labels: &[usize],
        lr: f64,
        _: u64,
    ) -> Result<(f64, usize), TrainError> {
        let out = self
            .device
            .train_step(images, labels, &cfg.sgd, lr, cfg.label_smoothing)?;
        Ok((out.loss, out.correct))
    }

    fn logits(
        &mut self,
        _: &mut M,
        images: ndarray::ArrayView4<'_, f32>,
    ) -> Result<Array2<f32>, TrainError> {
        Ok(self.device.forward(images, Mode::Eval)?)
    }

    fn sync(&mut self, model: &mut M, opt: &mut SgdState<f32>) -> Result<(), TrainError> {
        self.device.copy_to(model)?;
        opt.velocity = self.device.velocity()?;
        Ok(())
    }
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

/// Mixes a run seed and a counter into a well-spread 64-bit seed.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn check_data<M: NetworkSpec>(ds: &Dataset, which: &str) -> Result<(), TrainError> {
    let [c, h, w] = M::INPUT;
    if [ds.channels, ds.height, ds.width] != [c, h, w] {
        return Err(TrainError::Config(format!(
            "the {which} images of {} are {}x{}x{}, but model `{}` takes {c}x{h}x{w}: choose a model declared for this input",
            ds.source.display(),
            ds.channels,
            ds.height,
            ds.width,
            M::NAME
        )));
    }
    if ds.classes > M::CLASSES {
        return Err(TrainError::Config(format!(
            "{} has {} classes, but model `{}` has {} outputs",
            ds.source.display(),
            ds.classes,
            M::NAME,
            M::CLASSES
        )));
    }
    Ok(())
}

/// Trains `M` on `train`, evaluating on `test` after every epoch. Writes
/// `checkpoint.safetensors` (weights, running statistics, optimiser state,
/// progress), `metrics.csv` and `metrics.png` into `cfg.out_dir` each epoch.
pub fn train<M: Model<f32>>(
    cfg: &TrainConfig,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    transform: Transform,
) -> Result<(M, TrainReport), TrainError> {
    train_with(cfg, train, test, transform, |_: &M, _: &SgdState<f32>| {
        Ok(CpuEngine::new::<M>())
    })
}

/// [`train`] on the engine `make_engine` builds from the initial (or
/// resumed) model and optimiser state.
pub fn train_with<M: Model<f32>, E: Engine<M>>(
    cfg: &TrainConfig,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    transform: Transform,
    make_engine: impl FnOnce(&M, &SgdState<f32>) -> Result<E, TrainError>,
) -> Result<(M, TrainReport), TrainError> {
    check_data::<M>(&train, "training")?;
    check_data::<M>(&test, "test")?;
    cfg.lr
        .validate()
        .map_err(|e| TrainError::Config(format!("learning rate: {e}")))?;
    cfg.sgd
        .validate()
        .map_err(|e| TrainError::Config(format!("optimiser: {e}")))?;
    if cfg.batch_size == 0 || cfg.eval_batch_size == 0 {
        return Err(TrainError::Config(
            "the batch size must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&cfg.label_smoothing) {
        return Err(TrainError::Config(format!(
            "label smoothing must be in [0, 1), found {}",
            cfg.label_smoothing
        )));
    }
    let steps_per_epoch_full = (train.len / cfg.batch_size) as u64;
    if steps_per_epoch_full == 0 {
        return Err(TrainError::Config(format!(
            "{} has {} training images, fewer than one batch of {}",
            train.source.display(),
            train.len,
            cfg.batch_size
        )));
    }
    let steps_per_epoch = cfg
        .max_steps_per_epoch
        .map_or(steps_per_epoch_full, |m| m.min(steps_per_epoch_full));
    std::fs::create_dir_all(&cfg.out_dir).map_err(|source| TrainError::OutDir {
        path: cfg.out_dir.clone(),
        source,
    })?;
    let ckpt = cfg.checkpoint_path();
    let csv = cfg.out_dir.join("metrics.csv");
    let png = cfg.out_dir.join("metrics.png");

    let mut model = M::new(cfg.seed);
    let mut opt = cfg.sgd.init::<f32>(M::PARAMETERS);
    let mut metrics = MetricsLog::new();
    let (mut start_epoch, mut step, mut elapsed_before) = (0u64, 0u64, 0.0f64);
    if cfg.resume && ckpt.exists() {
        let (params, state) = model.stores_mut();
        let progress = load_checkpoint_for(
            &ckpt,
            M::NAME,
            M::tensors(),
            params,
            state,
            &mut opt.velocity,
        )?;
        if progress.seed != cfg.seed {
            return Err(TrainError::Config(format!(
                "{} was written with --seed {}, but this run has --seed {}: resume with the same seed",
                ckpt.display(),
                progress.seed,
                cfg.seed
            )));
        }
        start_epoch = progress.epoch;
        step = progress.step;
        if csv.exists() {
            metrics = MetricsLog::read_csv(&csv)?;
            metrics.truncate_after_epoch(start_epoch);
        }
        elapsed_before = metrics.records().last().map_or(0.0, |r| r.elapsed_sec);
        if cfg.verbose {
            println!(
                "resumed from {} at epoch {start_epoch}, step {step}",
                ckpt.display()
            );
        }
    }
    let transform = Arc::new(transform.with_augmentation(cfg.pad_crop, cfg.hflip));
    let eval_transform = Arc::new(Transform {
        pad_crop: 0,
        hflip: false,
        ..(*transform).clone()
    });
    let mut engine = make_engine(&model, &opt)?;
    let run_start = Instant::now();
    let end_epoch = cfg
        .stop_after_epoch
        .map_or(cfg.epochs, |e| e.min(cfg.epochs));
    for epoch in start_epoch..end_epoch {
        let loader = LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            augment: cfg.pad_crop > 0 || cfg.hflip,
            drop_last: true,
            seed: cfg.seed,
            workers: cfg.workers,
            prefetch: 2 * cfg.workers.max(1),
        };
        let bar = progress_bar(cfg.progress, steps_per_epoch, epoch + 1, cfg.epochs);
        let epoch_start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = cfg.lr.lr_at_step(step, steps_per_epoch);
        for (i, batch) in epoch_batches(train.clone(), transform.clone(), &loader, epoch)
            .take(steps_per_epoch as usize)
            .enumerate()
        {
            lr = cfg.lr.lr_at_step(step, steps_per_epoch);
            let (loss, c) = engine.step(
                &mut model,
                &mut opt,
                cfg,
                batch.images.view(),
                &batch.labels,
                lr,
                step,
            )?;
            if !loss.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    loss,
                    epoch: epoch + 1,
                    step: i as u64 + 1,
                    global_step: step + 1,
                    checkpoint: ckpt.clone(),
                });
            }
            step += 1;
            loss_sum += loss * batch.len() as f64;
            correct += c;
            seen += batch.len();
            let secs = epoch_start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% lr {:.4} {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                lr,
                seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = epoch_start.elapsed().as_secs_f64();
        let (test_loss, test_acc) = evaluate_on(
            &mut engine,
            &mut model,
            &test,
            &eval_transform,
            cfg.eval_batch_size,
            cfg.workers,
        )?;
        let record = EpochRecord {
            epoch: epoch + 1,
            step,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss,
            test_acc,
            images_per_sec: seen as f64 / train_secs,
            elapsed_sec: elapsed_before + run_start.elapsed().as_secs_f64(),
        };
        metrics.push(record);
        let progress = TrainProgress {
            epoch: epoch + 1,
            step,
            seed: cfg.seed,
            model: M::NAME.to_string(),
            extra: BTreeMap::new(),
        };
        // Metrics first: a kill between the two writes then leaves a CSV one
        // epoch ahead of the checkpoint (resume truncates it), never a
        // checkpoint without its CSV.
        metrics.write_csv(&csv)?;
        engine.sync(&mut model, &mut opt)?;
        save_checkpoint(
            &ckpt,
            M::tensors(),
            model.params(),
            model.state(),
            &opt.velocity,
            &progress,
        )?;
        metrics.plot_png(
            &png,
            &format!("{} on {}", M::NAME, dataset_label(&train.source)),
        )?;
        if cfg.verbose {
            println!(
                "epoch {:>3}/{}  train loss {:.4} acc {:6.2}%  test loss {:.4} acc {:6.2}%  lr {:.4}  {:.0} img/s  {:.0} s",
                record.epoch,
                cfg.epochs,
                record.train_loss,
                100.0 * record.train_acc,
                record.test_loss,
                100.0 * record.test_acc,
                record.lr,
                record.images_per_sec,
                record.elapsed_sec
            );
        }
    }
    Ok((
        model,
        TrainReport {
            metrics,
            resumed_from_epoch: start_epoch,
            steps: step,
            wall_seconds: run_start.elapsed().as_secs_f64(),
        },
    ))
}

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

/// A short name for a dataset's origin, for plot captions: the folder that
/// holds a dataset's files (`fashion-mnist` for
/// `/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz`), or an
/// archive's or folder's own name without extensions.
fn dataset_label(source: &std::path::Path) -> String {
    let name = |p: &std::path::Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
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
