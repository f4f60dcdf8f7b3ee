//! A training run's settings ([`TrainConfig`]), its errors ([`TrainError`]),
//! and the checks [`Trainer::new`](super::Trainer::new) makes before it
//! touches the disk.

use std::path::PathBuf;

use super::checkpoint::CheckpointError;
use super::metrics::MetricsError;
use super::run_dir::RunDirError;
use super::schedule::{LrPolicy, Recipe};
use crate::data::{Dataset, LoaderConfig};
use crate::engine::{EngineError, StepSpec};
use crate::loss::LossError;
use crate::optim::Sgd;
use crate::NetworkSpec;

/// Everything a training run needs besides the model and the data.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Epochs of the whole run (what the schedule spans).
    pub epochs: u64,
    /// Images per training step.
    pub batch_size: usize,
    /// Learning rate over training; its `total_epochs` must equal `epochs`
    /// (to stop a run early and resume it later, use `stop_after_epoch`).
    pub lr: LrPolicy,
    /// Optimiser hyper-parameters.
    pub sgd: Sgd,
    /// Label smoothing of the training loss, in `[0, 1)`.
    pub label_smoothing: f64,
    /// Seed of initialisation, shuffling, augmentation and dropout.
    pub seed: u64,
    /// Random crop with this zero padding (0: none).
    pub pad_crop: usize,
    /// Random horizontal flips.
    pub hflip: bool,
    /// Where the checkpoint, metrics.csv and metrics.png go.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.safetensors` if it exists. The
    /// checkpoint's settings must equal these unless `resume_with_changes`.
    pub resume: bool,
    /// Start afresh even though `out_dir` holds another run's checkpoint or
    /// metrics (they are deleted); without it such a start is refused.
    pub overwrite: bool,
    /// Resume even if settings differ from those the checkpoint stored.
    pub resume_with_changes: bool,
    /// Stop each epoch after this many steps (smoke tests, quick looks).
    pub max_steps_per_epoch: Option<u64>,
    /// Stop (as if interrupted) once this many epochs are done; the schedule
    /// still spans `epochs`, so `resume` later continues the same run.
    pub stop_after_epoch: Option<u64>,
    /// Background threads decoding and augmenting batches.
    pub workers: usize,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Print one line per epoch to stdout.
    pub verbose: bool,
    /// Whether this process writes the run's outputs (the folder's lock,
    /// checkpoints, metrics) and prints its progress: true but on the ranks
    /// other than 0 of a data-parallel run ([`crate::distributed`]), which
    /// only read (a checkpoint to resume from).
    pub primary: bool,
}

impl TrainConfig {
    /// A run of `epochs` epochs writing into `out_dir`, with
    /// [`Recipe::quick`] stretched to them: batches of 64, SGD with Nesterov
    /// momentum 0.9 and weight decay 5e-4, learning rate 0.1 after 0.3 epochs
    /// of linear warm-up (at most half the run), then cosine decay to 0. No augmentation, label
    /// smoothing or resumption; seed 0; two loader threads; quiet. Change
    /// any field afterwards (keep `lr.total_epochs` equal to `epochs`).
    pub fn new(epochs: u64, out_dir: impl Into<PathBuf>) -> Self {
        let recipe = Recipe::quick().with_epochs(epochs);
        TrainConfig {
            epochs,
            batch_size: recipe.batch_size,
            lr: recipe.lr,
            sgd: recipe.sgd,
            label_smoothing: 0.0,
            seed: 0,
            pad_crop: 0,
            hflip: false,
            out_dir: out_dir.into(),
            resume: false,
            overwrite: false,
            resume_with_changes: false,
            max_steps_per_epoch: None,
            stop_after_epoch: None,
            workers: 2,
            eval_batch_size: 256,
            progress: false,
            verbose: false,
            primary: true,
        }
    }

