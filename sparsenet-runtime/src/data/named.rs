//! Named datasets: resolve a user path into (train, test).

use std::path::{Path, PathBuf};

use super::cifar::{dataset_from_records, has_file, parse_records};
use super::folder::{dataset_from_scan, image_entry_limit, scan_tar, split_rel, EntryLimit};
use super::{
    entry_location, read_cifar_bin, read_idx, read_image_folder, CifarKind, DataError, Dataset,
};

/// Fashion-MNIST class names, index = label.
pub const FASHION_MNIST_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const FASHION_HINT: &str =
    "install it with `apt-get install dataset-fashion-mnist`, or give the folder that holds its files";

const CIFAR10_HINT: &str = "give a .tar.gz of image folders (train/<class>/*.jpg, test/<class>/*.jpg), \
     a directory holding train/ and test/ image folders, or the directory of the official binary version \
     (data_batch_1..5.bin, test_batch.bin)";

const CIFAR100_HINT: &str = "give the directory of the official CIFAR-100 binary version \
     (train.bin, test.bin, possibly inside cifar-100-binary/) or cifar-100-binary.tar.gz";

/// Checks every label is `< classes`, naming the first bad record.
fn check_labels(ds: &Dataset, classes: usize, location: &Path) -> Result<(), DataError> {
    if let Some(r) = ds.labels.iter().position(|&l| l as usize >= classes) {
        return Err(DataError::LabelOutOfRange {
            location: location.display().to_string(),
            record: r,
            label: ds.labels[r] as u32,
            classes,
        });
    }
    Ok(())
}

/// Train and test must agree on the image shape and the classes: a label
/// is a class's position, so a test split with a class missing, added or
/// renamed would have every later label mean another class than in training.
fn check_pair(what: &str, train: &Dataset, test: &Dataset) -> Result<(), DataError> {
    let shape = |d: &Dataset| format!("{}x{}x{}", d.channels, d.height, d.width);
    if shape(train) != shape(test) {
        return Err(DataError::layout(
            &test.source,
            format!(
                "{what}: test images are {} (channels x height x width) but train images in {} are {}",
                shape(test),
                train.source.display(),
                shape(train)
            ),
        ));
    }
    if train.class_names != test.class_names {
        return Err(DataError::layout(
            &test.source,
            format!(
                "{what}: the test classes differ from the training classes of {}: {}; the \
                 labels are the classes' positions, so both splits need the same classes",
                train.source.display(),
                class_difference(&train.class_names, &test.class_names)
            ),
        ));
    }
    Ok(())
}

/// How the test split's class names differ from the training split's: the
/// classes missing from test, those only in test, or (same classes) the
/// first position where the order differs.
fn class_difference(train: &[String], test: &[String]) -> String {
    let list = |names: Vec<&String>| {
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<&String> = train.iter().filter(|n| !test.contains(n)).collect();
    let extra: Vec<&String> = test.iter().filter(|n| !train.contains(n)).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing from test: {}", list(missing)));
    }
    if !extra.is_empty() {
        parts.push(format!("not in training: {}", list(extra)));
    }
    if parts.is_empty() {
        // Same names, another order or a repeated name.
        let i = train
            .iter()
            .zip(test)
            .position(|(a, b)| a != b)
            .unwrap_or(train.len().min(test.len()));
        let at = |v: &[String]| v.get(i).map_or("(none)".to_string(), |n| format!("'{n}'"));
        parts.push(format!(
            "class {i} is {} in training but {} in test",
            at(train),
            at(test)
        ));
    }
    parts.join("; ")
}

fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    // Standard names, gzipped or not, and the variant with a dot before "idx".
    let dotted = stem.replacen("-idx", ".idx", 1);
    [
        format!("{stem}.gz"),
        stem.to_string(),
        format!("{dotted}.gz"),
        dotted,
    ]
    .into_iter()
    .map(|n| dir.join(n))
    .find(|p| p.is_file())
}

