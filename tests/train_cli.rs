//! The `train` example run as a user runs it, on tiny data written here:
//! every flag is checked before any data is read, a run survives a closed
//! stdout, and `--dataset folder` refuses a test split whose classes differ.
//!
//! The binary is the one cargo built next to this test: `cargo test` builds
//! the examples; with `--test train_cli` alone, build it first
//! (`cargo build --release --example train`).

use sparsenet::runtime::train::MetricsLog;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `target/<profile>/examples/train`, next to `target/<profile>/deps/` where
/// this test runs from.
fn train_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("train{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release --example train` (plain `cargo \
         test` builds it; `cargo test --test train_cli` does not)",
        path.display()
    );
    path
}

/// An IDX file: magic, big-endian dimensions, bytes.
fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// A Fashion-MNIST-shaped folder (the four IDX files, uncompressed) with
/// `train` and `test` images of 28x28, labels cycling through 10 classes.
fn tiny_fashion(dir: &Path, train: u32, test: u32) {
    for (stem, n) in [("train", train), ("t10k", test)] {
        let pixels: Vec<u8> = (0..n * 28 * 28).map(|k| (k * 37 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{stem}-images-idx3-ubyte")),
            idx(0x803, &[n, 28, 28], &pixels),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{stem}-labels-idx1-ubyte")),
            idx(0x801, &[n], &labels),
        )
        .unwrap();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `train ... | head -1`: stdout closes early. The run used to panic at its
/// next line (`println!` on a broken pipe) and lose the rest of training;
/// now it trains every epoch, writes its files and exits with success.
#[test]
fn a_closed_stdout_does_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fashion");
    std::fs::create_dir(&data).unwrap();
    tiny_fashion(&data, 64, 32);
    let out = dir.path().join("run");
    let mut child = Command::new(train_exe())
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--steps-per-epoch",
            "2",
        ])
        .args(["--workers", "1", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the run prints anything: every line it
    // prints meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\nstderr:\n{}",
        output.status,
        stderr(&output)
    );
    let log = MetricsLog::read_csv(&out.join("metrics.csv")).unwrap();
    assert_eq!(log.records().len(), 2, "both epochs are recorded");
    assert!(out.join("checkpoint.safetensors").is_file());
    assert!(out.join("metrics.png").is_file());
}

/// Every flag is checked before the data is read and before anything is
/// written: a bad value is an error naming the flag and the value (the data
/// path here does not exist, so an error about it means the flags were not
/// checked first). A warm-up as long as the run used to be cut to the run,
/// and a cosine schedule then trained at rate 0 throughout; NaN and infinite
/// warm-ups were cut to the run too.
#[test]
fn flags_are_checked_before_the_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--epochs", "6", "--warmup", "6"],
            "error: --warmup: expected a warm-up of at least 0 epochs that ends before the \
             run's 6 epochs, found 6",
        ),
        (&["--epochs", "3", "--warmup", "7"], "--warmup: "),
        (
            &["--warmup", "NaN"],
            "--warmup: expected a warm-up of at least 0 epochs",
        ),
        (&["--warmup", "inf"], ", found inf"),
        (
            &["--lr=-1"],
            "--lr: expected a finite base learning rate > 0, found -1",
        ),
        (
            &["--schedule", "cosine:0.5"],
            "--schedule: expected a cosine minimum learning rate at most the base rate 0.1, \
             found 0.5",
        ),
        (
            &["--steps-per-epoch", "0"],
            "--steps-per-epoch must be at least 1, found 0",
        ),
        (
            &["--pad-crop", "28"],
            "pad_crop (the random crop's padding) is 28 pixels, but model `FashionSparseNet` \
             takes 28x28 images",
        ),
        (
            &["--stop-after", "0"],
            "stop_after_epoch must be at least 1, found 0",
        ),
        (
            &["--precision", "tf32"],
            "--precision tf32 applies to --device cuda or emulated; the CPU path computes in f32",
        ),
        (
            &["--device", "emulated", "--precision", "fp16"],
            "unknown precision `fp16` (expected `f32` or `tf32`)",
        ),
    ];
    for (args, needle) in cases {
        let output = Command::new(train_exe())
            .args(["--data", "/nonexistent/sparsenet-data"])
            .arg("--out")
            .arg(&out)
            .args(*args)
            .output()
            .unwrap();
        let err = stderr(&output);
        assert!(!output.status.success(), "{args:?} is refused");
        assert!(err.contains(needle), "{args:?}: {err:?} names {needle:?}");
        assert!(
            !err.contains("nonexistent"),
            "{args:?}: checked before the data: {err}"
        );
        assert!(!out.exists(), "{args:?}: nothing written");
    }
}

/// Writes a 28x28 grayscale PNG.
fn gray_png(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([seed ^ (x * 9 + y) as u8]))
        .save(path)
        .unwrap();
}

/// `--dataset folder` with a class missing from test/: its labels would
/// mean other classes than in training (every class after the missing one
/// shifts by one). The run used to train and report success; now it is an
/// error naming the class.
#[test]
fn image_folders_with_other_test_classes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("folders");
    for class in ["ant", "bee", "cat"] {
        for k in 0..2 {
            gray_png(&data.join(format!("train/{class}/{k}.png")), k * 40);
        }
    }
    gray_png(&data.join("test/ant/0.png"), 1);
    gray_png(&data.join("test/cat/0.png"), 2);
    let output = Command::new(train_exe())
        .args(["--dataset", "folder", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("run"))
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--steps-per-epoch",
            "1",
        ])
        .args(["--workers", "1", "--no-progress"])
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "refused: {err}");
    assert!(
        err.contains("the test classes differ from the training classes")
            && err.contains("missing from test: 'bee'"),
        "{err}"
    );
}
