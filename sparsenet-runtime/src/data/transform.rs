//! Per-channel normalisation and augmentation (random crop with zero padding,
//! horizontal flip), deterministic per (seed, epoch, sample index).

use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{mix, Dataset};

/// Domain separator of the augmentation seeds (vs the epoch permutation).
const AUG_DOMAIN: u64 = 0x6175_676d_656e_7421; // "augment!"

/// Per-channel normalisation and augmentation.
///
/// A pixel `v` of channel `c` becomes `(v / 255 - mean[c]) / std[c]`.
/// With augmentation on (see [`super::LoaderConfig::augment`]), each sample is
/// first shifted by a random crop of the image padded with `pad_crop` zero
/// pixels on each side (as torchvision's `RandomCrop(size, padding)`: the
/// padding is raw pixel 0, so it normalises to `-mean/std`), then mirrored
/// left-right with probability 1/2 when `hflip`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Per-channel mean of pixel/255.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of pixel/255.
    pub std: Vec<f32>,
    /// Random crop with zero padding of this many pixels; 0 = off.
    pub pad_crop: usize,
    /// Random horizontal flip.
    pub hflip: bool,
}

/// One sample's augmentation: output pixel `(y, x)` is source pixel
/// `(y + dy, x' + dx)` with `x' = W-1-x` when `flip`, else `x`; pixels from
/// outside the image are zero (padding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Vertical shift in pixels, in `-pad_crop..=pad_crop`: output row `y`
    /// reads source row `y + dy`.
    pub dy: isize,
    /// Horizontal shift in pixels, in `-pad_crop..=pad_crop`: output column
    /// `x` reads source column `x' + dx`, `x'` being `W-1-x` when `flip`,
    /// else `x`.
    pub dx: isize,
    /// Mirror the image left-right.
    pub flip: bool,
}

impl Transform {
    /// Normalisation only, with one mean and one standard deviation per
    /// channel (of pixel/255).
    ///
    /// Panics if `mean` and `std` differ in length.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        assert_eq!(
            mean.len(),
            std.len(),
            "Transform: mean and std need one value per channel"
        );
        Transform {
            mean,
            std,
            pad_crop: 0,
            hflip: false,
        }
    }

    /// Pixels scaled to [0, 1], nothing else.
    pub fn identity(channels: usize) -> Self {
        Transform::new(vec![0.0; channels], vec![1.0; channels])
    }

    /// Mean and (population) standard deviation of each channel of pixel/255
    /// over the whole dataset, no augmentation. A constant channel (std 0)
    /// gets std 1 so that normalisation stays finite.
    pub fn from_dataset_stats(ds: &Dataset) -> Self {
        let c = ds.channels;
        let hw = ds.height * ds.width;
        let sums = ds
            .pixels
            .par_chunks(c * hw.max(1))
            .fold(
                || vec![(0u64, 0u64); c],
                |mut acc, img| {
                    for (ch, a) in acc.iter_mut().enumerate() {
                        let (mut s, mut q) = (0u64, 0u64);
                        for &v in &img[ch * hw..(ch + 1) * hw] {
                            s += v as u64;
                            q += (v as u64) * (v as u64);
                        }
                        a.0 += s;
                        a.1 += q;
                    }
                    acc
                },
            )
            .reduce(
                || vec![(0u64, 0u64); c],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        x.0 += y.0;
                        x.1 += y.1;
                    }
                    a
                },
            );
        let n = (ds.len * hw).max(1) as f64;
        let mut mean = Vec::with_capacity(c);
        let mut std = Vec::with_capacity(c);
        for (s, q) in sums {
            let m = s as f64 / n / 255.0;
            let var = (q as f64 / n / (255.0 * 255.0) - m * m).max(0.0);
            let sd = var.sqrt();
            mean.push(m as f32);
            std.push(if sd < 1e-6 { 1.0 } else { sd as f32 });
        }
        Transform::new(mean, std)
    }

    /// The same normalisation with the given augmentation.
    pub fn with_augmentation(mut self, pad_crop: usize, hflip: bool) -> Self {
        self.pad_crop = pad_crop;
        self.hflip = hflip;
        self
    }

    /// Whether any augmentation is configured.
    pub fn augments(&self) -> bool {
        self.pad_crop > 0 || self.hflip
    }

    /// The augmentation of sample `index` in epoch `epoch`: a function of
    /// `(seed, epoch, index)` only (ChaCha8 seeded from their hash).
    pub fn sample_augment(&self, seed: u64, epoch: u64, index: usize) -> Augment {
        if !self.augments() {
            return Augment::default();
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix(mix(mix(seed, AUG_DOMAIN), epoch), index as u64));
        let p = self.pad_crop as isize;
        let (dy, dx) = if p > 0 {
            (rng.gen_range(-p..=p), rng.gen_range(-p..=p))
        } else {
            (0, 0)
        };
        let flip = self.hflip && rng.gen_bool(0.5);
        Augment { dy, dx, flip }
    }

    /// Lookup table `lut[c * 256 + v]` = normalised value of pixel `v` in channel `c`.
    pub(crate) fn lut(&self) -> Vec<f32> {
        let mut lut = Vec::with_capacity(self.mean.len() * 256);
        for (&m, &s) in self.mean.iter().zip(&self.std) {
            lut.extend((0..256).map(|v| (v as f32 / 255.0 - m) / s));
        }
        lut
    }

    /// Normalises (and augments with `aug`) one channel-planar image of shape
    /// `(c, h, w)` into `out` (`c * h * w` values).
    ///
    /// Panics if the transform does not have `c` channels or a slice length
    /// is wrong.
    ///
    /// ```
    /// use sparsenet_runtime::data::{Augment, Transform};
    ///
    /// // One channel, mean 0.5, std 0.25: pixel v becomes (v / 255 - 0.5) / 0.25.
    /// let t = Transform::new(vec![0.5], vec![0.25]);
    /// let image = [0u8, 255, 51, 204]; // 1 channel of 2x2: rows [0, 255], [51, 204]
    /// let mut out = [0.0f32; 4];
    /// let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    ///
    /// t.apply(&image, (1, 2, 2), Augment::default(), &mut out);
    /// assert!(close(&out, &[-2.0, 2.0, -1.2, 1.2]), "{out:?}");
    ///
    /// // Mirrored left-right.
    /// t.apply(&image, (1, 2, 2), Augment { dy: 0, dx: 0, flip: true }, &mut out);
    /// assert!(close(&out, &[2.0, -2.0, 1.2, -1.2]), "{out:?}");
    ///
    /// // Shifted up one row: the last row is padding, raw pixel 0.
    /// t.apply(&image, (1, 2, 2), Augment { dy: 1, dx: 0, flip: false }, &mut out);
    /// assert!(close(&out, &[-1.2, 1.2, -2.0, -2.0]), "{out:?}");
    /// ```
    pub fn apply(&self, image: &[u8], shape: (usize, usize, usize), aug: Augment, out: &mut [f32]) {
        apply_lut(&self.lut(), image, shape, aug, out)
    }
}