/// Loads Fashion-MNIST (train 60,000, test 10,000, 28×28 grayscale, 10
/// classes) from a directory holding the four standard IDX files
/// (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-...`), each
/// `.gz` or plain, e.g. `/usr/share/datasets/fashion-mnist` (or a directory
/// holding a `fashion-mnist/` sub-folder with them). A missing directory or
/// file gives an error saying: install with `apt-get install
/// dataset-fashion-mnist` or pass --data DIR.
pub fn load_fashion_mnist(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotFound {
            what: "Fashion-MNIST directory",
            path: dir.to_path_buf(),
            hint: FASHION_HINT.into(),
        });
    }
    let stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let sub = dir.join("fashion-mnist");
    let base = if find_idx(dir, stems[0]).is_none() && find_idx(&sub, stems[0]).is_some() {
        sub
    } else {
        dir.to_path_buf()
    };
    let mut paths = Vec::new();
    for stem in stems {
        let p = find_idx(&base, stem).ok_or_else(|| DataError::NotFound {
            what: "Fashion-MNIST file",
            path: base.join(format!("{stem}.gz")),
            hint: format!(
                "expected {stem}.gz or {stem} in {}; {FASHION_HINT}",
                base.display()
            ),
        })?;
        paths.push(p);
    }
    let mut train = read_idx(&paths[0], &paths[1])?;
    let mut test = read_idx(&paths[2], &paths[3])?;
    for (ds, labels) in [(&mut train, &paths[1]), (&mut test, &paths[3])] {
        check_labels(ds, 10, labels)?;
        ds.classes = 10;
        ds.class_names = FASHION_MNIST_NAMES.iter().map(|s| s.to_string()).collect();
    }
    check_pair("Fashion-MNIST", &train, &test)?;
    Ok((train, test))
}

fn is_cifar10_batch(name: &str) -> bool {
    name == "test_batch.bin"
        || name
            .strip_prefix("data_batch_")
            .and_then(|r| r.strip_suffix(".bin"))
            .is_some_and(|n| matches!(n, "1" | "2" | "3" | "4" | "5"))
}

/// The limit of a CIFAR binary batch inside an archive: the largest
/// official file, CIFAR-100's `train.bin` (50,000 records of 2 + 3072
/// bytes); every other official batch holds 10,000 records.
fn cifar_batch_limit() -> EntryLimit {
    EntryLimit {
        bytes: 50_000 * CifarKind::Cifar100 { fine: true }.record_len() as u64,
        why: "the largest official CIFAR batch, 50,000 records",
    }
}

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// Parses named binary batches found in an archive scan.
fn records_from_scan(
    archive: &Path,
    files: &[(Vec<String>, Vec<u8>)],
    names: &[&str],
    kind: CifarKind,
) -> Result<Dataset, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for name in names {
        let (comps, bytes) = files
            .iter()
            .find(|(c, _)| c.last().map(String::as_str) == Some(*name))
            .ok_or_else(|| {
                DataError::layout(
                    archive,
                    format!("the archive has CIFAR binary batches but no {name}"),
                )
            })?;
        parse_records(
            bytes,
            &entry_location(archive, &comps.join("/")),
            kind,
            &mut pixels,
            &mut labels,
        )?;
    }
    Ok(dataset_from_records(
        pixels,
        labels,
        kind,
        archive.to_path_buf(),
    ))
}

