//! The official CIFAR-10 / CIFAR-100 binary versions: fixed-size records of
//! label byte(s) followed by 3072 channel-planar pixel bytes (R, G, B planes
//! of 32×32).

use std::path::{Path, PathBuf};

use super::{DataError, Dataset};

/// CIFAR-10 class names, index = label.
pub const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100 fine class names, index = fine label.
pub const CIFAR100_FINE_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// CIFAR-100 coarse class (superclass) names, index = coarse label.
pub const CIFAR100_COARSE_NAMES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Which CIFAR binary format to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// Records of 1 label byte + 3072 pixel bytes; 10 classes.
    Cifar10,
    /// Records of 2 label bytes (coarse, fine) + 3072 pixel bytes; the
    /// dataset uses the fine labels (100 classes) or the coarse ones (20).
    Cifar100 {
        /// `true`: the fine labels (100 classes, [`CIFAR100_FINE_NAMES`]);
        /// `false`: the coarse ones (20 superclasses,
        /// [`CIFAR100_COARSE_NAMES`]).
        fine: bool,
    },
}

/// How messages name the format: `CIFAR-10`, `CIFAR-100 (fine labels)`,
/// `CIFAR-100 (coarse labels)`.
impl std::fmt::Display for CifarKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CifarKind::Cifar10 => "CIFAR-10",
            CifarKind::Cifar100 { fine: true } => "CIFAR-100 (fine labels)",
            CifarKind::Cifar100 { fine: false } => "CIFAR-100 (coarse labels)",
        })
    }
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 { .. } => 2,
        }
    }
    /// Bytes per record: label byte(s) + 3072 pixels.
    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }
    /// Number of classes of the chosen labels.
    pub fn classes(self) -> usize {
        self.names().len()
    }
    /// Class names of the chosen labels.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            CifarKind::Cifar10 => &CIFAR10_NAMES,
            CifarKind::Cifar100 { fine: true } => &CIFAR100_FINE_NAMES,
            CifarKind::Cifar100 { fine: false } => &CIFAR100_COARSE_NAMES,
        }
    }
}

const PIXELS: usize = 3 * 32 * 32;

/// Appends the records of one file's bytes; `location` names the file in errors.
pub(crate) fn parse_records(
    bytes: &[u8],
    location: &str,
    kind: CifarKind,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<(), DataError> {
    let rec = kind.record_len();
    if bytes.is_empty() {
        return Err(DataError::format(location, "file is empty"));
    }
    let whole = bytes.len() / rec * rec;
    if whole != bytes.len() {
        return Err(DataError::format(
            location,
            format!(
                "length {} is not a multiple of the {rec}-byte {kind} record: incomplete record {} at byte offset {} ({} bytes)",
                bytes.len(),
                bytes.len() / rec,
                bytes.len() / rec * rec,
                bytes.len() % rec
            ),
        ));
    }
    let label_at = match kind {
        CifarKind::Cifar10 | CifarKind::Cifar100 { fine: false } => 0,
        CifarKind::Cifar100 { fine: true } => 1,
    };
    let classes = kind.classes();
    pixels.reserve(bytes.len() / rec * PIXELS);
    labels.reserve(bytes.len() / rec);
    for (r, record) in bytes.chunks_exact(rec).enumerate() {
        let label = record[label_at] as usize;
        if label >= classes {
            return Err(DataError::LabelOutOfRange {
                location: format!("{location} (byte offset {})", r * rec + label_at),
                record: r,
                label: label as u32,
                classes,
            });
        }
        labels.push(label as u16);
        pixels.extend_from_slice(&record[kind.label_bytes()..]);
    }
    Ok(())
}

pub(crate) fn dataset_from_records(
    pixels: Vec<u8>,
    labels: Vec<u16>,
    kind: CifarKind,
    source: PathBuf,
) -> Dataset {
    Dataset {
        len: labels.len(),
        pixels,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        classes: kind.classes(),
        class_names: kind.names().iter().map(|s| s.to_string()).collect(),
        source,
    }
}

/// Reads official CIFAR binary batch files, concatenated in the given order.
///
/// A file whose length is not a whole number of records is an error naming
/// the file and the offset of the incomplete record; a label out of range
/// (>= 10, 20 or 100) is an error naming the file and the record index.
/// The dataset's `source` is the first file.
pub fn read_cifar_bin(files: &[PathBuf], kind: CifarKind) -> Result<Dataset, DataError> {
    let Some(first) = files.first() else {
        return Err(DataError::format(
            "(CIFAR file list)",
            "no CIFAR batch files given",
        ));
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        parse_records(
            &bytes,
            &f.display().to_string(),
            kind,
            &mut pixels,
            &mut labels,
        )?;
    }
    Ok(dataset_from_records(pixels, labels, kind, first.clone()))
}

/// `true` if `dir` holds a file called `name`.
pub(crate) fn has_file(dir: &Path, name: &str) -> bool {
    dir.join(name).is_file()
}