/// [`Transform::apply`] with a precomputed lookup table.
pub(crate) fn apply_lut(
    lut: &[f32],
    image: &[u8],
    (c, h, w): (usize, usize, usize),
    aug: Augment,
    out: &mut [f32],
) {
    let hw = h * w;
    assert_eq!(
        lut.len(),
        c * 256,
        "transform has {} channels but the image has {c}",
        lut.len() / 256
    );
    assert_eq!(
        image.len(),
        c * hw,
        "image has {} bytes, expected {c}x{h}x{w}",
        image.len()
    );
    assert_eq!(
        out.len(),
        c * hw,
        "output has {} values, expected {c}x{h}x{w}",
        out.len()
    );
    let identity = aug == Augment::default();
    for ch in 0..c {
        let lut: &[f32; 256] = lut[ch * 256..(ch + 1) * 256]
            .try_into()
            .expect("256 entries");
        let src = &image[ch * hw..(ch + 1) * hw];
        let dst = &mut out[ch * hw..(ch + 1) * hw];
        if identity {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = lut[s as usize];
            }
            continue;
        }
        let pad = lut[0];
        // Output columns x0..x1 read the source row; the others are padding.
        // Without flip, x reads column x + dx; with flip, column w-1-x + dx.
        let (wi, dx) = (w as isize, aug.dx);
        let (x0, x1) = if aug.flip {
            (dx.max(0), (wi + dx).min(wi))
        } else {
            ((-dx).max(0), (wi - dx).min(wi))
        };
        let (x0, x1) = if x0 < x1 {
            (x0 as usize, x1 as usize)
        } else {
            (0, 0)
        };
        for y in 0..h {
            let row = &mut dst[y * w..(y + 1) * w];
            let sy = y as isize + aug.dy;
            if sy < 0 || sy >= h as isize {
                row.fill(pad);
                continue;
            }
            let srow = &src[sy as usize * w..(sy as usize + 1) * w];
            row[..x0].fill(pad);
            row[x1..].fill(pad);
            let out = &mut row[x0..x1];
            if out.is_empty() {
                continue;
            }
            if aug.flip {
                let s = &srow[(wi - x1 as isize + dx) as usize..(wi - x0 as isize + dx) as usize];
                for (d, &v) in out.iter_mut().zip(s.iter().rev()) {
                    *d = lut[v as usize];
                }
            } else {
                let s = &srow[(x0 as isize + dx) as usize..(x1 as isize + dx) as usize];
                for (d, &v) in out.iter_mut().zip(s) {
                    *d = lut[v as usize];
                }
            }
        }
    }
}
