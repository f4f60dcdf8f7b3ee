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
    example_exe("train")
}

fn example_exe(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --release --examples` (plain `cargo \
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
            "unknown precision `fp16` (expected `f32`, `tf32` or `bf16`)",
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

/// A short run on the tiny data in `data`, writing into `out`, with the
/// flags `extra` (which replace the defaults of the same flags).
fn tiny_run(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(train_exe());
    cmd.arg("--data").arg(data).arg("--out").arg(out);
    for (flag, value) in [
        ("--epochs", "2"),
        ("--batch-size", "16"),
        ("--steps-per-epoch", "2"),
    ] {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(["--workers", "1", "--threads", "1", "--no-progress"])
        .args(extra);
    cmd
}

/// A temporary folder with tiny Fashion-MNIST data in `fashion/`.
fn tiny_setup(train: u32, test: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fashion");
    std::fs::create_dir(&data).unwrap();
    tiny_fashion(&data, train, test);
    (dir, data)
}

fn run_ok(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?}: {}\nstderr:\n{}",
        output.status,
        stderr(&output)
    );
    output
}

fn run_err(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(!output.status.success(), "{cmd:?} is refused");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    stderr(&output)
}

/// A run without --resume into a folder holding another run's checkpoint
/// and metrics used to overwrite them silently (even another model's). Now
/// it is refused naming the folder and the ways out, the files untouched;
/// with --overwrite it starts afresh.
#[test]
fn a_folder_holding_a_run_is_not_overwritten_unasked() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    run_ok(&mut tiny_run(&data, &out, &["--stop-after", "1"]));
    let ckpt = out.join("checkpoint.safetensors");
    let (before, csv) = (
        std::fs::read(&ckpt).unwrap(),
        std::fs::read(out.join("metrics.csv")).unwrap(),
    );
    // Refused before the data is read: no data needed to see it.
    let no_data = dir.path().join("no-data");
    let err = run_err(&mut tiny_run(&no_data, &out, &["--seed", "3"]));
    assert!(
        err.contains(&format!(
            "{} already holds a run (checkpoint.safetensors, metrics.csv): continue it with \
             --resume, replace it with --overwrite, or choose another --out",
            out.display()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "checkpoint untouched"
    );
    assert_eq!(std::fs::read(out.join("metrics.csv")).unwrap(), csv);
    run_ok(&mut tiny_run(&data, &out, &["--seed", "3", "--overwrite"]));
    assert_ne!(std::fs::read(&ckpt).unwrap(), before, "replaced when asked");
    let log = MetricsLog::read_csv(&out.join("metrics.csv")).unwrap();
    assert_eq!(log.records().len(), 2, "the new run's epochs only");
}

/// Two runs on one folder at once wrote over each other's files. A run
/// holds the folder's lock file for its whole life; here the test holds it
/// (as a running run does) and the run fails at once naming the folder.
#[test]
fn a_folder_in_use_by_another_run_is_refused() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    std::fs::create_dir(&out).unwrap();
    let lock = sparsenet::runtime::__private::RunLock::acquire(&out).unwrap();
    // Refused before the data is read: no data needed to see it.
    let err = run_err(&mut tiny_run(&dir.path().join("no-data"), &out, &[]));
    assert!(
        err.contains(&format!(
            "{} is in use by another training run (it holds .sparsenet-run.lock)",
            out.display()
        )),
        "{err}"
    );
    assert!(!out.join("checkpoint.safetensors").exists());
    drop(lock);
    run_ok(&mut tiny_run(&data, &out, &[]));
}

/// `--resume` with no checkpoint started afresh without a word; now it is
/// an error naming the checkpoint, before the data is read.
#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let err = run_err(&mut tiny_run(
        Path::new("/nonexistent/sparsenet-data"),
        &out,
        &["--resume"],
    ));
    assert!(
        err.contains(&format!(
            "error: --resume: there is no checkpoint {} to continue",
            out.join("checkpoint.safetensors").display()
        )),
        "{err}"
    );
    assert!(!err.contains("nonexistent"), "{err}");
}

