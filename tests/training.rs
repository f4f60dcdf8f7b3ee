//! Training end to end on real data (Fashion-MNIST, installed by .ci/run):
//! the loss falls and accuracy beats chance; a resumed run is bitwise equal
//! to an uninterrupted one; a kill at any moment leaves a loadable
//! checkpoint; a diverging run stops naming the step.

use sparsenet::runtime::data::{load_fashion_mnist, Dataset, Transform};
use sparsenet::runtime::optim::Sgd;
use sparsenet::runtime::train::{load_checkpoint_for, parse_schedule, LrPolicy, MetricsLog};
use sparsenet::runtime::train::{read_checkpoint_progress, train, TrainConfig, TrainError};
use sparsenet::runtime::Model;
use sparsenet::zoo::FashionSparseNet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

fn data(train_n: usize, test_n: usize) -> (Arc<Dataset>, Arc<Dataset>, Transform) {
    let (tr, te) = load_fashion_mnist(Path::new(FASHION)).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need Fashion-MNIST: `bash .ci/run` installs it)")
    });
    let tr = tr.take(train_n);
    let te = te.take(test_n);
    let t = Transform::from_dataset_stats(&tr);
    (Arc::new(tr), Arc::new(te), t)
}

fn config(out: &Path, epochs: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 64,
        lr: LrPolicy {
            base_lr: 0.1,
            schedule: parse_schedule("cosine").unwrap(),
            warmup_epochs: 0.2,
            total_epochs: epochs as f64,
        },
        sgd: Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
        label_smoothing: 0.0,
        seed: 7,
        pad_crop: 2,
        hflip: false,
        out_dir: out.to_path_buf(),
        resume: true,
        overwrite: false,
        resume_with_changes: false,
        max_steps_per_epoch: None,
        stop_after_epoch: None,
        workers: 1,
        eval_batch_size: 256,
        progress: false,
        verbose: false,
        primary: true,
    }
}

#[test]
fn a_short_run_learns_fashion_mnist() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, t) = data(9600, 2000);
    let t_mean_std = (t.mean.clone(), t.std.clone());
    let cfg = config(dir.path(), 2);
    let (_, report) = train::<FashionSparseNet>(&cfg, tr, te, t).unwrap();
    let r = report.metrics.records();
    assert_eq!(report.steps, 300);
    eprintln!("short run: {r:?}");
    assert!(
        r[1].train_loss < 0.7 * r[0].train_loss || r[1].train_loss < 0.6,
        "loss did not fall: {r:?}"
    );
    assert!(
        r[1].test_acc > 0.70,
        "test accuracy {:.3} is not far above chance (0.10)",
        r[1].test_acc
    );
    for f in ["checkpoint.safetensors", "metrics.csv", "metrics.png"] {
        assert!(dir.path().join(f).exists(), "{f} written");
    }

    // The checkpoint carries what prediction needs without the data: the
    // normalisation the run used (parsing back to the same f32s) and the
    // class names.
    let progress = read_checkpoint_progress(&cfg.checkpoint_path()).unwrap();
    let floats = |key: &str| -> Vec<f32> {
        progress.extra[key]
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(floats("normalize_mean"), t_mean_std.0);
    assert_eq!(floats("normalize_std"), t_mean_std.1);
    let names: Vec<&str> = progress.extra["class_names"].lines().collect();
    assert_eq!(names.len(), 10);
    assert_eq!((names[0], names[9]), ("T-shirt/top", "Ankle boot"));
}

