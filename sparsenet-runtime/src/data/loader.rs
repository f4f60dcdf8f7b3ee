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

/// What batch `b` of an epoch is made of: per image, its dataset index
/// (from `order`, the epoch's [`epoch_order`]) and its augmentation
/// ([`Transform::sample_augment`] when `cfg.augment`). [`epoch_batches`]
/// builds its batches from these; an engine that keeps the data itself
/// (the GPU's, a data-parallel rank) is handed them instead.
pub fn batch_picks(
    order: &[usize],
    b: usize,
    transform: &Transform,
    cfg: &LoaderConfig,
    epoch: u64,
) -> Vec<(usize, Augment)> {
    let bs = cfg.batch_size;
    order[b * bs..((b + 1) * bs).min(order.len())]
        .iter()
        .map(|&i| {
            let aug = if cfg.augment {
                transform.sample_augment(cfg.seed, epoch, i)
            } else {
                Augment::default()
            };
            (i, aug)
        })
        .collect()
}

/// The images `picks` names, normalised through `lut` (the transform's
/// lookup table, [`Transform::apply`]'s arithmetic) and augmented, shape
/// `(picks.len(), C, H, W)`.
pub(crate) fn build_images(ds: &Dataset, lut: &[f32], picks: &[(usize, Augment)]) -> Array4<f32> {
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

/// Iterator over the batches of one epoch, see [`epoch_batches`].
/// Dropping it stops and joins the workers.
pub struct EpochBatches {
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<Option<JoinHandle<()>>>,
    next: usize,
    total: usize,
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
    assert!(cfg.batch_size > 0, "LoaderConfig::batch_size must be > 0");
    assert!(
        transform.mean.len() == ds.channels && transform.std.len() == ds.channels,
        "transform has {} means / {} stds but the dataset has {} channels",
        transform.mean.len(),
        transform.std.len(),
        ds.channels
    );
    let total = epoch_len(ds.len, cfg);
    let workers = cfg.workers.max(1).min(total.max(1));
    let cap = cfg.prefetch.div_ceil(workers).max(1);
    let order = Arc::new(epoch_order(ds.len, cfg.seed, epoch, cfg.shuffle));
    let mut receivers = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    if total > 0 {
        for k in 0..workers {
            let (tx, rx) = bounded::<Batch>(cap);
            let (ds, transform, order) = (ds.clone(), transform.clone(), order.clone());
            let cfg = cfg.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sparsenet-data-{k}"))
                .spawn(move || {
                    let lut = transform.lut();
                    for b in (k..total).step_by(workers) {
                        let picks = batch_picks(&order, b, &transform, &cfg, epoch);
                        let images = build_images(&ds, &lut, &picks);
                        let indices: Vec<usize> = picks.iter().map(|&(i, _)| i).collect();
                        let labels = indices.iter().map(|&i| ds.labels[i] as usize).collect();
                        if tx
                            .send(Batch {
                                images,
                                labels,
                                indices,
                            })
                            .is_err()
                        {
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
        next: 0,
        total,
    }
}

impl Iterator for EpochBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let k = self.next % self.receivers.len();
        match self.receivers[k].recv() {
            Ok(batch) => {
                self.next += 1;
                Some(batch)
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

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.total - self.next;
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