/// `--resume` with other settings continued silently with them. The
/// checkpoint stores the run's settings; a resume changing any is refused
/// naming each with its old and new value, unless --resume-with-changes.
#[test]
fn resume_with_changed_settings_is_refused_naming_each() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    run_ok(&mut tiny_run(&data, &out, &["--stop-after", "1"]));
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let changed = [
        "--resume",
        "--batch-size",
        "8",
        "--lr",
        "0.05",
        "--label-smoothing",
        "0.1",
        "--seed",
        "5",
    ];
    let err = run_err(&mut tiny_run(&data, &out, &changed));
    for change in [
        "--batch-size 16 -> 8",
        "--lr 0.1 -> 0.05",
        "--label-smoothing 0.0 -> 0.1",
        "--seed 0 -> 5",
        "pass --resume-with-changes to continue with the new ones",
    ] {
        assert!(err.contains(change), "{change}: {err}");
    }
    assert!(!err.contains("--momentum"), "{err}");
    let ckpt = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ckpt, before, "checkpoint untouched");
    let mut with = changed.to_vec();
    with.push("--resume-with-changes");
    let output = run_ok(&mut tiny_run(&data, &out, &with));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("with a changed setting: lr 0.1 -> 0.05"),
        "{stdout}"
    );
    // The checkpoint now stores the new settings: they resume unrefused.
    run_ok(&mut tiny_run(&data, &out, &changed));
}

/// The tensors of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect();
    all.sort();
    all
}

/// Ctrl-C killed the run at once, losing the epoch in progress. Now the
/// first SIGINT finishes the step, writes a checkpoint of the position
/// within the epoch, says so and exits with 130; --resume then ends with the
/// same weights, running statistics and velocity as an uninterrupted run.
#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes_exactly() {
    use std::io::BufRead;
    let (dir, data) = tiny_setup(320, 32);
    // 40 steps per epoch: the signal lands within the first epoch.
    let flags = ["--batch-size", "8", "--steps-per-epoch", "40"];
    let whole = dir.path().join("whole");
    run_ok(&mut tiny_run(&data, &whole, &flags));

    let out = dir.path().join("interrupted");
    let mut child = tiny_run(&data, &out, &flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The model line comes after the handler is installed, before training.
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("model "), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let output = child.wait_with_output().unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(130), "{err}\n{rest:?}");
    assert!(
        err.contains("interrupted: finishing the current step and writing a checkpoint")
            && err.contains(&format!(
                "wrote {}: continue with --resume",
                out.join("checkpoint.safetensors").display()
            )),
        "{err}"
    );
    let resumed = run_ok(&mut tiny_run(
        &data,
        &out,
        &[&flags[..], &["--resume"]].concat(),
    ));
    let said = String::from_utf8_lossy(&resumed.stdout);
    assert!(said.contains("steps into epoch 1)"), "mid-epoch: {said}");
    let (a, b) = (
        tensors(&whole.join("checkpoint.safetensors")),
        tensors(&out.join("checkpoint.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{name} differs from the uninterrupted run's");
    }
    let (la, lb) = (
        MetricsLog::read_csv(&whole.join("metrics.csv")).unwrap(),
        MetricsLog::read_csv(&out.join("metrics.csv")).unwrap(),
    );
    for (ra, rb) in la.records().iter().zip(lb.records()) {
        assert_eq!(
            (ra.epoch, ra.step, ra.train_loss, ra.train_acc, ra.test_loss),
            (rb.epoch, rb.step, rb.train_loss, rb.train_acc, rb.test_loss)
        );
    }
}