    /// The checkpoint file of the run.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out_dir.join("checkpoint.safetensors")
    }

    /// The per-epoch metrics of the run (CSV).
    pub(crate) fn metrics_csv_path(&self) -> PathBuf {
        self.out_dir.join("metrics.csv")
    }

    /// The plot of the metrics (PNG).
    pub(crate) fn metrics_png_path(&self) -> PathBuf {
        self.out_dir.join("metrics.png")
    }

    /// Checks the settings that need no data: the learning-rate policy, the
    /// optimiser, the batch sizes, the label smoothing and the step and epoch
    /// caps. The trainer runs this (after checking the datasets against the
    /// model) before anything else; [`validate_for`](Self::validate_for)
    /// also checks the augmentation against a model's input, without data.
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.epochs == 0 {
            return Err(TrainError::Config("a run needs at least 1 epoch".into()));
        }
        if self.lr.total_epochs != self.epochs as f64 {
            return Err(TrainError::Config(format!(
                "the learning-rate schedule spans {} epochs, the run {}: they must be equal \
                 (to stop early and resume later, set stop_after_epoch)",
                self.lr.total_epochs, self.epochs
            )));
        }
        self.lr
            .validate()
            .map_err(|e| TrainError::Config(format!("learning rate: {e}")))?;
        self.sgd
            .validate()
            .map_err(|e| TrainError::Config(format!("optimiser: {e}")))?;
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(TrainError::Config(
                "the batch size must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(TrainError::Config(format!(
                "label smoothing must be in [0, 1), found {}",
                self.label_smoothing
            )));
        }
        // A cap of 0 would run epochs of no steps: nothing trained, yet every
        // epoch evaluated, checkpointed and reported as done.
        if self.max_steps_per_epoch == Some(0) {
            return Err(TrainError::Config(
                "max_steps_per_epoch must be at least 1, found 0 (an epoch of no steps trains \
                 nothing)"
                    .into(),
            ));
        }
        if self.stop_after_epoch == Some(0) {
            return Err(TrainError::Config(
                "stop_after_epoch must be at least 1, found 0 (the run would stop before \
                 training)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and that the random crop's padding
    /// fits model `M`'s input: a padding as large as the image lets a crop
    /// hold nothing but padding. Needs no data (the trainer checks the data
    /// against `M` separately), so a caller can run it before loading any.
    pub fn validate_for<M: NetworkSpec>(&self) -> Result<(), TrainError> {
        self.validate()?;
        let [_, h, w] = M::INPUT;
        if self.pad_crop > 0 && self.pad_crop >= h.min(w) {
            return Err(TrainError::Config(format!(
                "pad_crop (the random crop's padding) is {} pixels, but model `{}` takes {h}x{w} \
                 images: the padding must be smaller than the image, or a crop can hold no \
                 pixel of it",
                self.pad_crop,
                M::NAME
            )));
        }
        Ok(())
    }

    /// The steps of one epoch on `train`: its whole batches, at most
    /// `max_steps_per_epoch`. An error if `train` holds less than one batch.
    pub(crate) fn steps_per_epoch(&self, train: &Dataset) -> Result<u64, TrainError> {
        let full = (train.len / self.batch_size) as u64;
        if full == 0 {
            return Err(TrainError::Config(format!(
                "{} has {} training images, fewer than one batch of {}",
                train.source.display(),
                train.len,
                self.batch_size
            )));
        }
        Ok(self.max_steps_per_epoch.map_or(full, |m| m.min(full)))
    }

    /// The number of completed epochs at which a whole run stops:
    /// `stop_after_epoch` if it comes before `epochs`.
    pub(crate) fn end_epoch(&self) -> u64 {
        self.stop_after_epoch
            .map_or(self.epochs, |e| e.min(self.epochs))
    }

    /// What a step at learning rate `lr` after `step` steps of the run
    /// needs besides its batch.
    pub(crate) fn step_spec(&self, lr: f64, step: u64) -> StepSpec {
        StepSpec {
            lr,
            step,
            seed: self.seed,
            label_smoothing: self.label_smoothing,
            sgd: self.sgd,
        }
    }

    /// How the test set is cut for evaluation: in order, no augmentation,
    /// every image.
    pub(crate) fn eval_loader(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.eval_batch_size,
            shuffle: false,
            augment: false,
            drop_last: false,
            seed: 0,
            workers: self.workers,
            prefetch: 2 * self.workers.max(1),
        }
    }

    /// How an epoch's training batches are drawn: shuffled, augmented when
    /// the transform is, whole batches only.
    pub(crate) fn train_loader(&self) -> LoaderConfig {
        LoaderConfig {
            batch_size: self.batch_size,
            shuffle: true,
            augment: self.pad_crop > 0 || self.hflip,
            drop_last: true,
            seed: self.seed,
            workers: self.workers,
            prefetch: 2 * self.workers.max(1),
        }
    }
}

/// Everything that stops a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting, or a dataset that does not fit the model or the settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading or writing the checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Reading, writing or plotting the metrics.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The engine could not run a step or an evaluation (a batch the model
    /// does not accept, a device or a rank that failed, ...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The evaluation's loss could not be computed (labels out of range, ...).
    #[error(transparent)]
    Loss(#[from] LossError),
    /// A step's loss (or gradient) was not finite: the run diverged. The
    /// checkpoint on disk is the last good one.
    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         stopped. The last good checkpoint is {}",
        checkpoint.display()
    )]
    NonFinite {
        /// The loss of the step.
        loss: f64,
        /// The epoch of the step (1-based).
        epoch: u64,
        /// The step within its epoch (1-based).
        step: u64,
        /// The step within the run (1-based).
        global_step: u64,
        /// The last good checkpoint.
        checkpoint: PathBuf,
    },
    /// The output folder could not be created.
    #[error("creating output folder {}: {source}", path.display())]
    OutDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output folder cannot be used (locked by another run, not
    /// writable).
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The output folder holds another run's files, and neither `resume`
    /// nor `overwrite` is set.
    #[error(
        "{} already holds a run ({}): set `resume` to continue it or `overwrite` to replace it, \
         or choose another output folder",
        .dir.display(),
        .files.join(", ")
    )]
    RunExists {
        /// The output folder.
        dir: PathBuf,
        /// The run's files found there.
        files: Vec<String>,
    },
    /// The checkpoint cannot be continued by this run (its record of an
    /// interrupted epoch is malformed, or does not fit this run's epochs).
    #[error("cannot resume from {}: {problem}", .checkpoint.display())]
    Resume {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Why.
        problem: String,
    },
    /// The checkpoint was written with other settings than this run's, and
    /// `resume_with_changes` is not set.
    #[error(
        "{} was written with other settings: {}; resume with the same settings, or set \
         `resume_with_changes` to continue with the new ones",
        .checkpoint.display(),
        .changes.iter().map(|(k, old, new)| format!("{k} {old} -> {new}")).collect::<Vec<_>>().join(", ")
    )]
    SettingsChanged {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Each changed setting: its name (a [`TrainConfig`] field), the
        /// checkpoint's value, this run's.
        changes: Vec<(String, String, String)>,
    },
    /// The run was stopped (Ctrl-C) after a step; its checkpoint is written.
    #[error(
        "interrupted at epoch {epoch}, global step {step}; wrote {}: resume to continue",
        .checkpoint.display()
    )]
    Interrupted {
        /// The epoch in progress (1-based).
        epoch: u64,
        /// Completed steps.
        step: u64,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
    /// [`Trainer::run_epoch`](super::Trainer::run_epoch) after the last
    /// epoch of the run.
    #[error("the run is finished: all {epochs} epochs are done")]
    Finished {
        /// The run's epochs ([`TrainConfig::epochs`]).
        epochs: u64,
    },
}

