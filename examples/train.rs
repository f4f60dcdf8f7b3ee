//! Trains and evaluates a SparseNet on real data.
//!
//!     cargo run --release --example train                 # default: Fashion-MNIST
//!     cargo run --release --example train -- --help
//!     cargo run --release --features cuda --example train -- --device cuda --model seed-v2 --dataset cifar10
//!
//! Writes `checkpoint.safetensors`, `metrics.csv` and `metrics.png` into
//! `--out` after every epoch; `--resume` continues a run exactly. A folder
//! holding another run is refused unless `--resume` or `--overwrite`; the
//! first Ctrl-C finishes the step, writes a checkpoint and exits with 130.
//!
//! Data-parallel on the CPU over MPI (built with `--features mpi`):
//!
//!     mpirun -np 4 target/release/examples/train --model seed-v2 --dataset cifar10
//!
//! trains one model over the 4 processes, each on its quarter of every
//! batch (`sparsenet::runtime::distributed`); rank 0 alone writes and prints.
//!
//! A command line over `sparsenet::runtime::train::Trainer`: it parses the
//! flags, loads the dataset, picks the model and the engine, and builds the
//! `TrainConfig`; the training itself is the runtime's.

use clap::{Parser, ValueEnum};
use sparsenet::runtime::__private::{check_out_dir, check_writable, install_sigint_handler};
use sparsenet::runtime::data::{
    load_cifar10, load_cifar100, load_fashion_mnist, load_image_folders, Dataset, Transform,
};
use sparsenet::runtime::gpu::GpuEngine;
use sparsenet::runtime::gpu::{emulator::Emulator, GpuNetwork, Precision};
use sparsenet::runtime::optim::Sgd;
use sparsenet::runtime::train::{
    parse_schedule, LrParam, LrPolicy, Recipe, TrainConfig, TrainError, TrainReport, Trainer,
};
use sparsenet::runtime::Model;
use sparsenet::zoo::*;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `println!` that carries on when stdout is closed (`train ... | head -1`):
/// `println!` panics there, which stopped the run; its results are files.
/// Silent on the ranks but 0 of a data-parallel run.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if !QUIET.load(Ordering::Relaxed) {
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }
    }};
}

/// Set on the ranks other than 0 of a data-parallel run.
static QUIET: AtomicBool = AtomicBool::new(false);

/// The communicator of a run started by an MPI launcher.
#[cfg(feature = "mpi")]
type Comm = sparsenet::runtime::distributed::MpiCollective;
/// Without the `mpi` feature no communicator is ever made.
#[cfg(not(feature = "mpi"))]
type Comm = sparsenet::runtime::distributed::SingleProcess;

