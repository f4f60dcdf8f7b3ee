//! Batches over one epoch, built on background threads, delivered in order.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use ndarray::Array4;
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::transform::apply_lut;
use super::{mix, Augment, Dataset, Transform};

/// Domain separator of the epoch permutation seeds.
const ORDER_DOMAIN: u64 = 0x6f72_6465_7221_2121; // "order!!!"

/// How [`epoch_batches`] cuts and prepares an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Images per batch (> 0).
    pub batch_size: usize,
    /// Visit the samples in a random permutation (else in dataset order).
    pub shuffle: bool,
    /// Apply the transform's random crop / flip (else normalisation only).
    pub augment: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the permutation and of the augmentation.
    pub seed: u64,
    /// Background threads building batches (0 is taken as 1).
    pub workers: usize,
    /// Batches buffered ahead of the consumer (at least one per worker).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    /// Batch 64, shuffled, no augmentation, last batch kept, seed 0, 2 workers, 4 batches prefetched.
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            augment: false,
            drop_last: false,
            seed: 0,
            workers: 2,
            prefetch: 4,
        }
    }
}

/// One batch: normalised images `(B, C, H, W)`, their labels and their
/// indices in the dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// The images, normalised (and augmented) by the loader's
    /// [`Transform`], shape `(B, C, H, W)`.
    pub images: Array4<f32>,
    /// The label of each image, in batch order.
    pub labels: Vec<usize>,
    /// The dataset index of each image, in batch order (where it came
    /// from in the [`Dataset`], e.g. to look at misclassified images).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the batch holds no image (the loader never yields one).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The order in which epoch `epoch` visits `0..len`: the identity when
/// `!shuffle`, else a permutation that depends only on `(seed, epoch)`
/// (Fisher–Yates driven by ChaCha8 seeded from their hash).
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, ORDER_DOMAIN), epoch));
        order.shuffle(&mut rng);
    }
    order
}

/// Batches in an epoch of `len` samples cut as `cfg` says.
pub fn epoch_len(len: usize, cfg: &LoaderConfig) -> usize {
    if cfg.drop_last {
        len / cfg.batch_size
    } else {
        len.div_ceil(cfg.batch_size)
    }
}

/// One image of a batch: its index in the dataset and its augmentation.
pub type Pick = (usize, Augment);

/// The batches of one pass over a dataset (an epoch of training, or an
/// evaluation): which images each batch holds, in which order, augmented
/// how. Batch `b`'s picks depend only on the loader's seed, the epoch and
/// `b`, so every engine that builds batch `b` from them (the CPU loader's
/// threads, the GPU from the data in its memory, a data-parallel rank its
/// share) builds the same batch, and a resumed run continues exactly.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    order: Arc<[usize]>,
    transform: Arc<Transform>,
    cfg: LoaderConfig,
    epoch: u64,
    batches: usize,
}

impl BatchPlan {
    /// The plan of epoch `epoch` over a dataset of `len` images, cut and
    /// augmented as `cfg` says (augmentation draws from `transform`).
    ///
    /// Panics if `cfg.batch_size == 0`.
    pub fn new(len: usize, transform: Arc<Transform>, cfg: &LoaderConfig, epoch: u64) -> Self {
        assert!(cfg.batch_size > 0, "LoaderConfig::batch_size must be > 0");
        BatchPlan {
            order: epoch_order(len, cfg.seed, epoch, cfg.shuffle).into(),
            transform,
            cfg: cfg.clone(),
            epoch,
            batches: epoch_len(len, cfg),
        }
    }

    /// The same plan stopped after its first `batches` batches (a run's
    /// `max_steps_per_epoch`).
    pub fn truncated(mut self, batches: usize) -> Self {
        self.batches = self.batches.min(batches);
        self
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.batches
    }

    /// Whether the plan holds no batch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// What batch `b` is made of: per image, its dataset index (from the
    /// epoch's [`epoch_order`]) and its augmentation
    /// ([`Transform::sample_augment`] when the loader augments).
    ///
    /// Panics if `b >= self.len()`.
    pub fn picks(&self, b: usize) -> Vec<Pick> {
        assert!(b < self.batches, "batch {b} of a plan of {}", self.batches);
        let bs = self.cfg.batch_size;
        self.order[b * bs..((b + 1) * bs).min(self.order.len())]
            .iter()
            .map(|&i| {
                let aug = if self.cfg.augment {
                    self.transform.sample_augment(self.cfg.seed, self.epoch, i)
                } else {
                    Augment::default()
                };
                (i, aug)
            })
            .collect()
    }

    /// Builds the plan ahead on `workers` threads (0 is taken as 1) in
    /// [`EpochBatches`]: what threads build a batch changes nothing in it.
    pub fn set_workers(&mut self, workers: usize) {
        self.cfg.workers = workers.max(1);
        self.cfg.prefetch = 2 * self.cfg.workers;
    }