/// The parameters, statistics and velocity of a checkpoint.
fn checkpoint_contents(path: &Path) -> (Vec<f32>, Vec<f32>, Vec<f32>, u64) {
    let mut m = FashionSparseNet::<f32>::new(0);
    let mut v = vec![0.0f32; FashionSparseNet::<f32>::PARAMETERS];
    let (p, s) = m.stores_mut();
    let progress = load_checkpoint_for(
        path,
        FashionSparseNet::<f32>::NAME,
        FashionSparseNet::<f32>::tensors(),
        p,
        s,
        &mut v,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (m.params().to_vec(), m.state().to_vec(), v, progress.step)
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let (tr, te, t) = data(1280, 256);
    let straight = tempfile::tempdir().unwrap();
    train::<FashionSparseNet>(
        &config(straight.path(), 3),
        tr.clone(),
        te.clone(),
        t.clone(),
    )
    .unwrap();
    let split = tempfile::tempdir().unwrap();
    // Stop after epoch 1 (as a kill between epochs would), then resume.
    let mut first = config(split.path(), 3);
    first.stop_after_epoch = Some(1);
    train::<FashionSparseNet>(&first, tr.clone(), te.clone(), t.clone()).unwrap();
    let (_, report) = train::<FashionSparseNet>(&config(split.path(), 3), tr, te, t).unwrap();
    assert_eq!(report.resumed_from_epoch, 1);
    let a = checkpoint_contents(&straight.path().join("checkpoint.safetensors"));
    let b = checkpoint_contents(&split.path().join("checkpoint.safetensors"));
    assert_eq!(a.3, b.3, "same step count");
    assert!(a.0 == b.0, "parameters differ after resuming");
    assert!(a.1 == b.1, "running statistics differ after resuming");
    assert!(a.2 == b.2, "optimiser state differs after resuming");
    let ma = MetricsLog::read_csv(&straight.path().join("metrics.csv")).unwrap();
    let mb = MetricsLog::read_csv(&split.path().join("metrics.csv")).unwrap();
    assert_eq!(ma.len(), 3);
    for (x, y) in ma.records().iter().zip(mb.records()) {
        assert_eq!(
            (x.epoch, x.step, x.train_loss, x.test_acc, x.test_loss),
            (y.epoch, y.step, y.train_loss, y.test_acc, y.test_loss)
        );
    }
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te, t) = data(640, 128);
    train::<FashionSparseNet>(&config(dir.path(), 1), tr.clone(), te.clone(), t.clone()).unwrap();
    let before = checkpoint_contents(&dir.path().join("checkpoint.safetensors"));
    let mut cfg = config(dir.path(), 3);
    cfg.lr.base_lr = 1e30;
    cfg.lr.warmup_epochs = 0.0;
    // Continuing the 1-epoch run with other settings is the point here.
    cfg.resume_with_changes = true;
    let err = train::<FashionSparseNet>(&cfg, tr, te, t).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TrainError::NonFinite { epoch: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("step") && msg.contains("checkpoint.safetensors"),
        "{msg}"
    );
    let after = checkpoint_contents(&dir.path().join("checkpoint.safetensors"));
    assert!(
        before.0 == after.0 && before.3 == after.3,
        "the last good checkpoint is kept"
    );
}

/// Child side of the kill test: trains until killed.
#[test]
#[ignore = "run by kill_at_any_moment_leaves_a_loadable_checkpoint in a child process"]
fn kill_child() {
    let Ok(out) = std::env::var("SPARSENET_KILL_CHILD_OUT") else {
        return;
    };
    let (tr, te, t) = data(640, 128);
    train::<FashionSparseNet>(&config(Path::new(&out), 10_000), tr, te, t).unwrap();
}

#[test]
fn kill_at_any_moment_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().to_path_buf();
    let ckpt = out.join("checkpoint.safetensors");
    let mut last_step = 0;
    for (round, delay_ms) in [0u64, 170, 330, 90, 610].into_iter().enumerate() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_child", "--ignored", "--nocapture"])
            .env("SPARSENET_KILL_CHILD_OUT", &out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for a checkpoint newer than the last one, then kill at an
        // arbitrary moment of the following epoch (often mid-write).
        let start = std::time::Instant::now();
        loop {
            if ckpt.exists() && checkpoint_contents(&ckpt).3 > last_step {
                break;
            }
            assert!(
                start.elapsed().as_secs() < 120,
                "round {round}: no new checkpoint within 120 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let (_, _, _, step) = checkpoint_contents(&ckpt);
        assert!(
            step > last_step,
            "round {round}: the checkpoint moved forward"
        );
        last_step = step;
        let stray: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                !n.starts_with('.')
                    && !["checkpoint.safetensors", "metrics.csv", "metrics.png"]
                        .contains(&n.as_str())
            })
            .collect();
        assert!(stray.is_empty(), "unexpected files {stray:?}");
        MetricsLog::read_csv(&out.join("metrics.csv")).expect("metrics.csv stays readable");
    }
}