/// The MPI world when `mpirun` (or `mpiexec`, `srun`) started this process.
fn connect(args: &Args) -> Result<Option<Comm>, String> {
    if !sparsenet::runtime::distributed::launched_by_mpi() {
        return Ok(None);
    }
    #[cfg(feature = "mpi")]
    {
        if args.collective_timeout == 0 {
            return Err("--collective-timeout must be at least 1 second".into());
        }
        let timeout = std::time::Duration::from_secs(args.collective_timeout);
        Comm::init(timeout).map(Some).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = args;
        Err("started by an MPI launcher, but this binary was built without MPI: build it with              `cargo build --release --features mpi --example train` (each process would              otherwise train its own copy)"
            .into())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModelName {
    /// Small paper-style SparseNet for 28x28 grayscale (the default).
    Fashion,
    /// The seed's 2018-02-20 version, depth 40, growth 12 (3x32x32).
    SeedV2,
    /// The seed's pre-2018-01-30 version as its notebook builds it (3x32x32).
    SeedV1,
    /// The paper's SparseNet-40, growth 24 (3x32x32).
    Sparsenet40,
    /// The paper's SparseNet-BC-100, growth 24 (3x32x32).
    SparsenetBc100,
    /// DenseNet-40, growth 12, for comparison (3x32x32).
    Densenet40,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DatasetName {
    /// IDX files (Debian: dataset-fashion-mnist).
    FashionMnist,
    /// A .tar.gz of image folders, a folder with train/ and test/, or the official binary version.
    Cifar10,
    /// The official binary version (train.bin, test.bin); --model seed-v2 or sparsenet-bc100
    /// (their 100-class declarations).
    Cifar100,
    /// A folder with train/ and test/ image folders (one subfolder per class).
    Folder,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Device {
    /// The generated CPU code.
    Cpu,
    /// The generated CUDA kernels on GPU 0 (needs a build with `--features cuda`).
    Cuda,
    /// The generated CUDA kernels run by the CPU stand-in (slow; for checking).
    Emulated,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum RecipeName {
    /// Sensible defaults for a short run (the flags' defaults).
    Quick,
    /// The SparseNet paper's CIFAR recipe: batch 64, lr 0.1 Nesterov, wd 1e-4, 300 epochs, /10 at 50% and 75%.
    Paper,
}

/// Train and evaluate a SparseNet-family network on real data.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Network to train.
    #[arg(long, value_enum, default_value = "fashion")]
    model: ModelName,
    /// Dataset format.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    dataset: DatasetName,
    /// Where the training steps and evaluation run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: Device,
    /// Arithmetic on the GPU (cuda, emulated): tf32 (tensor cores, f32
    /// accumulation; cuDNN's default), f32 (IEEE), or bf16 (activations and
    /// their gradients stored as bfloat16, TF32 tensor cores, f32 weights,
    /// statistics and accumulation) [tf32].
    #[arg(long)]
    precision: Option<Precision>,
    /// Where the dataset is (default: /usr/share/datasets/fashion-mnist for
    /// Fashion-MNIST, ../shared/data/cifar10-jpeg.tar.gz for CIFAR-10).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Preset of the optimisation flags; flags given explicitly win.
    #[arg(long, value_enum, default_value = "quick")]
    recipe: RecipeName,
    /// Epochs [quick: 6].
    #[arg(long)]
    epochs: Option<u64>,
    /// Images per training step [quick: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [quick: 0.1].
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule: constant, step, step:0.5,0.75, cosine, cosine:MIN [quick: cosine].
    #[arg(long)]
    schedule: Option<String>,
    /// Epochs of linear warm-up [quick: 0.3].
    #[arg(long)]
    warmup: Option<f64>,
    /// SGD momentum [0.9].
    #[arg(long)]
    momentum: Option<f64>,
    /// Disable Nesterov momentum.
    #[arg(long)]
    no_nesterov: bool,
    /// L2 weight decay [quick: 5e-4, paper: 1e-4].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Label smoothing in [0, 1).
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Seed of initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder for checkpoint.safetensors, metrics.csv, metrics.png.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors (an error if there is none;
    /// the run's settings must be the checkpoint's).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// With --resume: continue even though settings differ from the
    /// checkpoint's (each change is printed).
    #[arg(long, requires = "resume")]
    resume_with_changes: bool,
    /// Start a new run in OUT even though it holds another run's checkpoint
    /// or metrics (they are deleted).
    #[arg(long)]
    overwrite: bool,
    /// Train on the first N images only (a balanced subset).
    #[arg(long)]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only (a balanced subset).
    #[arg(long)]
    test_subset: Option<usize>,
    /// Stop each epoch after N steps.
    #[arg(long)]
    steps_per_epoch: Option<u64>,
    /// Stop after this many epochs (the schedule still spans --epochs); continue later with --resume.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Random-crop padding in pixels (default: 2 for 28x28, 4 for 32x32 images).
    #[arg(long)]
    pad_crop: Option<usize>,
    /// Random horizontal flips (default: on for colour images, off for grayscale).
    #[arg(long)]
    hflip: Option<bool>,
    /// Background threads preparing batches.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Compute threads (default: all cores, shared by the processes of an
    /// MPI job on the machine).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds a data-parallel collective may wait for the other ranks
    /// before the job is ended (a rank died or hangs) [600].
    #[arg(long, default_value_t = 600)]
    collective_timeout: u64,
    /// Data-parallel runs: synchronised BatchNorm (statistics over the whole
    /// global batch, as one process; default: each rank its own share's,
    /// as PyTorch DDP).
    #[arg(long)]
    sync_bn: bool,
    /// Save the final weights (safetensors) here too.
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Export the final model as ONNX (opset 17; input `input`, output `logits`) here.
    #[arg(long)]
    export_onnx: Option<PathBuf>,
    /// Print the model's summary table before training.
    #[arg(long)]
    summary: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn load(args: &Args) -> Result<(Dataset, Dataset), String> {
    let default = |p: &str| PathBuf::from(p);
    let (train, test) = match args.dataset {
        DatasetName::FashionMnist => load_fashion_mnist(
            &args
                .data
                .clone()
                .unwrap_or_else(|| default("/usr/share/datasets/fashion-mnist")),
        ),
        DatasetName::Cifar10 => {
            let path = args.data.clone().unwrap_or_else(|| {
                let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
                here.join("../shared/data/cifar10-jpeg.tar.gz")
            });
            load_cifar10(&path)
        }
        DatasetName::Cifar100 => match &args.data {
            Some(p) => load_cifar100(p),
            None => {
                return Err(
                    "--dataset cifar100 needs --data PATH (the official binary version)".into(),
                )
            }
        },
        DatasetName::Folder => match &args.data {
            Some(p) => load_image_folders(p),
            None => return Err("--dataset folder needs --data DIR holding train/ and test/".into()),
        },
    }
    .map_err(|e| e.to_string())?;
    let train = match args.train_subset {
        Some(n) => train.take(n),
        None => train,
    };
    let test = match args.test_subset {
        Some(n) => test.take(n),
        None => test,
    };
    Ok((train, test))
}

fn config(args: &Args, grayscale: bool, small: bool) -> Result<TrainConfig, String> {
    let recipe = match args.recipe {
        RecipeName::Paper => Recipe::paper(),
        RecipeName::Quick => Recipe::quick(),
    };
    let epochs = args.epochs.unwrap_or(recipe.epochs);
    if epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    let schedule = match &args.schedule {
        Some(s) => parse_schedule(s).map_err(|e| format!("--schedule: {e}"))?,
        None => recipe.lr.schedule.clone(),
    };
    let lr = LrPolicy {
        base_lr: args.lr.unwrap_or(recipe.lr.base_lr),
        schedule,
        // A --warmup as long as the run is refused (by validate), not cut
        // to it: a cosine run with it trained at rate 0 throughout.
        warmup_epochs: args.warmup.unwrap_or(recipe.lr.warmup_epochs),
        total_epochs: epochs as f64,
    };
    lr.validate().map_err(|e| {
        let flag = match e.param {
            LrParam::BaseLr => "--lr",
            LrParam::Schedule => "--schedule",
            LrParam::WarmupEpochs => "--warmup",
            LrParam::TotalEpochs => "--epochs",
        };
        format!("{flag}: {}", e.reason)
    })?;
    let sgd = Sgd {
        momentum: args.momentum.unwrap_or(recipe.sgd.momentum),
        nesterov: !args.no_nesterov && recipe.sgd.nesterov,
        weight_decay: args.weight_decay.unwrap_or(recipe.sgd.weight_decay),
    };
    sgd.validate()
        .map_err(|e| format!("--momentum/--weight-decay: {e}"))?;
    let batch_size = args.batch_size.unwrap_or(recipe.batch_size);
    if batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    if args.steps_per_epoch == Some(0) {
        return Err("--steps-per-epoch must be at least 1, found 0".into());
    }
    Ok(TrainConfig {
        epochs,
        batch_size,
        lr,
        sgd,
        label_smoothing: args.label_smoothing,
        seed: args.seed,
        pad_crop: args.pad_crop.unwrap_or(if small { 2 } else { 4 }),
        hflip: args.hflip.unwrap_or(!grayscale),
        out_dir: args.out.clone(),
        resume: args.resume,
        overwrite: args.overwrite,
        resume_with_changes: args.resume_with_changes,
        max_steps_per_epoch: args.steps_per_epoch,
        stop_after_epoch: args.stop_after,
        workers: args.workers,
        eval_batch_size: 256,
        progress: !args.no_progress,
        verbose: true,
        primary: true,
    })
}

/// What a run writes is checked before the data is loaded: `--resume`
/// needs a checkpoint (without one it started afresh, silently), and the
/// folder of `--save-weights` must take a file (found only after the whole
/// run otherwise). OUT itself is checked by the trainer, which creates it.
fn check_outputs(args: &Args, cfg: &TrainConfig) -> Result<(), String> {
    let checkpoint = cfg.checkpoint_path();
    if args.resume && !checkpoint.is_file() {
        return Err(format!(
            "--resume: there is no checkpoint {} to continue; leave out --resume to start a \
             new run",
            checkpoint.display()
        ));
    }
    for (flag, path) in [
        ("--save-weights", &args.save_weights),
        ("--export-onnx", &args.export_onnx),
    ] {
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(format!(
                "{flag} {}: is a folder; name a file",
                path.display()
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        check_writable(parent).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The flag Ctrl-C sets, once `main` installed the handler.
static STOP: std::sync::OnceLock<&'static AtomicBool> = std::sync::OnceLock::new();

/// `trainer` stopping on Ctrl-C.
fn on_ctrl_c<M: Model<f32>, E>(trainer: Trainer<M, E>) -> Trainer<M, E>
where
    E: sparsenet::runtime::engine::Engine<M>,
{
    match STOP.get() {
        Some(flag) => trainer.stop_on(flag),
        None => trainer,
    }
}

fn run<M: Model<f32> + GpuNetwork>(args: &Args, comm: Option<Comm>) -> Result<(), String> {
    use sparsenet::runtime::distributed::{Collective, DataParallel};
    if comm.is_some() && !matches!(args.device, Device::Cpu) {
        return Err(
            "data-parallel training (mpirun) runs the CPU path; --device cuda over NCCL is not built yet"
                .into(),
        );
    }
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    if args.sync_bn && comm.is_none() {
        return Err("--sync-bn applies to data-parallel runs (started by mpirun); one process already normalises over the whole batch".into());
    }
    let precision = match (args.device, args.precision) {
        (Device::Cpu, Some(p)) => {
            return Err(format!(
                "--precision {p} applies to --device cuda or emulated; the CPU path computes in f32"
            ))
        }
        (_, p) => p.unwrap_or_default(),
    };
    // Every flag is checked before any data is loaded; the defaults that
    // depend on the images follow the model's input, which the data must match.
    let [channels, height, _] = M::INPUT;
    let mut cfg = config(args, channels == 1, height <= 28)?;
    cfg.primary = rank == 0;
    cfg.validate_for::<M>().map_err(|e| e.to_string())?;
    if cfg.primary {
        check_outputs(args, &cfg)?;
        check_out_dir(&cfg).map_err(|e| in_flags(&e))?;
    }
    if let Some(c) = &comm {
        say!(
            "data-parallel: {} ranks, each on its share of every batch of {}, {} BatchNorm",
            c.size(),
            cfg.batch_size,
            if args.sync_bn {
                "synchronised"
            } else {
                "per-rank"
            }
        );
    }
    let (train_ds, test_ds) = load(args)?;
    say!(
        "model {}: {} parameters, {:.1} M multiply-adds per image; data {}: {} train / {} test images {}x{}x{}, {} classes",
        M::NAME,
        M::PARAMETERS,
        M::MACS_PER_IMAGE as f64 / 1e6,
        train_ds.source.display(),
        train_ds.len,
        test_ds.len,
        train_ds.channels,
        train_ds.height,
        train_ds.width,
        train_ds.classes
    );
    if args.summary {
        say!("{}", M::summary());
    }
    let transform = Transform::from_dataset_stats(&train_ds);
    let start = std::time::Instant::now();
    let (train_ds, test_ds) = (Arc::new(train_ds), Arc::new(test_ds));
    let capacity = cfg.batch_size.max(cfg.eval_batch_size);
    let run = cfg.clone();
    let (model, report) = match args.device {
        Device::Cpu if comm.is_some() => {
            let comm = comm.expect("checked");
            Trainer::new(run, train_ds, test_ds, transform, |_: &M, _| {
                Ok(DataParallel::new::<M>(comm).sync_batch_norm(args.sync_bn))
            })
            .map(on_ctrl_c)
            .and_then(Trainer::fit)
        }
        Device::Cpu => Trainer::<M, _>::cpu(run, train_ds, test_ds, transform)
            .map(on_ctrl_c)
            .and_then(Trainer::fit),
        Device::Emulated => Trainer::new(run, train_ds, test_ds, transform, |m: &M, opt| {
            GpuEngine::new(Emulator::<f32>::new(), m, opt, capacity, precision)
        })
        .map(on_ctrl_c)
        .and_then(Trainer::fit),
        Device::Cuda => cuda_run::<M>(run, train_ds, test_ds, transform, capacity, precision),
    }
    .map_err(|e| in_flags(&e))?;
    if !cfg.primary {
        return Ok(());
    }
    if let Some(path) = &args.save_weights {
        model.save(path).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.export_onnx {
        sparsenet::runtime::onnx::save_onnx(&model, path).map_err(|e| e.to_string())?;
    }
    let last = report.metrics.records().last().copied();
    match last {
        Some(r) => say!(
            "done: test accuracy {:.2}% after {} epochs ({} steps); {:.0} s in this run; outputs in {}",
            100.0 * r.test_acc,
            r.epoch,
            report.steps,
            start.elapsed().as_secs_f64(),
            cfg.out_dir.display()
        ),
        None => say!("nothing to do: the checkpoint in {} already has {} epochs", cfg.out_dir.display(), cfg.epochs),
    }
    Ok(())
}

/// The command line's flag for a [`TrainConfig`] setting the library names.
fn flag_of(setting: &str) -> String {
    match setting {
        "batch_size" => "--batch-size".into(),
        "warmup_epochs" => "--warmup".into(),
        "weight_decay" => "--weight-decay".into(),
        "label_smoothing" => "--label-smoothing".into(),
        "pad_crop" => "--pad-crop".into(),
        "max_steps_per_epoch" => "--steps-per-epoch".into(),
        "nesterov" => "nesterov (--no-nesterov)".into(),
        other => format!("--{other}"),
    }
}

/// A training error as this command line says it: what the library calls
/// a setting (`resume`, `overwrite`, the output folder) named by its flag.
fn in_flags(e: &TrainError) -> String {
    use sparsenet::runtime::train::RunDirError;
    match e {
        TrainError::RunExists { dir, files } => format!(
            "{} already holds a run ({}): continue it with --resume, replace it with \
             --overwrite, or choose another --out",
            dir.display(),
            files.join(", ")
        ),
        TrainError::SettingsChanged {
            checkpoint,
            changes,
        } => format!(
            "{} was written with other settings: {}; resume with the same flags, or pass \
             --resume-with-changes to continue with the new ones",
            checkpoint.display(),
            changes
                .iter()
                .map(|(k, old, new)| format!("{} {old} -> {new}", flag_of(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        TrainError::Interrupted {
            epoch,
            step,
            checkpoint,
        } => format!(
            "interrupted at epoch {epoch}, global step {step}; wrote {}: continue with --resume",
            checkpoint.display()
        ),
        TrainError::RunDir(RunDirError::Busy { dir }) => format!(
            "{} is in use by another training run (it holds {}); wait for it to finish or \
             choose another --out",
            dir.display(),
            sparsenet::runtime::__private::LOCK_FILE
        ),
        other => other.to_string(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_run<M: Model<f32> + GpuNetwork>(
    cfg: TrainConfig,
    train_ds: Arc<Dataset>,
    test_ds: Arc<Dataset>,
    transform: Transform,
    capacity: usize,
    precision: Precision,
) -> Result<(M, TrainReport), TrainError> {
    use sparsenet::runtime::gpu::cuda::CudaBackend;
    Trainer::new(cfg, train_ds, test_ds, transform, |m: &M, opt| {
        let backend = CudaBackend::new(0)?;
        say!(
            "device: {} ({}), precision {precision}",
            backend.device_name(),
            backend.arch()
        );
        GpuEngine::new(backend, m, opt, capacity, precision)
    })
    .map(on_ctrl_c)?
    .fit()
}

#[cfg(not(feature = "cuda"))]
fn cuda_run<M: Model<f32> + GpuNetwork>(
    _: TrainConfig,
    _: Arc<Dataset>,
    _: Arc<Dataset>,
    _: Transform,
    _: usize,
    _: Precision,
) -> Result<(M, TrainReport), TrainError> {
    Err(TrainError::Config(
        "--device cuda: this binary was built without the CUDA backend; rebuild with \
         `cargo run --release --features cuda --example train -- ...`"
            .into(),
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let comm = match connect(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(c) = &comm {
        use sparsenet::runtime::distributed::Collective;
        QUIET.store(c.rank() != 0, Ordering::Relaxed);
    }
    // The processes of an MPI job on one machine share its cores.
    let local = sparsenet::runtime::distributed::local_ranks();
    let threads = args.threads.or_else(|| {
        (comm.is_some() && local > 1).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / local).max(1)
        })
    });
    if let Some(t) = threads {
        if t == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .expect("thread pool is set once");
    }
    match install_sigint_handler() {
        Ok(flag) => {
            let _ = STOP.set(flag);
        }
        Err(e) => eprintln!("warning: Ctrl-C will stop the run without a checkpoint: {e}"),
    }
    // CIFAR-100 takes the zoo's 100-class declarations of the same networks.
    let hundred = args.dataset == DatasetName::Cifar100;
    let result = match args.model {
        ModelName::SeedV2 if hundred => run::<SeedV2Depth40Cifar100>(&args, comm),
        ModelName::SparsenetBc100 if hundred => run::<SparseNetBc100Cifar100>(&args, comm),
        m if hundred => Err(format!(
            "--dataset cifar100 has 100 classes and --model {} has 10 outputs: use --model \
             seed-v2 or --model sparsenet-bc100 (the zoo declares them with 100 classes too), or \
             declare your own network with `classes: 100`",
            m.to_possible_value()
                .expect("no skipped variants")
                .get_name()
        )),
        ModelName::Fashion => run::<FashionSparseNet>(&args, comm),
        ModelName::SeedV2 => run::<SeedV2Depth40>(&args, comm),
        ModelName::SeedV1 => run::<SeedV1Notebook>(&args, comm),
        ModelName::Sparsenet40 => run::<SparseNet40>(&args, comm),
        ModelName::SparsenetBc100 => run::<SparseNetBc100>(&args, comm),
        ModelName::Densenet40 => run::<DenseNet40>(&args, comm),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Stopped by Ctrl-C: the error says where the checkpoint is; 130
        // is the shell's status for a command ended by SIGINT.
        Err(e) if STOP.get().is_some_and(|f| f.load(Ordering::SeqCst)) => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
