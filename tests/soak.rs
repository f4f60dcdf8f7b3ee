//! A long run keeps its memory flat: the CPU backend's buffer stores hold
//! what one step and one evaluation need, whatever the number of epochs.
//!
//! The first full CIFAR-10 run on the CPU slowed from 352 to 169 images/s in
//! 7 epochs while its memory rose by 120 MiB an epoch (issue 33): every
//! evaluation image gave a copy of its input to a worker thread's store,
//! which kept it forever and scanned the growing list at every take. This
//! test, seen failing before the fix (the stores grew by one copy per
//! evaluation piece and epoch), runs many short epochs in one process.
//! `scripts/soak-cpu.sh` is the long version on real CIFAR-10 (speed too).
//!
//! Its own test binary: the stores' byte count is process-wide, and the
//! tests of another binary would change it while this one measures.

use sparsenet::runtime::__private::kept_buffer_bytes;
use sparsenet::runtime::data::{Dataset, Transform};
use sparsenet::runtime::ndarray::Array4;
use sparsenet::runtime::optim::Sgd;
use sparsenet::runtime::train::{parse_schedule, LrPolicy, TrainConfig, Trainer};
use sparsenet::zoo::SeedV2Depth40;
use std::sync::Arc;

/// A CIFAR-sized dataset of `n` random images (pixels from a fixed
/// generator, labels by image index), so that the test needs no download.
fn random_cifar(n: usize, seed: u64) -> Dataset {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let images = Array4::from_shape_fn((n, 3, 32, 32), |_| next() as u8);
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    Dataset::from_images(images.view(), &labels, 10).expect("a well-formed dataset")
}

/// Resident memory of this process in MiB (Linux), if it can be read.
fn rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1 << 20) as f64)
}

#[test]
fn many_epochs_keep_the_buffer_stores_flat() {
    const EPOCHS: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (
        Arc::new(random_cifar(256, 1)),
        Arc::new(random_cifar(200, 2)),
    );
    let transform = Transform::from_dataset_stats(&train);
    let cfg = TrainConfig {
        epochs: EPOCHS,
        batch_size: 64,
        lr: LrPolicy {
            base_lr: 0.05,
            schedule: parse_schedule("constant").unwrap(),
            warmup_epochs: 0.0,
            total_epochs: EPOCHS as f64,
        },
        sgd: Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        },
        label_smoothing: 0.0,
        seed: 3,
        pad_crop: 4,
        hflip: true,
        out_dir: dir.path().to_path_buf(),
        resume: false,
        overwrite: false,
        resume_with_changes: false,
        max_steps_per_epoch: None,
        stop_after_epoch: None,
        workers: 1,
        // Odd, so that the last evaluation batch has another size.
        eval_batch_size: 48,
        progress: false,
        verbose: false,
        primary: true,
    };
    let mut trainer = Trainer::<SeedV2Depth40, _>::cpu(cfg, train, test, transform).unwrap();
    let mut kept = Vec::new();
    let mut rss = Vec::new();
    while !trainer.is_finished() {
        trainer.run_epoch().unwrap();
        kept.push(kept_buffer_bytes());
        rss.push(rss_mib());
    }
    eprintln!("kept bytes per epoch: {kept:?}\nresident MiB per epoch: {rss:?}");
    // After two epochs (a step and an evaluation have each run on every
    // thread) the stores hold what a step and an evaluation need. Which
    // worker runs which evaluation piece varies, so a thread's peak may
    // still move by a buffer or two (kilobytes); the leak this test guards
    // against kept 2.4 MB more every epoch (1.4% of the stores each time).
    let settled = kept[1];
    assert!(
        kept[2..].iter().all(|&k| k <= settled + settled / 200),
        "the buffer stores grow epoch after epoch: {kept:?}"
    );
    if let (Some(a), Some(b)) = (rss[2], rss[EPOCHS as usize - 1]) {
        // The allocator may move a few MiB; a leak of the old kind grew by
        // one input copy per evaluation piece and epoch without end.
        assert!(b < a * 1.10 + 8.0, "resident memory grows: {rss:?}");
    }
}
