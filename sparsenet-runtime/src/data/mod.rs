//! Data loading: in-memory image classification datasets, readers for the
//! common on-disk formats, normalisation / augmentation, and a deterministic
//! multi-threaded batch loader.
//!
//! # Readers
//! * [`read_idx`]: MNIST / Fashion-MNIST IDX files (gzip or plain).
//! * [`read_cifar_bin`]: the official CIFAR-10 / CIFAR-100 binary batches.
//! * [`read_image_folder`]: `root/<class>/*.{jpg,jpeg,png}` on disk.
//! * [`read_image_folder_tar_gz`]: the same layout read straight from a `.tar.gz`.
//! * [`load_fashion_mnist`], [`load_cifar10`], [`load_cifar100`],
//!   [`load_image_folders`]: resolve a user path for a named dataset into
//!   `(train, test)`, checking that both splits have the same classes.
//!
//! Every dataset is held as `u8` pixels, channel-planar `(N, C, H, W)`.
//! Conversion to normalised `f32` happens per batch in [`epoch_batches`].
//!
//! # Image conventions
//! Grayscale images (with or without alpha) become 1 channel; every other
//! colour type becomes 3-channel RGB. **Alpha is dropped** (not an error);
//! 16-bit images are reduced to 8 bits.
//!
//! # Determinism
//! The epoch permutation depends only on `(seed, epoch)` and each sample's
//! crop offsets / flip only on `(seed, epoch, sample index)`, so batches are
//! bit-identical whatever the number of worker threads.
//!
//! # Example
//!
//! A dataset built in memory, normalised with its own statistics and cut
//! into shuffled batches (the readers above return the same [`Dataset`]):
//!
//! ```
//! use sparsenet_runtime::data::{epoch_batches, Dataset, LoaderConfig, Transform};
//! use std::sync::Arc;
//!
//! // Eight grayscale 2x2 images: image i is filled with 30 * i, label i % 2.
//! let ds = Dataset {
//!     pixels: (0..8u8).flat_map(|i| [30 * i; 4]).collect(),
//!     labels: (0..8).map(|i| i % 2).collect(),
//!     len: 8,
//!     channels: 1,
//!     height: 2,
//!     width: 2,
//!     classes: 2,
//!     class_names: vec!["even".into(), "odd".into()],
//!     source: "<memory>".into(),
//! };
//! assert_eq!(ds.image(3), &[90, 90, 90, 90]);
//! assert_eq!(ds.class_counts(), [4, 4]);
//!
//! let transform = Arc::new(Transform::from_dataset_stats(&ds));
//! let ds = Arc::new(ds);
//! let cfg = LoaderConfig { batch_size: 3, seed: 7, ..LoaderConfig::default() };
//! let batches: Vec<_> = epoch_batches(ds.clone(), transform.clone(), &cfg, 0).collect();
//!
//! // 3 + 3 + 2 images, as (batch, channels, height, width) f32 arrays.
//! assert_eq!(batches.len(), 3);
//! assert_eq!(batches[0].images.dim(), (3, 1, 2, 2));
//! assert_eq!(batches[2].len(), 2);
//! // Shuffled, each image once, each with its label.
//! let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
//! seen.sort();
//! assert_eq!(seen, (0..8).collect::<Vec<_>>());
//! for b in &batches {
//!     for (&i, &label) in b.indices.iter().zip(&b.labels) {
//!         assert_eq!(label, i % 2);
//!     }
//! }
//! // The same seed and epoch give the same batches, whatever the workers.
//! let one_worker = LoaderConfig { workers: 1, ..cfg.clone() };
//! let again: Vec<_> = epoch_batches(ds, transform, &one_worker, 0).collect();
//! assert_eq!(again, batches);
//! ```

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

mod cifar;
mod folder;
mod idx;
mod loader;
mod named;
mod transform;

#[cfg(test)]
mod tests;

pub use cifar::{
    read_cifar_bin, CifarKind, CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES, CIFAR10_NAMES,
};
pub use folder::{read_image, read_image_folder, read_image_folder_tar_gz, Image};
pub use idx::read_idx;
pub(crate) use loader::{build_batch, build_images};
pub use loader::{
    epoch_batches, epoch_len, epoch_order, Batch, BatchPlan, EpochBatches, LoaderConfig, Pick,
};
pub use named::{
    load_cifar10, load_cifar100, load_fashion_mnist, load_image_folders, FASHION_MNIST_NAMES,
};
pub use transform::{Augment, Transform};