    /// The loader settings the plan was cut with (its `workers` and
    /// `prefetch` say how [`EpochBatches`] builds it).
    pub fn loader(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The normalisation and augmentation of its images.
    pub fn transform(&self) -> &Arc<Transform> {
        &self.transform
    }
}

/// The images `picks` names, normalised through `lut` (the transform's
/// lookup table, [`Transform::apply`]'s arithmetic) and augmented, shape
/// `(picks.len(), C, H, W)`.
pub(crate) fn build_images(ds: &Dataset, lut: &[f32], picks: &[Pick]) -> Array4<f32> {
    let shape = (ds.channels, ds.height, ds.width);
    let chw = ds.image_size();
    let mut buf = vec![0f32; picks.len() * chw];
    for (j, &(i, aug)) in picks.iter().enumerate() {
        apply_lut(
            lut,
            ds.image(i),
            shape,
            aug,
            &mut buf[j * chw..(j + 1) * chw],
        );
    }
    Array4::from_shape_vec((picks.len(), shape.0, shape.1, shape.2), buf)
        .expect("batch buffer has the batch's shape")
}

/// Iterator over the batches of a [`BatchPlan`], built ahead on background
/// threads and delivered in order (see [`epoch_batches`]). Dropping it
/// stops and joins the workers.
pub struct EpochBatches {
    receivers: Vec<Receiver<(Vec<Pick>, Batch)>>,
    handles: Vec<Option<JoinHandle<()>>>,
    /// The plan's batch the first worker starts at.
    first: usize,
    next: usize,
    end: usize,
}

/// The batches of epoch `epoch` of `ds`, in order.
///
/// Batch `b` holds the samples `epoch_order(..)[b * batch_size ..]`; each is
/// normalised by `transform` and, when `cfg.augment`, cropped / flipped as
/// [`Transform::sample_augment`]`(cfg.seed, epoch, sample index)` says. The
/// result is therefore identical whatever `cfg.workers` and thread timing.
///
/// `cfg.workers` background threads build the batches (worker `k` builds
/// batches `k, k + workers, ...`) into bounded crossbeam channels holding
/// about `cfg.prefetch` batches in all; the iterator takes them round-robin,
/// so batches come out in order. Dropping the iterator early disconnects the
/// channels: each worker stops at its next send and is joined.
///
/// Panics if `cfg.batch_size == 0` or the transform's channel count differs
/// from the dataset's. A panic in a worker is re-raised by `next`.
pub fn epoch_batches(
    ds: Arc<Dataset>,
    transform: Arc<Transform>,
    cfg: &LoaderConfig,
    epoch: u64,
) -> EpochBatches {
    let plan = BatchPlan::new(ds.len, transform, cfg, epoch);
    EpochBatches::new(ds, &plan, 0)
}

impl EpochBatches {
    /// The batches `first..` of `plan` over `ds`, built ahead by
    /// `plan.loader().workers` threads (see [`epoch_batches`]).
    ///
    /// Panics if the plan's transform has another channel count than `ds`.
    pub fn new(ds: Arc<Dataset>, plan: &BatchPlan, first: usize) -> Self {
        let transform = plan.transform();
        assert!(
            transform.mean.len() == ds.channels && transform.std.len() == ds.channels,
            "transform has {} means / {} stds but the dataset has {} channels",
            transform.mean.len(),
            transform.std.len(),
            ds.channels
        );
        let end = plan.len();
        let first = first.min(end);
        let cfg = plan.loader();
        let workers = cfg.workers.max(1).min((end - first).max(1));
        let cap = cfg.prefetch.div_ceil(workers).max(1);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        if end > first {
            for k in 0..workers {
                let (tx, rx) = bounded(cap);
                let (ds, plan) = (ds.clone(), plan.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("sparsenet-data-{k}"))
                    .spawn(move || {
                        let lut = plan.transform().lut();
                        for b in (first + k..end).step_by(workers) {
                            let picks = plan.picks(b);
                            let batch = build_batch(&ds, &lut, &picks);
                            if tx.send((picks, batch)).is_err() {
                                return; // the iterator was dropped
                            }
                        }
                    })
                    .expect("cannot spawn a data loader thread");
                receivers.push(rx);
                handles.push(Some(handle));
            }
        }
        EpochBatches {
            receivers,
            handles,
            first,
            next: first,
            end,
        }
    }

    /// The next batch with the picks it was built from.
    pub(crate) fn next_with_picks(&mut self) -> Option<(Vec<Pick>, Batch)> {
        if self.next >= self.end {
            return None;
        }
        let k = (self.next - self.first) % self.receivers.len();
        match self.receivers[k].recv() {
            Ok(item) => {
                self.next += 1;
                Some(item)
            }
            Err(_) => {
                // The worker hung up before sending all its batches: it panicked.
                if let Some(h) = self.handles[k].take() {
                    if let Err(payload) = h.join() {
                        std::panic::resume_unwind(payload);
                    }
                }
                panic!("data loader worker {k} stopped before batch {}", self.next);
            }
        }
    }
}

/// A batch of the images `picks` names, with their labels and indices.
pub(crate) fn build_batch(ds: &Dataset, lut: &[f32], picks: &[Pick]) -> Batch {
    let images = build_images(ds, lut, picks);
    let indices: Vec<usize> = picks.iter().map(|&(i, _)| i).collect();
    let labels = indices.iter().map(|&i| ds.label(i)).collect();
    Batch {
        images,
        labels,
        indices,
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.next_with_picks().map(|(_, batch)| batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for EpochBatches {}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Disconnect first so that workers blocked in `send` return, then join.
        self.receivers.clear();
        for h in self.handles.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
    }
}