/// A run killed while writing left `.checkpoint.safetensors.XXXXXX.tmp`
/// behind for good. A run removes such files of its own files at start,
/// and nothing else.
#[test]
fn stale_temporary_files_are_removed_at_start() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    let ours = [
        ".checkpoint.safetensors.Ab3xYz.tmp",
        ".metrics.csv.q1W2e3.tmp",
    ];
    let others = [
        ".weights.safetensors.Ab3xYz.tmp",
        "notes.tmp",
        "sub/.metrics.csv.Ab3xYz.tmp",
    ];
    for name in ours.iter().chain(&others) {
        std::fs::write(out.join(name), b"partial").unwrap();
    }
    run_ok(&mut tiny_run(&data, &out, &[]));
    for name in ours {
        assert!(!out.join(name).exists(), "{name} removed");
    }
    for name in others {
        assert!(out.join(name).exists(), "{name} kept");
    }
}

/// A folder refusing files was found only when the first epoch's files
/// were written, and a bad --save-weights path after the whole run. Both
/// are now errors naming the path before training (--save-weights before
/// the data is read). As root, chmod does not stop writes, so the read-only
/// folder is /proc/self, which refuses new files even to root; the chmod
/// variant runs only when it bites.
#[test]
fn unwritable_outputs_are_found_before_training() {
    let (dir, data) = tiny_setup(64, 32);
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let weights = file.join("w.safetensors");
    let err = run_err(&mut tiny_run(
        Path::new("/nonexistent/sparsenet-data"),
        &dir.path().join("run"),
        &["--save-weights", weights.to_str().unwrap()],
    ));
    assert!(
        err.contains(&format!(
            "error: --save-weights {}: {} is not writable",
            weights.display(),
            file.display()
        )),
        "{err}"
    );
    assert!(!err.contains("nonexistent"), "{err}");

    let mut outs = vec![PathBuf::from("/proc/self")];
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        // As after an earlier run: the lock file opens, only the probe fails.
        std::fs::write(ro.join(".sparsenet-run.lock"), b"").unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::write(ro.join("probe"), b"").is_err() {
            outs.push(ro);
        } else {
            eprintln!("running as root: chmod 555 does not stop writes; only /proc/self checked");
        }
    }
    for out in outs {
        let output = tiny_run(&data, &out, &[]).output().unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("error: {} is not writable", out.display())),
            "{err}"
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !stdout.contains("epoch "),
            "refused before training: {stdout}"
        );
    }
}

/// Checkpoints written before the settings were stored have no `run.*`
/// metadata: refusing them would strand their runs, so they resume with a
/// warning that only the model and the seed are checked.
#[test]
fn an_older_checkpoint_without_settings_resumes_with_a_warning() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    run_ok(&mut tiny_run(&data, &out, &["--stop-after", "1"]));
    let ckpt = out.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.retain(|k, _| !k.starts_with("run."));
    let older = safetensors::serialize(st.tensors(), &Some(meta)).unwrap();
    std::fs::write(&ckpt, older).unwrap();
    let output = run_ok(&mut tiny_run(&data, &out, &["--resume", "--lr", "0.05"]));
    assert!(
        stderr(&output).contains(&format!(
            "warning: {} stores no run settings (an older checkpoint): only the model and \
             the seed are checked against this run's",
            ckpt.display()
        )),
        "{}",
        stderr(&output)
    );
    let err = run_err(&mut tiny_run(&data, &out, &["--resume", "--seed", "4"]));
    assert!(err.contains("--seed 0 -> 4"), "{err}");
}

