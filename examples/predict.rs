//! Classifies image files with a trained network.
//!
//!     cargo run --release --example predict -- --weights runs/latest/checkpoint.safetensors IMAGE...
//!     cargo run --release --example predict -- --weights w.safetensors --model seed-v2 \
//!         --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 --top 3 cat.png dog.jpg
//!
//! A checkpoint written by `train` names its model and carries the input
//! normalisation and the class names of the data it was trained on, so that
//! prediction sees pixels exactly as training did. A plain weights file
//! (`Model::save`) carries none of these: give `--model`, `--mean` and `--std`
//! (and `--classes-file`, one name per line, for names instead of indices).
//!
//! Images are JPEG or PNG files, or folders of them (their `.jpg`, `.jpeg`
//! and `.png` files in name order). An image must have the model's channel
//! count; one of another height or width is refused naming both sizes,
//! unless `--resize` (bilinear, aspect ratio not kept) scales it to the
//! model's input.

use clap::Parser;
use sparsenet::prelude::*;
use sparsenet::runtime::data::{read_image, Augment, Transform};
use sparsenet::runtime::train::{load_weights_any, read_checkpoint_progress, TrainProgress};
use sparsenet::zoo::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "Classifies images with a trained SparseNet")]
struct Args {
    /// A checkpoint written by `train`, or a weights file written by `Model::save`.
    #[arg(long)]
    weights: PathBuf,
    /// The zoo model (fashion, seed-v2, seed-v1, sparsenet40, sparsenet-bc100,
    /// densenet40, seed-v2-cifar100, sparsenet-bc100-cifar100); read from the
    /// checkpoint when it names one.
    #[arg(long)]
    model: Option<String>,
    /// Per-channel mean of pixel/255 used in training, comma-separated
    /// (read from the checkpoint when it has one).
    #[arg(long, value_delimiter = ',')]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation of pixel/255 used in training.
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// A text file with one class name per line (read from the checkpoint when it has them).
    #[arg(long)]
    classes_file: Option<PathBuf>,
    /// How many of the most likely classes to print per image.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// Resize images of another height or width to the model's input
    /// (bilinear; the aspect ratio is not kept) instead of refusing them.
    #[arg(long)]
    resize: bool,
    /// JPEG or PNG files, or folders of them.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// What prediction needs besides the weights: the normalisation and names.
struct Setup {
    transform: Transform,
    class_names: Option<Vec<String>>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run_named(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

/// Picks the model type from `--model` or the checkpoint's metadata.
fn run_named(args: &Args) -> Result<(), Error> {
    let progress = read_checkpoint_progress(&args.weights).ok();
    let name = match (&args.model, &progress) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.model.clone(),
        (None, None) => {
            return Err(format!(
                "{} is not a checkpoint of `train` (no model name in it): give --model",
                args.weights.display()
            )
            .into())
        }
    };
    let p = progress.as_ref();
    match name.as_str() {
        "fashion" | "FashionSparseNet" => run::<FashionSparseNet>(args, p),
        "seed-v2" | "SeedV2Depth40" => run::<SeedV2Depth40>(args, p),
        "seed-v1" | "SeedV1Notebook" => run::<SeedV1Notebook>(args, p),
        "sparsenet40" | "SparseNet40" => run::<SparseNet40>(args, p),
        "sparsenet-bc100" | "SparseNetBc100" => run::<SparseNetBc100>(args, p),
        "densenet40" | "DenseNet40" => run::<DenseNet40>(args, p),
        // The 100-class declarations `train --dataset cifar100` uses.
        "seed-v2-cifar100" | "SeedV2Depth40Cifar100" => run::<SeedV2Depth40Cifar100>(args, p),
        "sparsenet-bc100-cifar100" | "SparseNetBc100Cifar100" => {
            run::<SparseNetBc100Cifar100>(args, p)
        }
        other => Err(format!(
            "unknown model `{other}`; the zoo has fashion, seed-v2, seed-v1, sparsenet40, \
             sparsenet-bc100, densenet40, seed-v2-cifar100, sparsenet-bc100-cifar100"
        )
        .into()),
    }
}

fn run<M: Model<f32>>(args: &Args, progress: Option<&TrainProgress>) -> Result<(), Error> {
    let setup = setup::<M>(args, progress)?;
    let mut model = M::new(0);
    load_weights_any(&mut model, &args.weights)?;

    let [c, h, w] = M::INPUT;
    let files = image_files(&args.images)?;
    // Batches of 64: a folder of thousands of photos needs no more memory
    // than one batch.
    for chunk in files.chunks(64) {
        let mut batch = Array4::<f32>::zeros((chunk.len(), c, h, w));
        for (i, path) in chunk.iter().enumerate() {
            let mut image = read_image(path)?;
            if image.channels != c {
                return Err(format!(
                    "{}: the image has {} channel(s), the model `{}` takes {c} ({})",
                    path.display(),
                    image.channels,
                    M::NAME,
                    if c == 1 { "grayscale" } else { "RGB" }
                )
                .into());
            }
            if (image.height, image.width) != (h, w) {
                if !args.resize {
                    return Err(format!(
                        "{}: the image is {}x{} (height x width), the model `{}` takes {h}x{w}: \
                         give --resize to scale it",
                        path.display(),
                        image.height,
                        image.width,
                        M::NAME
                    )
                    .into());
                }
                image = image.resized(h, w);
            }
            let out = batch
                .index_axis_mut(sparsenet::runtime::ndarray::Axis(0), i)
                .into_slice()
                .expect("a fresh array is contiguous");
            setup
                .transform
                .apply(&image.pixels, (c, h, w), Augment::default(), out);
        }
        let logits = model.infer(batch.view())?;
        for (path, row) in chunk.iter().zip(logits.rows()) {
            println!("{}", path.display());
            for (class, p) in top_k(
                &softmax(row.as_slice().expect("rows are contiguous")),
                args.top,
            ) {
                let name = setup
                    .class_names
                    .as_ref()
                    .map_or_else(|| format!("class {class}"), |n| n[class].clone());
                println!("  {:6.2}%  {name}", 100.0 * p);
            }
        }
    }
    Ok(())
}

/// The normalisation and class names: the flags win, else the checkpoint's.
fn setup<M: Model<f32>>(args: &Args, progress: Option<&TrainProgress>) -> Result<Setup, Error> {
    let meta = |key: &str| progress.and_then(|p| p.extra.get(key));
    let floats = |key: &str| -> Result<Option<Vec<f32>>, Error> {
        meta(key)
            .map(|s| {
                s.split(',')
                    .map(|v| v.trim().parse::<f32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("checkpoint metadata `{key}` = `{s}`: {e}").into())
            })
            .transpose()
    };
    let mean = match &args.mean {
        Some(m) => m.clone(),
        None => floats("normalize_mean")?.ok_or_else(|| missing("mean", &args.weights))?,
    };
    let std = match &args.std {
        Some(s) => s.clone(),
        None => floats("normalize_std")?.ok_or_else(|| missing("std", &args.weights))?,
    };
    let channels = M::INPUT[0];
    for (flag, v) in [("--mean", &mean), ("--std", &std)] {
        if v.len() != channels || v.iter().any(|x| !x.is_finite()) {
            return Err(format!(
                "{flag} needs {channels} finite values (one per input channel of `{}`), found {v:?}",
                M::NAME
            )
            .into());
        }
    }
    if std.iter().any(|&s| s <= 0.0) {
        return Err(format!("--std values must be positive, found {std:?}").into());
    }
    let class_names = match &args.classes_file {
        Some(path) => Some(read_lines(path)?),
        None => meta("class_names").map(|s| s.lines().map(str::to_owned).collect()),
    };
    if let Some(names) = &class_names {
        if names.len() != M::CLASSES {
            return Err(format!(
                "{} class names given, the model `{}` has {} classes",
                names.len(),
                M::NAME,
                M::CLASSES
            )
            .into());
        }
    }
    Ok(Setup {
        transform: Transform::new(mean, std),
        class_names,
    })
}

/// The files to classify: each file given, and each folder's JPEG and PNG
/// files in name order (a folder without any is an error naming it).
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                    })
            })
            .collect();
        if found.is_empty() {
            return Err(format!(
                "{}: a folder without .jpg, .jpeg or .png files",
                path.display()
            )
            .into());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn missing(what: &str, weights: &Path) -> Error {
    format!(
        "{} holds no input normalisation (a weights file, or a checkpoint from before it was \
         recorded): give --{what} as used in training",
        weights.display()
    )
    .into()
}

fn read_lines(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The `k` largest probabilities with their classes, largest first (ties by class).
fn top_k(p: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<(usize, f64)> = p.iter().copied().enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(k.max(1));
    order
}