/// Loads CIFAR-10 as (train, test) from any of:
/// * a `.tar.gz` (or `.tar`) of image folders `train/<class>/*.jpg`,
///   `test/<class>/*.jpg` (optionally under `./` or one top folder), read
///   without extracting, e.g. `shared/data/cifar10-jpeg.tar.gz`;
/// * the official `cifar-10-binary.tar.gz` (binary batches inside);
/// * a directory holding `train/` and `test/` image folders;
/// * the official binary version: a directory with `data_batch_1..5.bin` and
///   `test_batch.bin`, possibly inside `cifar-10-batches-bin/`.
pub fn load_cifar10(path: &Path) -> Result<(Dataset, Dataset), DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            what: "CIFAR-10 data",
            path: path.to_path_buf(),
            hint: CIFAR10_HINT.into(),
        });
    }
    let (train, test) = if path.is_file() {
        let mut scan = scan_tar(path, &|c| {
            if c.last().is_some_and(|n| is_cifar10_batch(n)) {
                Some(cifar_batch_limit())
            } else if split_rel(c, "train").is_some() || split_rel(c, "test").is_some() {
                Some(image_entry_limit())
            } else {
                None
            }
        })?;
        let bins: Vec<(Vec<String>, Vec<u8>)> = {
            let (b, rest) = std::mem::take(&mut scan.files)
                .into_iter()
                .partition(|(c, _)| c.last().is_some_and(|n| is_cifar10_batch(n)));
            scan.files = rest;
            b
        };
        if !bins.is_empty() {
            let train = records_from_scan(path, &bins, &CIFAR10_TRAIN, CifarKind::Cifar10)?;
            let test = records_from_scan(path, &bins, &["test_batch.bin"], CifarKind::Cifar10)?;
            (train, test)
        } else {
            let train = dataset_from_scan(path, &mut scan, "train")?;
            let test = dataset_from_scan(path, &mut scan, "test")?;
            (train, test)
        }
    } else if path.join("train").is_dir() && path.join("test").is_dir() {
        (
            read_image_folder(&path.join("train"))?,
            read_image_folder(&path.join("test"))?,
        )
    } else {
        let nested = path.join("cifar-10-batches-bin");
        let dir = if !has_file(path, "data_batch_1.bin") && nested.is_dir() {
            nested
        } else {
            path.to_path_buf()
        };
        if !CIFAR10_TRAIN
            .iter()
            .chain(&["test_batch.bin"])
            .any(|n| has_file(&dir, n))
        {
            return Err(DataError::layout(
                path,
                format!("unrecognised CIFAR-10 layout; {CIFAR10_HINT}"),
            ));
        }
        let mut files = Vec::new();
        for n in CIFAR10_TRAIN.iter().chain(&["test_batch.bin"]) {
            let p = dir.join(n);
            if !p.is_file() {
                return Err(DataError::NotFound {
                    what: "CIFAR-10 batch file",
                    path: p,
                    hint: CIFAR10_HINT.into(),
                });
            }
            files.push(p);
        }
        let test_file = files.pop().unwrap();
        (
            read_cifar_bin(&files, CifarKind::Cifar10)?,
            read_cifar_bin(&[test_file], CifarKind::Cifar10)?,
        )
    };
    check_pair("CIFAR-10", &train, &test)?;
    Ok((train, test))
}

/// Loads an image-folder dataset as (train, test) from a directory holding
/// `train/` and `test/`, each with one sub-folder of images per class (see
/// [`read_image_folder`]). The two splits must have the same classes (by
/// name, hence the same labels) and the same image size; a class missing
/// from either, or named differently, is an error naming it.
pub fn load_image_folders(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
    let train = read_image_folder(&dir.join("train"))?;
    let test = read_image_folder(&dir.join("test"))?;
    check_pair("image folders", &train, &test)?;
    Ok((train, test))
}

/// Loads CIFAR-100 (fine labels, 100 classes) as (train, test) from the
/// official binary version: a directory holding `train.bin` and `test.bin`
/// (possibly inside `cifar-100-binary/`), or the `cifar-100-binary.tar.gz`
/// archive itself.
pub fn load_cifar100(path: &Path) -> Result<(Dataset, Dataset), DataError> {
    let kind = CifarKind::Cifar100 { fine: true };
    if !path.exists() {
        return Err(DataError::NotFound {
            what: "CIFAR-100 data",
            path: path.to_path_buf(),
            hint: CIFAR100_HINT.into(),
        });
    }
    if path.is_file() {
        let scan = scan_tar(path, &|c| {
            c.last()
                .is_some_and(|n| n == "train.bin" || n == "test.bin")
                .then(cifar_batch_limit)
        })?;
        let train = records_from_scan(path, &scan.files, &["train.bin"], kind)?;
        let test = records_from_scan(path, &scan.files, &["test.bin"], kind)?;
        return Ok((train, test));
    }
    let nested = path.join("cifar-100-binary");
    let dir = if !has_file(path, "train.bin") && nested.is_dir() {
        nested
    } else {
        path.to_path_buf()
    };
    let mut out = Vec::new();
    for n in ["train.bin", "test.bin"] {
        let p = dir.join(n);
        if !p.is_file() {
            return Err(DataError::NotFound {
                what: "CIFAR-100 file",
                path: p,
                hint: CIFAR100_HINT.into(),
            });
        }
        out.push(read_cifar_bin(&[p], kind)?);
    }
    let test = out.pop().unwrap();
    let train = out.pop().unwrap();
    Ok((train, test))
}