/// Checks the datasets against model `M` and `cfg`, in the order the
/// messages are given (training data, test data, settings, batches per
/// epoch); returns the steps of one epoch.
pub(crate) fn validate<M: NetworkSpec>(
    cfg: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
) -> Result<u64, TrainError> {
    check_data::<M>(train, "training")?;
    check_data::<M>(test, "test")?;
    cfg.validate_for::<M>()?;
    cfg.steps_per_epoch(train)
}

/// `ds` has the image shape `M` takes and no more classes than it has outputs.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Schedule;
    use crate::weights::TensorSpec;
    use crate::LayerInfo;

    /// A network taking 1x4x4 images into 3 classes (its specification only).
    struct Spec;

    impl NetworkSpec for Spec {
        const NAME: &'static str = "Spec";
        const INPUT: [usize; 3] = [1, 4, 4];
        const CLASSES: usize = 3;
        const PARAMETERS: usize = 0;
        const STATE_LEN: usize = 0;
        const MACS_PER_IMAGE: u64 = 0;
        const ACTIVATIONS_PER_IMAGE: usize = 0;
        const PEAK_INFERENCE_PER_IMAGE: usize = 0;
        fn tensors() -> &'static [TensorSpec] {
            &[]
        }
        fn layers() -> &'static [LayerInfo] {
            &[]
        }
        fn summary() -> &'static str {
            ""
        }
        fn graph() -> &'static [crate::GraphNode] {
            &[]
        }
    }

    fn data(len: usize, side: usize, classes: usize, source: &str) -> Dataset {
        Dataset {
            pixels: vec![0; len * side * side],
            labels: vec![0; len],
            len,
            channels: 1,
            height: side,
            width: side,
            classes,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            source: source.into(),
        }
    }

    fn config() -> TrainConfig {
        TrainConfig {
            epochs: 4,
            batch_size: 8,
            lr: LrPolicy {
                base_lr: 0.1,
                schedule: Schedule::Constant,
                warmup_epochs: 0.0,
                total_epochs: 4.0,
            },
            sgd: Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.0,
            },
            label_smoothing: 0.0,
            seed: 0,
            pad_crop: 0,
            hflip: false,
            out_dir: "out".into(),
            resume: false,
            overwrite: false,
            resume_with_changes: false,
            max_steps_per_epoch: None,
            stop_after_epoch: None,
            workers: 1,
            eval_batch_size: 8,
            progress: false,
            verbose: false,
            primary: true,
        }
    }

    fn message(r: Result<u64, TrainError>) -> String {
        r.expect_err("an invalid configuration").to_string()
    }

    #[test]
    fn steps_per_epoch_counts_whole_batches_up_to_the_cap() {
        let mut cfg = config();
        let train = data(30, 4, 3, "train");
        let test = data(5, 4, 3, "test");
        assert_eq!(validate::<Spec>(&cfg, &train, &test).unwrap(), 3);
        cfg.max_steps_per_epoch = Some(2);
        assert_eq!(validate::<Spec>(&cfg, &train, &test).unwrap(), 2);
        cfg.max_steps_per_epoch = Some(9);
        assert_eq!(validate::<Spec>(&cfg, &train, &test).unwrap(), 3);
    }

    #[test]
    fn the_data_are_checked_before_the_settings() {
        let mut cfg = config();
        cfg.label_smoothing = 1.0;
        let (train, test) = (data(30, 4, 3, "train"), data(5, 4, 3, "test"));
        let wrong_size = data(30, 5, 3, "big");
        assert_eq!(
            message(validate::<Spec>(&cfg, &wrong_size, &test)),
            "invalid configuration: the training images of big are 1x5x5, but model `Spec` \
             takes 1x4x4: choose a model declared for this input"
        );
        assert_eq!(
            message(validate::<Spec>(&cfg, &train, &data(5, 4, 4, "many"))),
            "invalid configuration: many has 4 classes, but model `Spec` has 3 outputs"
        );
        assert_eq!(
            message(validate::<Spec>(&cfg, &train, &test)),
            "invalid configuration: label smoothing must be in [0, 1), found 1"
        );
    }

    #[test]
    fn each_setting_is_checked_with_its_message() {
        let (train, test) = (data(30, 4, 3, "train"), data(5, 4, 3, "test"));
        let check = |change: &dyn Fn(&mut TrainConfig)| {
            let mut cfg = config();
            change(&mut cfg);
            message(validate::<Spec>(&cfg, &train, &test))
        };
        assert!(
            check(&|c| c.lr.base_lr = 0.0).starts_with("invalid configuration: learning rate: ")
        );
        assert!(check(&|c| c.sgd.momentum = -1.0).starts_with("invalid configuration: optimiser: "));
        assert_eq!(
            check(&|c| c.eval_batch_size = 0),
            "invalid configuration: the batch size must be at least 1"
        );
        assert_eq!(
            check(&|c| c.batch_size = 31),
            "invalid configuration: train has 30 training images, fewer than one batch of 31"
        );
        assert_eq!(
            check(&|c| c.epochs = 6),
            "invalid configuration: the learning-rate schedule spans 4 epochs, the run 6: they \
             must be equal (to stop early and resume later, set stop_after_epoch)"
        );
        assert_eq!(
            check(&|c| {
                c.epochs = 0;
                c.lr.total_epochs = 0.0
            }),
            "invalid configuration: a run needs at least 1 epoch"
        );
    }

    /// Settings that trained nothing yet reported success (a step cap of 0,
    /// a warm-up as long as the run) and a crop padding as large as the image
    /// are refused naming the field and the value, before the trainer
    /// touches the disk.
    #[test]
    fn settings_that_would_train_nothing_are_refused() {
        let (train, test) = (data(30, 4, 3, "train"), data(5, 4, 3, "test"));
        let check = |change: &dyn Fn(&mut TrainConfig)| {
            let mut cfg = config();
            change(&mut cfg);
            message(validate::<Spec>(&cfg, &train, &test))
        };
        assert_eq!(
            check(&|c| c.max_steps_per_epoch = Some(0)),
            "invalid configuration: max_steps_per_epoch must be at least 1, found 0 (an epoch \
             of no steps trains nothing)"
        );
        assert_eq!(
            check(&|c| c.stop_after_epoch = Some(0)),
            "invalid configuration: stop_after_epoch must be at least 1, found 0 (the run \
             would stop before training)"
        );
        assert_eq!(
            check(&|c| {
                c.lr.schedule = Schedule::Cosine { min_lr: 0.0 };
                c.lr.warmup_epochs = 4.0
            }),
            "invalid configuration: learning rate: warmup_epochs: expected a warm-up of at \
             least 0 epochs that ends before the run's 4 epochs, found 4"
        );
        assert_eq!(
            check(&|c| c.pad_crop = 4),
            "invalid configuration: pad_crop (the random crop's padding) is 4 pixels, but \
             model `Spec` takes 4x4 images: the padding must be smaller than the image, or a \
             crop can hold no pixel of it"
        );
        let mut cfg = config();
        cfg.pad_crop = 3;
        assert_eq!(validate::<Spec>(&cfg, &train, &test).unwrap(), 3);
        // Without data: the same checks.
        cfg.pad_crop = 9;
        assert!(cfg.validate().is_ok());
        assert!(cfg.validate_for::<Spec>().is_err());
    }

    #[test]
    fn new_gives_a_valid_run_whose_schedule_spans_it() {
        let (train, test) = (data(300, 4, 3, "train"), data(5, 4, 3, "test"));
        for epochs in [1, 3, 200] {
            let cfg = TrainConfig::new(epochs, "out");
            assert_eq!(cfg.lr.total_epochs, epochs as f64);
            assert!(cfg.lr.warmup_epochs <= epochs as f64);
            assert_eq!(
                cfg.checkpoint_path(),
                std::path::Path::new("out/checkpoint.safetensors")
            );
            validate::<Spec>(&cfg, &train, &test).unwrap();
        }
    }

    #[test]
    fn a_run_stops_at_the_earlier_of_epochs_and_stop_after_epoch() {
        let mut cfg = config();
        assert_eq!(cfg.end_epoch(), 4);
        cfg.stop_after_epoch = Some(2);
        assert_eq!(cfg.end_epoch(), 2);
        cfg.stop_after_epoch = Some(7);
        assert_eq!(cfg.end_epoch(), 4);
    }
}