/// The trainer on the GPU engine (its kernels run by the CPU stand-in):
/// same schedule, data order, metrics and checkpoints as the CPU engine, and
/// the checkpoint carries the device's weights, statistics and velocity
/// (it resumes on the CPU).
#[test]
fn the_gpu_engine_trains_like_the_cpu_engine_and_checkpoints_its_state() {
    use sparsenet::runtime::gpu::GpuEngine;
    use sparsenet::runtime::gpu::{emulator::Emulator, Precision};
    use sparsenet::runtime::train::train_with;
    let (tr, te, t) = data(640, 256);
    let mut cfg = config(Path::new("unused"), 2);
    cfg.max_steps_per_epoch = Some(4);
    cfg.batch_size = 32;
    cfg.eval_batch_size = 128;
    cfg.lr.base_lr = 0.02;
    let cpu_dir = tempfile::tempdir().unwrap();
    let gpu_dir = tempfile::tempdir().unwrap();
    cfg.out_dir = cpu_dir.path().to_path_buf();
    let (cpu_model, cpu) =
        train::<FashionSparseNet>(&cfg, tr.clone(), te.clone(), t.clone()).unwrap();
    cfg.out_dir = gpu_dir.path().to_path_buf();
    let (gpu_model, gpu) = train_with(&cfg, tr, te, t, |m: &FashionSparseNet, opt| {
        // IEEE f32 convolutions: the losses below are compared with the CPU's
        // to 1e-3 (TF32 is checked against its own bounds in gpu_emulated).
        GpuEngine::new(Emulator::<f32>::new(), m, opt, 128, Precision::F32)
    })
    .unwrap();
    assert_eq!(gpu.steps, cpu.steps);
    for (g, c) in gpu.metrics.records().iter().zip(cpu.metrics.records()) {
        eprintln!(
            "epoch {}: train loss gpu {:.6} cpu {:.6}, test loss gpu {:.6} cpu {:.6}",
            g.epoch, g.train_loss, c.train_loss, g.test_loss, c.test_loss
        );
        assert!(
            (g.train_loss - c.train_loss).abs() < 1e-3 * c.train_loss,
            "train loss"
        );
        assert!(
            (g.test_loss - c.test_loss).abs() < 1e-2 * c.test_loss,
            "test loss"
        );
    }
    let (gp, gs, gv, gstep) = checkpoint_contents(&gpu_dir.path().join("checkpoint.safetensors"));
    assert_eq!(gstep, gpu.steps);
    assert_eq!(
        gp,
        gpu_model.params(),
        "the checkpoint holds the device's parameters"
    );
    assert_eq!(gs, gpu_model.state(), "and its running statistics");
    let rel = |a: &[f32], b: &[f32]| {
        let d = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        d / b.iter().fold(0.0f32, |m, x| m.max(x.abs()))
    };
    let (_, _, cv, _) = checkpoint_contents(&cpu_dir.path().join("checkpoint.safetensors"));
    eprintln!(
        "relative differences: parameters {:.1e}, velocity {:.1e}",
        rel(&gp, cpu_model.params()),
        rel(&gv, &cv)
    );
    assert!(rel(&gp, cpu_model.params()) < 1e-3, "parameters");
    // Velocity is a sum of the latest gradients, the quantity f32 rounding
    // drift moves most (measured 3.7e-2 here on 2026-11-28; the f64 update is
    // exact: tests/gpu_emulated.rs), so its bound only catches gross errors.
    assert!(rel(&gv, &cv) < 0.15, "velocity");
}

/// The GPU engine keeps the training and test sets in device memory and
/// builds each batch there from the loader's picks (issue 21): the run equals, to the
/// bit, the same run whose batches the host loader builds and uploads
/// (`GpuEngine::host_batches`), with shuffling, crops and flips on.
#[test]
fn the_gpu_engine_builds_batches_on_the_device_exactly_as_the_host_loader() {
    use sparsenet::runtime::gpu::GpuEngine;
    use sparsenet::runtime::gpu::{emulator::Emulator, Precision};
    use sparsenet::runtime::train::train_with;
    let (tr, te, t) = data(320, 64);
    let mut cfg = config(Path::new("unused"), 2);
    cfg.max_steps_per_epoch = Some(3);
    cfg.batch_size = 32;
    cfg.eval_batch_size = 64;
    (cfg.pad_crop, cfg.hflip) = (3, true);
    let device_dir = tempfile::tempdir().unwrap();
    let host_dir = tempfile::tempdir().unwrap();
    cfg.out_dir = device_dir.path().to_path_buf();
    let (on_device, dev) = train_with(
        &cfg,
        tr.clone(),
        te.clone(),
        t.clone(),
        |m: &FashionSparseNet, opt| {
            GpuEngine::new(Emulator::<f32>::new(), m, opt, 64, Precision::F32)
        },
    )
    .unwrap();
    cfg.out_dir = host_dir.path().to_path_buf();
    let (on_host, host) = train_with(&cfg, tr, te, t, |m: &FashionSparseNet, opt| {
        GpuEngine::new(Emulator::<f32>::new(), m, opt, 64, Precision::F32)
            .map(GpuEngine::host_batches)
    })
    .unwrap();
    assert_eq!(dev.steps, host.steps);
    for (d, h) in dev.metrics.records().iter().zip(host.metrics.records()) {
        assert_eq!(
            d.train_loss.to_bits(),
            h.train_loss.to_bits(),
            "epoch {}",
            d.epoch
        );
        assert_eq!(
            d.train_acc.to_bits(),
            h.train_acc.to_bits(),
            "epoch {}",
            d.epoch
        );
        assert_eq!(
            d.test_loss.to_bits(),
            h.test_loss.to_bits(),
            "epoch {}",
            d.epoch
        );
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(on_device.params()), bits(on_host.params()));
    assert_eq!(bits(on_device.state()), bits(on_host.state()));
}