/// An in-memory image classification dataset: u8 pixels, channel-planar (N, C, H, W).
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    /// `len * channels * height * width` bytes, image after image, each
    /// image channel-planar (all of channel 0, then channel 1, ...).
    pub pixels: Vec<u8>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u16>,
    /// Number of images.
    pub len: usize,
    /// Channels per image: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Image height in pixels (every image has the same size).
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Number of classes (labels are `0..classes`).
    pub classes: usize,
    /// `classes` names, index = label.
    pub class_names: Vec<String>,
    /// Where the data came from (file, directory or archive).
    pub source: PathBuf,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len)
            .field("channels", &self.channels)
            .field("height", &self.height)
            .field("width", &self.width)
            .field("classes", &self.classes)
            .field("class_names", &self.class_names)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// A dataset from images in memory, `(N, C, H, W)` bytes (any layout),
    /// and one label per image, each below `classes`; the classes are named
    /// `"0"`, `"1"`, ... (set [`Dataset::class_names`] to name them).
    ///
    /// ```
    /// use sparsenet_runtime::data::Dataset;
    /// use sparsenet_runtime::ndarray::Array4;
    ///
    /// let images = Array4::<u8>::from_shape_fn((6, 3, 8, 8), |(i, c, y, x)| (i * 40 + c + y + x) as u8);
    /// let ds = Dataset::from_images(images.view(), &[0, 1, 2, 0, 1, 2], 3)?;
    /// assert_eq!((ds.len, ds.channels, ds.height, ds.width), (6, 3, 8, 8));
    /// assert_eq!(ds.class_counts(), [2, 2, 2]);
    ///
    /// // A label out of range is an error that names it.
    /// let err = Dataset::from_images(images.view(), &[0, 1, 2, 0, 1, 3], 3).unwrap_err();
    /// assert!(err.to_string().contains("label 3"), "{err}");
    /// # Ok::<(), sparsenet_runtime::data::DataError>(())
    /// ```
    pub fn from_images(
        images: ndarray::ArrayView4<'_, u8>,
        labels: &[usize],
        classes: usize,
    ) -> Result<Dataset, DataError> {
        let (n, channels, height, width) = images.dim();
        let location = || "<memory>".to_string();
        let problem = |problem: String| DataError::Format {
            location: location(),
            problem,
        };
        if labels.len() != n {
            return Err(problem(format!(
                "{n} images but {} labels (one label per image)",
                labels.len()
            )));
        }
        if !(1..=u16::MAX as usize + 1).contains(&classes) {
            return Err(problem(format!(
                "{classes} classes (at least 1, at most {})",
                u16::MAX as usize + 1
            )));
        }
        if channels == 0 || height == 0 || width == 0 {
            return Err(problem(format!(
                "images of {channels}x{height}x{width} (channels x height x width, none may be 0)"
            )));
        }
        if let Some((record, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
            return Err(DataError::LabelOutOfRange {
                location: location(),
                record,
                label: u32::try_from(label).unwrap_or(u32::MAX),
                classes,
            });
        }
        Ok(Dataset {
            pixels: images.as_standard_layout().iter().copied().collect(),
            labels: labels.iter().map(|&l| l as u16).collect(),
            len: n,
            channels,
            height,
            width,
            classes,
            class_names: (0..classes).map(|c| c.to_string()).collect(),
            source: PathBuf::from("<memory>"),
        })
    }

    /// Bytes per image: `channels * height * width`.
    pub fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i`, channel-planar `(C, H, W)`.
    ///
    /// Panics if `i >= len`.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(
            i < self.len,
            "image index {i} out of range (dataset has {} images)",
            self.len
        );
        let n = self.image_size();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Label of image `i` as a `usize`.
    pub fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }

    /// Number of images of each class (index = label).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new dataset holding the given images, in the given order
    /// (repetitions allowed). Classes, names and source are kept.
    ///
    /// Panics if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.image_size();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            pixels,
            labels,
            len: indices.len(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
            class_names: self.class_names.clone(),
            source: self.source.clone(),
        }
    }

    /// A class-balanced subset of (at most) `n` images in total, for quick
    /// experiments: classes take turns giving their earliest unused image,
    /// so each class gets `n / classes` images (±1) while it has enough.
    /// The result keeps the dataset's order. `n >= len` returns a copy.
    pub fn take(&self, n: usize) -> Dataset {
        if n >= self.len {
            return self.clone();
        }
        let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); self.classes];
        for (i, &l) in self.labels.iter().enumerate() {
            per_class[l as usize].push(i);
        }
        let mut chosen = Vec::with_capacity(n);
        let mut round = 0;
        while chosen.len() < n {
            for list in &per_class {
                if chosen.len() == n {
                    break;
                }
                if let Some(&i) = list.get(round) {
                    chosen.push(i);
                }
            }
            round += 1;
        }
        chosen.sort_unstable();
        self.subset(&chosen)
    }

    /// The first `n` images of each class (all of a class that has fewer),
    /// in the dataset's order.
    pub fn take_per_class(&self, n: usize) -> Dataset {
        let mut seen = vec![0usize; self.classes];
        let chosen: Vec<usize> = (0..self.len)
            .filter(|&i| {
                let c = &mut seen[self.labels[i] as usize];
                *c += 1;
                *c <= n
            })
            .collect();
        self.subset(&chosen)
    }
}

/// Errors of the data module. Every message names the file (and the archive
/// entry, record or byte offset where relevant) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An I/O error (including a corrupt gzip stream) while reading a file.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file (or archive) being read.
        path: PathBuf,
        /// What the operating system (or the gzip decoder, whose messages
        /// start with `gzip:`) reported.
        #[source]
        source: io::Error,
    },
    /// A dataset path or file that does not exist; `hint` says what to do.
    #[error("cannot find {what} {}: {hint}", path.display())]
    NotFound {
        /// What was looked for, e.g. `CIFAR-10 data`, `image folder`,
        /// `archive`.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What was expected there, or how to get the data.
        hint: String,
    },
    /// A file that does not start with the expected magic number.
    #[error("bad magic number 0x{found:08x} in {} (expected 0x{expected:08x}: {what})", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number of the expected format (for IDX, `0x00000803`
        /// for images, `0x00000801` for labels).
        expected: u32,
        /// The file's first 4 bytes, read big-endian.
        found: u32,
        /// What the file should hold, e.g. `images (N x H x W ubyte)`.
        what: &'static str,
    },
    /// A file that ends before the data its header announces.
    #[error("truncated file {} at byte offset {offset}{}: {problem}", path.display(), if *.decompressed { " (of the decompressed data)" } else { "" })]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the data end: the length in bytes of the file (of its
        /// decompressed data when `decompressed`).
        offset: u64,
        /// Whether the file was gzip-compressed, so that `offset` counts
        /// bytes of the decompressed data rather than of the file.
        decompressed: bool,
        /// What was missing (header or payload, and how many bytes).
        problem: String,
    },
    /// Any other malformed file (bad dimensions, trailing data, a length that
    /// is not a whole number of records...). `location` is the file, or
    /// `archive (entry NAME)`.
    #[error("invalid file {location}: {problem}")]
    Format {
        /// The file, or `archive (entry NAME)`.
        location: String,
        /// What is wrong, with the offsets or sizes involved.
        problem: String,
    },
    /// A label outside `0..classes`; `record` is the 0-based image index in
    /// that file.
    #[error("label {label} out of range in {location}, record {record} (expected < {classes})")]
    LabelOutOfRange {
        /// The file (for CIFAR, with the byte offset of the label).
        location: String,
        /// 0-based index of the image in that file.
        record: usize,
        /// The label found.
        label: u32,
        /// Number of classes of the format (labels must be below it).
        classes: usize,
    },
    /// Image and label files that disagree on the number of samples.
    #[error("count mismatch: {} has {images} images but {} has {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// The label file.
        labels_path: PathBuf,
        /// Number of images the image file announces.
        images: usize,
        /// Number of labels the label file announces.
        labels: usize,
    },
    /// An image that cannot be decoded, is not an image, or whose size or
    /// channel count differs from the dataset's first image.
    #[error("bad image {location}: {problem}")]
    Image {
        /// The image file, or `archive (entry NAME)`.
        location: String,
        /// Why it cannot be used.
        problem: String,
    },
    /// A directory / archive that does not have the expected layout (empty,
    /// no class folders, a single class, an empty class...).
    #[error("bad dataset layout in {}: {problem}", path.display())]
    Layout {
        /// The directory or archive.
        path: PathBuf,
        /// What is wrong with its layout.
        problem: String,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn layout(path: &Path, problem: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
    pub(crate) fn format(location: impl Into<String>, problem: impl Into<String>) -> Self {
        DataError::Format {
            location: location.into(),
            problem: problem.into(),
        }
    }
}

/// The most bytes deflate (gzip's compression) can produce per compressed
/// byte: a 258-byte match costs at least 2 bits, so about 1032:1. A gzip
/// file of `n` bytes cannot legitimately hold more than `n * 1032` bytes,
/// whatever it claims inside.
pub(crate) const DEFLATE_MAX_RATIO: u64 = 1032;

/// Opens a file for streaming, gunzipping it when it starts with the gzip
/// magic bytes `1f 8b`. Returns the reader, whether it decompresses, and the
/// most bytes it can legitimately yield (the file's length, times
/// [`DEFLATE_MAX_RATIO`] when gzipped). Read to its end, the reader checks
/// each gzip member's CRC-32 and length; [`gzip_error`] turns its errors
/// into messages naming the file.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, bool, u64), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut buf = BufReader::with_capacity(1 << 20, file);
    let head = buf.fill_buf().map_err(|e| DataError::io(path, e))?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        let reader = flate2::bufread::MultiGzDecoder::new(buf);
        Ok((
            Box::new(reader),
            true,
            len.saturating_mul(DEFLATE_MAX_RATIO),
        ))
    } else {
        Ok((Box::new(buf), false, len))
    }
}

/// An error of a reader from [`open_maybe_gz`], naming the file (and, when
/// it decompresses, saying so: a CRC or length mismatch, a corrupt stream).
pub(crate) fn gzip_error(path: &Path, gz: bool, e: io::Error) -> DataError {
    if gz {
        DataError::io(path, io::Error::new(e.kind(), format!("gzip: {e}")))
    } else {
        DataError::io(path, e)
    }
}

/// `archive (entry NAME)`: how errors name a member of an archive.
pub(crate) fn entry_location(archive: &Path, entry: &str) -> String {
    format!("{} (entry {entry})", archive.display())
}

/// splitmix64 finaliser: a fast, well-mixed 64-bit hash step.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes two words into one seed (order-sensitive).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    splitmix64(a ^ splitmix64(b).rotate_left(23))
}