/// CIFAR-100's binary format: per image a coarse label byte, a fine label
/// byte, then 3 x 32 x 32 pixel bytes; fine labels cycle through 100 classes.
fn tiny_cifar100(dir: &Path, train: usize, test: usize) {
    for (name, n) in [("train.bin", train), ("test.bin", test)] {
        let mut bytes = Vec::with_capacity(n * 3074);
        for i in 0..n {
            bytes.push((i % 20) as u8);
            bytes.push((i % 100) as u8);
            bytes.extend((0..3072).map(|k| ((k * 31 + i * 7) % 251) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// `--dataset cifar100` was advertised but no zoo network had 100 outputs:
/// every run stopped at the class check. seed-v2 and sparsenet-bc100 now
/// train their 100-class declarations; the other models are refused
/// before any data is read, naming the ones that work.
#[test]
fn a_cifar100_run_trains_a_100_class_network() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-100-binary");
    std::fs::create_dir(&data).unwrap();
    tiny_cifar100(&data, 64, 100);
    let out = dir.path().join("run");
    let output = run_ok(tiny_run(&data, &out, &["--epochs", "1"]).args([
        "--model",
        "seed-v2",
        "--dataset",
        "cifar100",
    ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("model SeedV2Depth40Cifar100") && stdout.contains("100 classes"),
        "{stdout}"
    );
    let log = MetricsLog::read_csv(&out.join("metrics.csv")).unwrap();
    assert_eq!(log.records().len(), 1);
    assert!(log.records()[0].train_loss.is_finite());

    let e = run_err(tiny_run(&data, &dir.path().join("other"), &[]).args([
        "--model",
        "fashion",
        "--dataset",
        "cifar100",
    ]));
    assert!(
        e.contains("--model fashion has 10 outputs")
            && e.contains("--model seed-v2 or --model sparsenet-bc100"),
        "{e}"
    );
    assert!(!dir.path().join("other").exists(), "nothing written");
}

/// `predict` on a checkpoint of `train`: files and folders, an image of
/// another size refused naming both sizes unless `--resize`, an RGB image
/// for a grayscale model refused naming the channel counts.
#[test]
fn predict_classifies_files_and_folders_and_resizes_only_when_asked() {
    let (dir, data) = tiny_setup(64, 32);
    let out = dir.path().join("run");
    let onnx = dir.path().join("model.onnx");
    run_ok(&mut tiny_run(
        &data,
        &out,
        &["--epochs", "1", "--export-onnx", onnx.to_str().unwrap()],
    ));
    // tests/onnx_export.rs checks such files in onnxruntime.
    assert!(
        std::fs::metadata(&onnx).unwrap().len() > 80_000,
        "--export-onnx wrote the model"
    );
    let ckpt = out.join("checkpoint.safetensors");
    let images = dir.path().join("images");
    gray_png(&images.join("a.png"), 1);
    gray_png(&images.join("b.png"), 2);
    let big = dir.path().join("big.png");
    image::GrayImage::from_fn(40, 30, |x, y| image::Luma([(x * 5 + y) as u8]))
        .save(&big)
        .unwrap();
    let predict = || {
        let mut cmd = Command::new(example_exe("predict"));
        cmd.arg("--weights").arg(&ckpt).args(["--top", "2"]);
        cmd
    };
    // A folder and a file: three images, each with its two best classes.
    let output = run_ok(predict().arg(&images).arg(images.join("a.png")));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 9, "{stdout}");
    assert!(
        lines[0].ends_with("a.png") && lines[3].ends_with("b.png") && lines[6].ends_with("a.png"),
        "{stdout}"
    );
    assert!(lines[1].contains('%') && lines[2].contains('%'), "{stdout}");

    let e = run_err(predict().arg(&big));
    assert!(
        e.contains("the image is 30x40 (height x width), the model `FashionSparseNet` takes 28x28: give --resize"),
        "{e}"
    );
    let output = run_ok(predict().arg("--resize").arg(&big));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(&big.display().to_string()));

    let rgb = dir.path().join("rgb.png");
    image::RgbImage::from_fn(28, 28, |x, _| image::Rgb([x as u8, 0, 9]))
        .save(&rgb)
        .unwrap();
    let e = run_err(predict().arg("--resize").arg(&rgb));
    assert!(
        e.contains("the image has 3 channel(s), the model `FashionSparseNet` takes 1 (grayscale)"),
        "{e}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = run_err(predict().arg(&empty));
    assert!(
        e.contains("a folder without .jpg, .jpeg or .png files"),
        "{e}"
    );
}
