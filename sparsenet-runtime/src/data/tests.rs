//! Tests of the data module, on small synthetic files written to temporary
//! directories (plus one smoke test on the real data when present, and an
//! `#[ignore]`d timing test).

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage, RgbaImage};

use super::*;

// ---------------------------------------------------------------- helpers

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Asserts the error message starts lower-case and contains every needle.
#[track_caller]
fn check_msg(err: &DataError, needles: &[&str]) {
    let msg = err.to_string();
    eprintln!("message: {msg}");
    let first = msg.chars().next().unwrap();
    assert!(
        !first.is_uppercase(),
        "message should start lower-case: {msg}"
    );
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should contain {n:?}");
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// Writes an IDX pair of `n` images h×w (pixel = i*7 + k) with `labels`.
fn write_idx_pair(
    dir: &Path,
    stem: &str,
    h: u32,
    w: u32,
    labels: &[u8],
    gzip: bool,
) -> (PathBuf, PathBuf) {
    let n = labels.len() as u32;
    let pixels: Vec<u8> = (0..n * h * w).map(|k| (k * 7 % 251) as u8).collect();
    let img = idx_bytes(0x803, &[n, h, w], &pixels);
    let lab = idx_bytes(0x801, &[n], labels);
    let (img, lab) = if gzip {
        (gz(&img), gz(&lab))
    } else {
        (img, lab)
    };
    let sfx = if gzip { ".gz" } else { "" };
    (
        write(&dir.join(format!("{stem}-images-idx3-ubyte{sfx}")), &img),
        write(&dir.join(format!("{stem}-labels-idx1-ubyte{sfx}")), &lab),
    )
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format).unwrap();
    c.into_inner()
}

/// An RGB image whose pixel (x, y) is (seed + x, 10 * y, 200 - seed).
fn rgb(w: u32, h: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([seed + x as u8, 10 * y as u8, 200 - seed])
    })
}

fn png(img: RgbImage) -> Vec<u8> {
    encode(DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

/// Channel-planar bytes of `rgb(w, h, seed)`.
fn planar(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = rgb(w, h, seed);
    (0..3)
        .flat_map(|c| img.pixels().map(move |p| p.0[c]).collect::<Vec<_>>())
        .collect()
}

/// A small image folder: class -> seeds; file names chosen so that
/// name order differs from creation order.
fn make_folder(root: &Path, classes: &[(&str, &[u8])]) {
    for (class, seeds) in classes {
        for (k, &seed) in seeds.iter().enumerate().rev() {
            write(
                &root.join(class).join(format!("img{k:02}.png")),
                &png(rgb(4, 3, seed)),
            );
        }
    }
}

enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
}

/// Writes a .tar.gz with entry names taken verbatim (so "./x" stays).
fn make_tar_gz(path: &Path, entries: Vec<Entry>) {
    let gz = GzEncoder::new(fs::File::create(path).unwrap(), Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_old();
        let (name, data, ty, mode) = match e {
            Entry::Dir(n) => (n, Vec::new(), tar::EntryType::Directory, 0o755),
            Entry::File(n, d) => (n, d, tar::EntryType::Regular, 0o644),
        };
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

fn tar_folder_entries(prefix: &str, split: &str, classes: &[(&str, &[u8])]) -> Vec<Entry<'static>> {
    let mut v = Vec::new();
    for (class, seeds) in classes {
        v.push(Entry::Dir(Box::leak(
            format!("{prefix}{split}/{class}/").into_boxed_str(),
        )));
        for (k, &seed) in seeds.iter().enumerate().rev() {
            let name = Box::leak(format!("{prefix}{split}/{class}/img{k:02}.png").into_boxed_str());
            v.push(Entry::File(name, png(rgb(4, 3, seed))));
        }
    }
    v
}

/// CIFAR records: label bytes then 3072 pixels (value = record + plane).
fn cifar_records(labels: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for (r, l) in labels.iter().enumerate() {
        v.extend_from_slice(l);
        v.extend((0..3072).map(|k| ((r * 3 + k / 1024) % 256) as u8));
    }
    v
}

/// A dataset from raw parts.
fn synthetic(n: usize, c: usize, h: usize, w: usize, classes: usize) -> Dataset {
    Dataset {
        pixels: (0..n * c * h * w).map(|k| (k * 31 % 256) as u8).collect(),
        labels: (0..n).map(|i| (i % classes) as u16).collect(),
        len: n,
        channels: c,
        height: h,
        width: w,
        classes,
        class_names: (0..classes).map(|k| k.to_string()).collect(),
        source: PathBuf::from("synthetic"),
    }
}

fn collect(ds: &Arc<Dataset>, t: &Arc<Transform>, cfg: &LoaderConfig, epoch: u64) -> Vec<Batch> {
    epoch_batches(ds.clone(), t.clone(), cfg, epoch).collect()
}

// ---------------------------------------------------------------- IDX

#[test]
fn idx_roundtrip_gz_and_plain() {
    let d = tmp();
    let labels = [0u8, 2, 1, 2, 0];
    let (img_gz, lab_gz) = write_idx_pair(d.path(), "a", 3, 2, &labels, true);
    let (img, lab) = write_idx_pair(d.path(), "b", 3, 2, &labels, false);
    // Mixed: gzipped images, plain labels.
    let ds = read_idx(&img_gz, &lab).unwrap();
    assert_eq!(
        (ds.len, ds.channels, ds.height, ds.width, ds.classes),
        (5, 1, 3, 2, 3)
    );
    assert_eq!(ds.labels, vec![0, 2, 1, 2, 0]);
    assert_eq!(ds.image(1), &[42, 49, 56, 63, 70, 77]);
    assert_eq!(ds.class_names, vec!["0", "1", "2"]);
    assert_eq!(ds.source, img_gz);
    let plain = read_idx(&img, &lab_gz).unwrap();
    assert_eq!(plain.pixels, ds.pixels);
    assert_eq!(plain.labels, ds.labels);
}

#[test]
fn idx_truncated_header() {
    let d = tmp();
    let (_, lab) = write_idx_pair(d.path(), "t", 2, 2, &[0, 1], false);
    // Magic plus one dimension only (header needs 16 bytes).
    let short = write(&d.path().join("short-images"), &idx_bytes(0x803, &[2], &[]));
    let e = read_idx(&short, &lab).unwrap_err();
    assert!(matches!(e, DataError::Truncated { offset: 8, .. }), "{e:?}");
    check_msg(&e, &["short-images", "byte offset 8", "header", "16 bytes"]);
    // Not even a magic number.
    let tiny = write(&d.path().join("tiny-images"), &[0, 0]);
    let e = read_idx(&tiny, &lab).unwrap_err();
    check_msg(&e, &["tiny-images", "truncated", "byte offset 2"]);
    // Truncated gzip header of the labels file.
    let (img, _) = write_idx_pair(d.path(), "u", 2, 2, &[0, 1], false);
    let lab_short = write(
        &d.path().join("short-labels.gz"),
        &gz(&0x801u32.to_be_bytes()),
    );
    let e = read_idx(&img, &lab_short).unwrap_err();
    check_msg(&e, &["short-labels.gz", "byte offset 4", "decompressed"]);
}

#[test]
fn idx_truncated_payload() {
    let d = tmp();
    let (_, lab) = write_idx_pair(d.path(), "t", 2, 2, &[0, 1, 1], false);
    // 3 images of 2x2 need 12 bytes; give 9.
    let bytes = idx_bytes(0x803, &[3, 2, 2], &[1; 9]);
    let img = write(&d.path().join("trunc-images"), &bytes);
    let e = read_idx(&img, &lab).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                offset: 25,
                decompressed: false,
                ..
            }
        ),
        "{e:?}"
    );
    check_msg(
        &e,
        &["trunc-images", "byte offset 25", "needs 12 bytes", "only 9"],
    );
    // Same, gzipped: the offset is in the decompressed data.
    let img_gz = write(&d.path().join("trunc-images.gz"), &gz(&bytes));
    let e = read_idx(&img_gz, &lab).unwrap_err();
    check_msg(&e, &["trunc-images.gz", "byte offset 25", "decompressed"]);
    // Truncated labels payload.
    let (img, _) = write_idx_pair(d.path(), "v", 2, 2, &[0, 1, 1], false);
    let lab_short = write(
        &d.path().join("trunc-labels"),
        &idx_bytes(0x801, &[3], &[0, 1]),
    );
    let e = read_idx(&img, &lab_short).unwrap_err();
    check_msg(&e, &["trunc-labels", "byte offset 10"]);
    // A corrupt gzip stream is an I/O error naming the file.
    let mut broken = gz(&bytes);
    let n = broken.len();
    broken.truncate(n / 2);
    let img_bad = write(&d.path().join("broken-images.gz"), &broken);
    let e = read_idx(&img_bad, &lab).unwrap_err();
    check_msg(&e, &["cannot read", "broken-images.gz", "gzip"]);
}

#[test]
fn idx_trailing_bytes_and_zero_dims() {
    let d = tmp();
    let (_, lab) = write_idx_pair(d.path(), "t", 2, 2, &[0, 1], false);
    let img = write(
        &d.path().join("long-images"),
        &idx_bytes(0x803, &[2, 2, 2], &[0; 11]),
    );
    let e = read_idx(&img, &lab).unwrap_err();
    check_msg(
        &e,
        &[
            "long-images",
            "3 unexpected trailing bytes",
            "byte offset 24",
        ],
    );
    let img = write(
        &d.path().join("zero-images"),
        &idx_bytes(0x803, &[2, 0, 2], &[]),
    );
    let e = read_idx(&img, &lab).unwrap_err();
    check_msg(&e, &["zero-images", "dimension 1", "is 0"]);
}

#[test]
fn idx_bad_magic() {
    let d = tmp();
    let (img, lab) = write_idx_pair(d.path(), "t", 2, 2, &[0, 1], false);
    let e = read_idx(&lab, &img).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{e:?}"
    );
    check_msg(
        &e,
        &[
            "bad magic number 0x00000801",
            "t-labels-idx1-ubyte",
            "expected 0x00000803",
        ],
    );
    let other = write(&d.path().join("photo.png"), &png(rgb(2, 2, 0)));
    let e = read_idx(&img, &other).unwrap_err();
    check_msg(&e, &["bad magic", "photo.png", "0x00000801"]);
}

#[test]
fn idx_count_mismatch_and_single_class() {
    let d = tmp();
    let (img, _) = write_idx_pair(d.path(), "a", 2, 2, &[0, 1, 0], false);
    let (_, lab) = write_idx_pair(d.path(), "b", 2, 2, &[0, 1], false);
    let e = read_idx(&img, &lab).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{e:?}"
    );
    check_msg(
        &e,
        &[
            "a-images-idx3-ubyte has 3 images",
            "b-labels-idx1-ubyte has 2 labels",
        ],
    );
    let (img, lab) = write_idx_pair(d.path(), "c", 2, 2, &[4, 4, 4], false);
    let e = read_idx(&img, &lab).unwrap_err();
    check_msg(&e, &["c-labels-idx1-ubyte", "at least 2 classes"]);
}

// ---------------------------------------------------------------- Fashion-MNIST

#[test]
fn fashion_mnist_synthetic_dir() {
    let d = tmp();
    write_idx_pair(d.path(), "train", 28, 28, &[0, 9, 3, 3], true);
    write_idx_pair(d.path(), "t10k", 28, 28, &[1, 2], false);
    let (train, test) = load_fashion_mnist(d.path()).unwrap();
    assert_eq!((train.len, test.len), (4, 2));
    assert_eq!((train.classes, test.classes), (10, 10));
    assert_eq!(train.class_names[9], "Ankle boot");
    assert_eq!(test.class_names, train.class_names);
    assert_eq!(test.labels, vec![1, 2]);
    // A parent directory holding fashion-mnist/ works too.
    let parent = tmp();
    let sub = parent.path().join("fashion-mnist");
    write_idx_pair(&sub, "train", 28, 28, &[0, 9], false);
    write_idx_pair(&sub, "t10k", 28, 28, &[1, 2], false);
    assert_eq!(load_fashion_mnist(parent.path()).unwrap().0.len, 2);
}

#[test]
fn fashion_mnist_label_out_of_range() {
    let d = tmp();
    write_idx_pair(d.path(), "train", 28, 28, &[0, 9, 12, 3], false);
    write_idx_pair(d.path(), "t10k", 28, 28, &[1, 2], false);
    let e = load_fashion_mnist(d.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                record: 2,
                label: 12,
                classes: 10,
                ..
            }
        ),
        "{e:?}"
    );
    check_msg(
        &e,
        &[
            "label 12 out of range",
            "train-labels-idx1-ubyte",
            "record 2",
        ],
    );
}

#[test]
fn fashion_mnist_missing_dir_and_file() {
    let d = tmp();
    let missing = d.path().join("nope");
    let e = load_fashion_mnist(&missing).unwrap_err();
    check_msg(
        &e,
        &[
            "nope",
            "cannot find",
            "install it with `apt-get install dataset-fashion-mnist`, or give the folder that holds its files",
        ],
    );
    write_idx_pair(d.path(), "train", 28, 28, &[0, 1], false);
    let e = load_fashion_mnist(d.path()).unwrap_err();
    check_msg(
        &e,
        &[
            "t10k-images-idx3-ubyte",
            "cannot find",
            "apt-get install dataset-fashion-mnist",
        ],
    );
}

// ---------------------------------------------------------------- CIFAR binary

#[test]
fn cifar10_bin_roundtrip_and_dirs() {
    let d = tmp();
    let a = write(&d.path().join("a.bin"), &cifar_records(&[&[3], &[9]]));
    let b = write(&d.path().join("b.bin"), &cifar_records(&[&[0]]));
    let ds = read_cifar_bin(&[a, b], CifarKind::Cifar10).unwrap();
    assert_eq!(
        (ds.len, ds.channels, ds.height, ds.width, ds.classes),
        (3, 3, 32, 32, 10)
    );
    assert_eq!(ds.labels, vec![3, 9, 0]);
    assert_eq!(ds.class_names[3], "cat");
    let img = ds.image(1);
    assert_eq!(
        (img[0], img[1023], img[1024], img[2048], img[3071]),
        (3, 3, 4, 5, 5)
    );
    assert_eq!(ds.image(2)[0], 0);

    // The official layout, directly and inside cifar-10-batches-bin/.
    let root = tmp();
    let dir = root.path().join("cifar-10-batches-bin");
    for k in 1..=5u8 {
        write(
            &dir.join(format!("data_batch_{k}.bin")),
            &cifar_records(&[&[k], &[k + 1]]),
        );
    }
    write(&dir.join("test_batch.bin"), &cifar_records(&[&[7]]));
    write(&dir.join("batches.meta.txt"), b"airplane\n");
    for p in [root.path(), dir.as_path()] {
        let (train, test) = load_cifar10(p).unwrap();
        assert_eq!(train.len, 10);
        assert_eq!(train.labels, vec![1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
        assert_eq!(test.labels, vec![7]);
    }
    // One batch missing.
    fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
    let e = load_cifar10(root.path()).unwrap_err();
    check_msg(&e, &["data_batch_4.bin", "cannot find"]);
}

#[test]
fn cifar100_bin_fine_and_coarse() {
    let d = tmp();
    let recs = cifar_records(&[&[19, 99], &[0, 42]]);
    let dir = d.path().join("cifar-100-binary");
    let train = write(&dir.join("train.bin"), &recs);
    write(&dir.join("test.bin"), &cifar_records(&[&[1, 5]]));
    let fine = read_cifar_bin(
        std::slice::from_ref(&train),
        CifarKind::Cifar100 { fine: true },
    )
    .unwrap();
    assert_eq!((fine.classes, fine.labels.clone()), (100, vec![99, 42]));
    assert_eq!(fine.class_names[99], "worm");
    assert_eq!(fine.image(1)[0], 3);
    let coarse = read_cifar_bin(&[train], CifarKind::Cifar100 { fine: false }).unwrap();
    assert_eq!((coarse.classes, coarse.labels), (20, vec![19, 0]));
    assert_eq!(coarse.pixels, fine.pixels);
    let (tr, te) = load_cifar100(d.path()).unwrap();
    assert_eq!((tr.len, te.labels.clone()), (2, vec![5]));
    let e = load_cifar100(&d.path().join("missing")).unwrap_err();
    check_msg(&e, &["missing", "cannot find", "train.bin"]);
}

#[test]
fn cifar_bad_length() {
    let d = tmp();
    let mut bytes = cifar_records(&[&[1], &[2]]);
    bytes.truncate(3073 + 100);
    let f = write(&d.path().join("data_batch_1.bin"), &bytes);
    let e = read_cifar_bin(&[f], CifarKind::Cifar10).unwrap_err();
    check_msg(
        &e,
        &[
            "data_batch_1.bin",
            "not a multiple of the 3073-byte CIFAR-10 record",
            "byte offset 3073",
        ],
    );
    // CIFAR-10 records read as CIFAR-100 (3074 bytes) do not divide.
    let f = write(&d.path().join("train.bin"), &cifar_records(&[&[1], &[2]]));
    let e = read_cifar_bin(&[f], CifarKind::Cifar100 { fine: true }).unwrap_err();
    check_msg(
        &e,
        &[
            "train.bin",
            "3074-byte CIFAR-100 (fine labels) record",
            "byte offset 3074",
        ],
    );
    assert!(!e.to_string().contains("Cifar100 {"), "{e}");
    let f = write(&d.path().join("empty.bin"), &[]);
    let e = read_cifar_bin(&[f], CifarKind::Cifar10).unwrap_err();
    check_msg(&e, &["empty.bin", "empty"]);
    let e = read_cifar_bin(&[], CifarKind::Cifar10).unwrap_err();
    check_msg(&e, &["no CIFAR batch files"]);
    let e = read_cifar_bin(&[d.path().join("gone.bin")], CifarKind::Cifar10).unwrap_err();
    check_msg(&e, &["cannot read", "gone.bin"]);
}

#[test]
fn cifar_label_out_of_range() {
    let d = tmp();
    let f = write(
        &d.path().join("data_batch_2.bin"),
        &cifar_records(&[&[1], &[2], &[10]]),
    );
    let e = read_cifar_bin(&[f], CifarKind::Cifar10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                record: 2,
                label: 10,
                classes: 10,
                ..
            }
        ),
        "{e:?}"
    );
    check_msg(
        &e,
        &[
            "label 10 out of range",
            "data_batch_2.bin",
            "record 2",
            "byte offset 6146",
        ],
    );
    let f = write(&d.path().join("test.bin"), &cifar_records(&[&[20, 3]]));
    let e = read_cifar_bin(&[f], CifarKind::Cifar100 { fine: false }).unwrap_err();
    check_msg(&e, &["label 20", "test.bin", "record 0", "< 20"]);
}

// ---------------------------------------------------------------- image folders

const CLASSES: &[(&str, &[u8])] = &[("cat", &[10, 20, 30]), ("ant", &[1, 2]), ("dog", &[40])];

#[test]
fn image_folder_png_roundtrip() {
    let d = tmp();
    make_folder(d.path(), CLASSES);
    write(&d.path().join("README.txt"), b"not a class");
    write(&d.path().join(".hidden").join("x.txt"), b"skipped");
    write(&d.path().join("cat").join(".DS_Store"), b"skipped");
    let ds = read_image_folder(d.path()).unwrap();
    assert_eq!(ds.class_names, vec!["ant", "cat", "dog"]);
    assert_eq!(
        (ds.len, ds.channels, ds.height, ds.width, ds.classes),
        (6, 3, 3, 4, 3)
    );
    assert_eq!(ds.labels, vec![0, 0, 1, 1, 1, 2]);
    // Sorted by class then file name: ant/img00 (seed 1), ant/img01 (seed 2), cat/img00 (10)...
    for (i, seed) in [1u8, 2, 10, 20, 30, 40].into_iter().enumerate() {
        assert_eq!(ds.image(i), &planar(4, 3, seed)[..], "image {i}");
    }
    assert_eq!(ds.source, d.path());
    assert_eq!(ds.class_counts(), vec![2, 3, 1]);
}

#[test]
fn image_folder_gray_alpha_and_jpeg() {
    // Grayscale stays 1 channel.
    let d = tmp();
    for (c, v) in [("a", 10u8), ("b", 200)] {
        let g = GrayImage::from_fn(3, 2, |x, y| image::Luma([v + (x + 3 * y) as u8]));
        write(
            &d.path().join(c).join("g.png"),
            &encode(DynamicImage::ImageLuma8(g), ImageFormat::Png),
        );
    }
    let ds = read_image_folder(d.path()).unwrap();
    assert_eq!((ds.channels, ds.height, ds.width), (1, 2, 3));
    assert_eq!(ds.image(1), &[200, 201, 202, 203, 204, 205]);
    // RGBA: alpha dropped.
    let d = tmp();
    for c in ["a", "b"] {
        let im = RgbaImage::from_fn(2, 2, |x, y| image::Rgba([x as u8, y as u8, 7, 128]));
        write(
            &d.path().join(c).join("x.png"),
            &encode(DynamicImage::ImageRgba8(im), ImageFormat::Png),
        );
    }
    let ds = read_image_folder(d.path()).unwrap();
    assert_eq!(ds.channels, 3);
    assert_eq!(ds.image(0), &[0, 1, 0, 1, 0, 0, 1, 1, 7, 7, 7, 7]);
    // JPEG with upper-case / .jpeg extensions; lossy, so compare loosely.
    let d = tmp();
    let flat = RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
    write(
        &d.path().join("x").join("A.JPG"),
        &encode(DynamicImage::ImageRgb8(flat.clone()), ImageFormat::Jpeg),
    );
    write(
        &d.path().join("y").join("b.jpeg"),
        &encode(DynamicImage::ImageRgb8(flat), ImageFormat::Jpeg),
    );
    let ds = read_image_folder(d.path()).unwrap();
    assert_eq!((ds.len, ds.channels, ds.height, ds.width), (2, 3, 8, 8));
    let img = ds.image(0);
    for (c, want) in [200i32, 100, 50].into_iter().enumerate() {
        assert!(
            (img[c * 64] as i32 - want).abs() <= 3,
            "channel {c}: {}",
            img[c * 64]
        );
    }
}

#[test]
fn image_folder_corrupt_jpeg_names_file() {
    let d = tmp();
    make_folder(d.path(), CLASSES);
    let mut bytes = encode(DynamicImage::ImageRgb8(rgb(4, 3, 1)), ImageFormat::Jpeg);
    bytes.truncate(40);
    write(&d.path().join("dog").join("broken.jpg"), &bytes);
    let e = read_image_folder(d.path()).unwrap_err();
    assert!(matches!(e, DataError::Image { .. }), "{e:?}");
    check_msg(&e, &["bad image", "broken.jpg", "cannot decode"]);
    // Garbage that is not even a JPEG.
    fs::write(d.path().join("dog").join("broken.jpg"), b"hello").unwrap();
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["broken.jpg", "cannot decode as JPEG"]);
}

#[test]
fn image_folder_non_image_file_and_nested_folder() {
    let d = tmp();
    make_folder(d.path(), CLASSES);
    write(&d.path().join("cat").join("notes.txt"), b"hi");
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["notes.txt", "not a JPEG or PNG"]);
    fs::remove_file(d.path().join("cat").join("notes.txt")).unwrap();
    fs::create_dir(d.path().join("cat").join("sub")).unwrap();
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["sub", "unexpected folder"]);
}

#[test]
fn image_folder_mixed_sizes() {
    let d = tmp();
    make_folder(d.path(), CLASSES);
    write(&d.path().join("dog").join("big.png"), &png(rgb(5, 3, 1)));
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(
        &e,
        &["big.png", "3x3x5", "3x3x4", "ant/img00.png", "same size"],
    );
    // Grayscale among colour images: channel count differs.
    fs::remove_file(d.path().join("dog").join("big.png")).unwrap();
    let g = GrayImage::from_pixel(4, 3, image::Luma([9]));
    write(
        &d.path().join("dog").join("gray.png"),
        &encode(DynamicImage::ImageLuma8(g), ImageFormat::Png),
    );
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["gray.png", "1x3x4", "3x3x4"]);
}

#[test]
fn image_folder_layout_errors() {
    let d = tmp();
    // Missing.
    let e = read_image_folder(&d.path().join("nope")).unwrap_err();
    check_msg(&e, &["nope", "cannot find"]);
    // Empty folder.
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["bad dataset layout", "empty"]);
    // Files only, no class folder.
    write(&d.path().join("a.png"), &png(rgb(2, 2, 0)));
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["no class folders"]);
    // A single class.
    make_folder(d.path(), &[("only", &[1, 2])]);
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["single class folder 'only'", "at least 2 classes"]);
    // An empty class.
    fs::create_dir(d.path().join("empty")).unwrap();
    write(&d.path().join("empty").join(".keep"), b"");
    let e = read_image_folder(d.path()).unwrap_err();
    check_msg(&e, &["class folder 'empty'", "no image"]);
    // A file is not a folder.
    let e = read_image_folder(&d.path().join("a.png")).unwrap_err();
    check_msg(&e, &["a.png", "not a directory"]);
}

/// train/ and test/ image folders: the test classes must be the training
/// classes, else the labels (class positions) would mean other classes. A
/// missing, extra or renamed class is an error naming it.
#[test]
fn image_folders_need_the_same_classes_in_both_splits() {
    let d = tmp();
    make_folder(&d.path().join("train"), CLASSES);
    make_folder(
        &d.path().join("test"),
        &[("cat", &[5]), ("ant", &[6]), ("dog", &[7])],
    );
    let (train, test) = load_image_folders(d.path()).unwrap();
    assert_eq!(train.class_names, ["ant", "cat", "dog"]);
    assert_eq!(test.class_names, train.class_names);
    assert_eq!(test.labels, [0, 1, 2]);
    let split = |name: &str, classes: &[(&str, &[u8])]| {
        let root = d.path().join(name);
        make_folder(&root.join("train"), CLASSES);
        make_folder(&root.join("test"), classes);
        load_image_folders(&root).unwrap_err()
    };
    // "ant" missing: "cat" and "dog" would take labels 0 and 1.
    let e = split("missing", &[("cat", &[5]), ("dog", &[7])]);
    check_msg(
        &e,
        &[
            "missing",
            "image folders: the test classes differ from the training classes",
            "missing from test: 'ant'",
        ],
    );
    let e = split(
        "extra",
        &[("ant", &[6]), ("bee", &[3]), ("cat", &[5]), ("dog", &[7])],
    );
    check_msg(&e, &["not in training: 'bee'"]);
    let e = split("renamed", &[("ant", &[6]), ("cats", &[5]), ("dog", &[7])]);
    check_msg(&e, &["missing from test: 'cat'; not in training: 'cats'"]);
    // Another image size in test.
    let root = d.path().join("sizes");
    make_folder(&root.join("train"), CLASSES);
    write(&root.join("test/ant/a.png"), &png(rgb(5, 3, 0)));
    write(&root.join("test/cat/a.png"), &png(rgb(5, 3, 0)));
    write(&root.join("test/dog/a.png"), &png(rgb(5, 3, 0)));
    let e = load_image_folders(&root).unwrap_err();
    check_msg(&e, &["test images are 3x3x5", "are 3x3x4"]);
}

// ---------------------------------------------------------------- tar.gz

#[test]
fn tar_gz_matches_folder_with_prefixes() {
    let d = tmp();
    make_folder(&d.path().join("train"), CLASSES);
    let from_dir = read_image_folder(&d.path().join("train")).unwrap();
    let test_classes: &[(&str, &[u8])] = &[("cat", &[5]), ("ant", &[6]), ("dog", &[7])];
    for prefix in ["", "./", "cifar10/", "./cifar10/"] {
        let archive = d.path().join("data.tar.gz");
        let mut entries = tar_folder_entries(prefix, "train", CLASSES);
        entries.extend(tar_folder_entries(prefix, "test", test_classes));
        entries.push(Entry::File(
            Box::leak(format!("{prefix}README").into_boxed_str()),
            b"x".to_vec(),
        ));
        entries.push(Entry::File(
            Box::leak(format!("{prefix}train/cat/._img00.png").into_boxed_str()),
            b"x".to_vec(),
        ));
        make_tar_gz(&archive, entries);
        let ds = read_image_folder_tar_gz(&archive, "train").unwrap();
        assert_eq!(ds.pixels, from_dir.pixels, "prefix {prefix:?}");
        assert_eq!(ds.labels, from_dir.labels);
        assert_eq!(ds.class_names, from_dir.class_names);
        assert_eq!(ds.source, archive);
        let (train, test) = load_cifar10(&archive).unwrap();
        assert_eq!(train.pixels, from_dir.pixels);
        assert_eq!((test.len, test.labels.clone()), (3, vec![0, 1, 2]));
        assert_eq!(test.image(2), &planar(4, 3, 7)[..]);
    }
    // load_cifar10 on a directory with train/ and test/ image folders.
    make_folder(&d.path().join("test"), test_classes);
    let (train, test) = load_cifar10(d.path()).unwrap();
    assert_eq!(train, from_dir);
    assert_eq!(test.len, 3);
}

#[test]
fn tar_gz_errors() {
    let d = tmp();
    let archive = d.path().join("data.tar.gz");
    let mut entries = tar_folder_entries("", "train", CLASSES);
    let mut bad = png(rgb(4, 3, 0));
    bad.truncate(30);
    entries.push(Entry::File("train/dog/zz.png", bad));
    make_tar_gz(&archive, entries);
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(
        &e,
        &["data.tar.gz", "entry train/dog/zz.png", "cannot decode"],
    );
    let e = read_image_folder_tar_gz(&archive, "test").unwrap_err();
    check_msg(&e, &["data.tar.gz", "no entries under 'test/'"]);
    // Non-image entry, single class, empty class (directory entry only).
    make_tar_gz(
        &archive,
        vec![
            Entry::File("train/a/x.png", png(rgb(2, 2, 0))),
            Entry::File("train/b/y.gif", vec![1]),
        ],
    );
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(&e, &["entry train/b/y.gif", "not a JPEG or PNG"]);
    make_tar_gz(
        &archive,
        vec![Entry::File("train/a/x.png", png(rgb(2, 2, 0)))],
    );
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(&e, &["single class folder 'a'"]);
    make_tar_gz(
        &archive,
        vec![
            Entry::File("train/a/x.png", png(rgb(2, 2, 0))),
            Entry::Dir("train/b/"),
        ],
    );
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(&e, &["class folder 'b'", "no image"]);
    // Mixed sizes inside the archive.
    make_tar_gz(
        &archive,
        vec![
            Entry::File("train/a/x.png", png(rgb(2, 2, 0))),
            Entry::File("train/b/y.png", png(rgb(3, 2, 0))),
        ],
    );
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(&e, &["entry train/b/y.png", "3x2x3", "3x2x2"]);
    // Corrupt gzip.
    let bytes = fs::read(&archive).unwrap();
    write(&archive, &bytes[..bytes.len() / 2]);
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(&e, &["cannot read", "data.tar.gz"]);
    let e = read_image_folder_tar_gz(&d.path().join("none.tar.gz"), "train").unwrap_err();
    check_msg(&e, &["none.tar.gz", "cannot find"]);
    // load_cifar10 on a missing path says what it accepts.
    let e = load_cifar10(&d.path().join("none")).unwrap_err();
    check_msg(
        &e,
        &["none", "cannot find", ".tar.gz", "data_batch_1..5.bin"],
    );
}

/// A `.tar.gz` whose gzip trailer (CRC-32, then length) is wrong is an
/// error: the reader used to stop at the tar end marker, before the
/// trailer, and loaded whatever the corrupt stream inflated to.
#[test]
fn tar_gz_checksum_and_length_are_checked() {
    let d = tmp();
    let archive = d.path().join("data.tar.gz");
    make_tar_gz(&archive, tar_folder_entries("", "train", CLASSES));
    let good = fs::read(&archive).unwrap();
    let ds = read_image_folder_tar_gz(&archive, "train").unwrap();
    assert_eq!(ds.len, 6);
    let n = good.len();
    for (what, at) in [("CRC-32", n - 8), ("length", n - 4)] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        write(&archive, &bad);
        let e = read_image_folder_tar_gz(&archive, "train").expect_err(what);
        check_msg(&e, &["cannot read", "data.tar.gz", "gzip", "checksum"]);
        let e = load_cifar10(&archive).expect_err(what);
        check_msg(&e, &["data.tar.gz", "checksum"]);
    }
}

/// What a tar header claims is checked before anything is allocated: more
/// than the whole archive can hold, more than an image or a CIFAR batch can
/// legitimately be; each an error naming the entry (an allocation of the
/// claimed size used to abort the process).
#[test]
fn tar_entry_sizes_are_bounded_before_reading() {
    let d = tmp();
    let archive = d.path().join("claims.tar.gz");
    // One header claiming `size` bytes for `name`, with `filler` bytes of
    // incompressible data in an entry ahead of it (to make the archive large
    // enough to hold the claim), and no data for the claim.
    let claim = |name: &str, size: u64, filler: usize| {
        // By hand: tar::Builder would end the archive before the claim.
        let noise: Vec<u8> = (0..filler as u64)
            .map(|i| (splitmix64(i) >> 56) as u8)
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_path("noise.bin").unwrap();
        h.set_size(noise.len() as u64);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&noise);
        raw.resize(raw.len().next_multiple_of(512), 0);
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&[0; 1024]);
        write(&archive, &gz(&raw));
    };
    claim("train/a/x.png", 1 << 40, 0);
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(
        &e,
        &[
            "claims.tar.gz (entry train/a/x.png)",
            "claims 1099511627776 bytes",
            "more than the whole archive can hold",
        ],
    );
    claim("train/a/x.png", 600 << 20, 700_000);
    let e = read_image_folder_tar_gz(&archive, "train").unwrap_err();
    check_msg(
        &e,
        &[
            "entry train/a/x.png",
            "claims 629145600 bytes",
            "536870912 bytes: the most the image decoder allocates for one image",
        ],
    );
    claim(
        "cifar-10-batches-bin/data_batch_1.bin",
        160_000_000,
        200_000,
    );
    let e = load_cifar10(&archive).unwrap_err();
    check_msg(
        &e,
        &[
            "entry cifar-10-batches-bin/data_batch_1.bin",
            "153700000 bytes: the largest official CIFAR batch",
        ],
    );
}

/// Entries after the tar end-of-archive marker (a second archive appended)
/// would be dropped unseen by a tar reader: an error instead.
#[test]
fn tar_data_after_the_end_marker_is_an_error() {
    let d = tmp();
    let first = d.path().join("first.tar.gz");
    make_tar_gz(&first, tar_folder_entries("", "train", CLASSES));
    let second = d.path().join("second.tar.gz");
    make_tar_gz(&second, tar_folder_entries("", "test", CLASSES));
    // Two gzip members, one tar each: test/ sits after train/'s end marker.
    let mut both = fs::read(&first).unwrap();
    both.extend(fs::read(&second).unwrap());
    let archive = write(&d.path().join("both.tar.gz"), &both);
    let e = load_cifar10(&archive).unwrap_err();
    check_msg(
        &e,
        &["both.tar.gz", "data after the tar end-of-archive marker"],
    );
}

/// An IDX file inflates only to the size its header announces (and one byte
/// more, to see that something follows): a gzip bomb after a valid payload
/// is refused without inflating it, so a second, broken gzip member after
/// it is never reached.
#[test]
fn idx_gzip_inflates_only_what_the_header_announces() {
    let d = tmp();
    let (_, lab) = write_idx_pair(d.path(), "t", 2, 2, &[0, 1], false);
    let mut bytes = idx_bytes(0x803, &[2, 2, 2], &[7; 8]);
    bytes.resize(bytes.len() + (64 << 20), 0);
    let mut bomb = gz(&bytes);
    assert!(bomb.len() < 1 << 20);
    bomb.extend_from_slice(b"not a gzip member");
    let img = write(&d.path().join("bomb-images.gz"), &bomb);
    let e = read_idx(&img, &lab).unwrap_err();
    assert!(matches!(e, DataError::Format { .. }), "{e:?}");
    check_msg(
        &e,
        &[
            "bomb-images.gz",
            "unexpected trailing data at byte offset 24 of the decompressed data",
        ],
    );
    // A wrong gzip trailer is reported (the stream is read to its end).
    let (img_gz, _) = write_idx_pair(d.path(), "c", 2, 2, &[0, 1], true);
    let mut bad = fs::read(&img_gz).unwrap();
    let n = bad.len();
    bad[n - 8] ^= 1;
    write(&img_gz, &bad);
    let e = read_idx(&img_gz, &lab).unwrap_err();
    check_msg(&e, &["c-images-idx3-ubyte.gz", "gzip", "checksum"]);
}

#[test]
fn cifar10_binary_inside_tar_gz() {
    let d = tmp();
    let archive = d.path().join("cifar-10-binary.tar.gz");
    let mut entries = vec![Entry::Dir("cifar-10-batches-bin/")];
    let names: Vec<&'static str> = (1..=5)
        .map(|k| &*Box::leak(format!("cifar-10-batches-bin/data_batch_{k}.bin").into_boxed_str()))
        .collect();
    for (k, n) in names.iter().enumerate() {
        entries.push(Entry::File(n, cifar_records(&[&[k as u8]])));
    }
    entries.push(Entry::File(
        "cifar-10-batches-bin/test_batch.bin",
        cifar_records(&[&[9], &[12]]),
    ));
    make_tar_gz(&archive, entries);
    let e = load_cifar10(&archive).unwrap_err();
    check_msg(
        &e,
        &[
            "cifar-10-binary.tar.gz",
            "entry cifar-10-batches-bin/test_batch.bin",
            "record 1",
            "label 12",
        ],
    );
}

// ---------------------------------------------------------------- Dataset helpers

#[test]
fn dataset_subset_take() {
    let ds = synthetic(10, 1, 2, 2, 3); // labels 0,1,2,0,1,2,0,1,2,0
    let s = ds.subset(&[4, 1, 4]);
    assert_eq!(s.len, 3);
    assert_eq!(s.labels, vec![1, 1, 1]);
    assert_eq!(s.image(0), ds.image(4));
    assert_eq!(s.image(1), ds.image(1));
    let t = ds.take(5);
    assert_eq!(t.len, 5);
    assert_eq!(t.class_counts(), vec![2, 2, 1]);
    assert_eq!(t.image(0), ds.image(0));
    assert_eq!(ds.take(100), ds);
    let p = ds.take_per_class(1);
    assert_eq!(p.labels, vec![0, 1, 2]);
    assert_eq!(p.image(2), ds.image(2));
    assert!(format!("{ds:?}").contains("len: 10"));
}

// ---------------------------------------------------------------- transform

#[test]
fn normalisation_values() {
    // Two 1x2x2 images, 2 channels... use channels = 2, h = 1, w = 2.
    let ds = Dataset {
        pixels: vec![0, 255, 10, 10, /* img 1 */ 255, 0, 10, 10],
        labels: vec![0, 1],
        len: 2,
        channels: 2,
        height: 1,
        width: 2,
        classes: 2,
        class_names: vec!["a".into(), "b".into()],
        source: PathBuf::new(),
    };
    let t = Transform::from_dataset_stats(&ds);
    assert!(
        (t.mean[0] - 0.5).abs() < 1e-6 && (t.std[0] - 0.5).abs() < 1e-6,
        "{t:?}"
    );
    assert!((t.mean[1] - 10.0 / 255.0).abs() < 1e-6);
    assert_eq!(t.std[1], 1.0, "constant channel gets std 1");
    assert_eq!((t.pad_crop, t.hflip), (0, false));
    let ds = Arc::new(ds);
    let cfg = LoaderConfig {
        batch_size: 2,
        shuffle: false,
        workers: 1,
        ..Default::default()
    };
    let b = collect(&ds, &Arc::new(t), &cfg, 0).remove(0);
    assert_eq!(b.images.shape(), &[2, 2, 1, 2]);
    let got = b.images.as_slice().unwrap();
    for (g, w) in got.iter().zip([-1.0, 1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0]) {
        assert!((g - w).abs() < 1e-6, "{got:?}");
    }
    assert_eq!(b.labels, vec![0, 1]);
    // Explicit mean / std.
    let t = Transform::new(vec![0.2], vec![0.5]);
    let mut out = [0f32; 2];
    t.apply(&[51, 255], (1, 1, 2), Augment::default(), &mut out);
    assert!(
        (out[0] - 0.0).abs() < 1e-6 && (out[1] - 1.6).abs() < 1e-6,
        "{out:?}"
    );
}

#[test]
fn crop_and_flip_on_known_image() {
    // 1 channel 3x3, pixels 1..9; identity scaling * 255 gives back the pixel.
    let img: Vec<u8> = (1..=9).collect();
    let t = Transform::new(vec![0.0], vec![1.0 / 255.0]);
    let run = |dy, dx, flip| {
        let mut out = [0f32; 9];
        t.apply(&img, (1, 3, 3), Augment { dy, dx, flip }, &mut out);
        out.map(|v| v.round() as i32)
    };
    assert_eq!(run(0, 0, false), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Shift down by one: first row is padding (raw 0).
    assert_eq!(run(-1, 0, false), [0, 0, 0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(run(1, 0, false), [4, 5, 6, 7, 8, 9, 0, 0, 0]);
    assert_eq!(run(0, 1, false), [2, 3, 0, 5, 6, 0, 8, 9, 0]);
    assert_eq!(run(0, -2, false), [0, 0, 1, 0, 0, 4, 0, 0, 7]);
    assert_eq!(run(0, 0, true), [3, 2, 1, 6, 5, 4, 9, 8, 7]);
    // Crop then flip (torchvision order).
    assert_eq!(run(1, 1, true), [0, 6, 5, 0, 9, 8, 0, 0, 0]);
    assert_eq!(run(5, 0, false), [0; 9]);
    // Padding normalises like a raw 0 pixel.
    let t2 = Transform::new(vec![0.5], vec![0.25]);
    let mut out = [0f32; 9];
    t2.apply(
        &img,
        (1, 3, 3),
        Augment {
            dy: -1,
            dx: 0,
            flip: false,
        },
        &mut out,
    );
    assert_eq!(out[0], -2.0);
    // Multi-channel: every plane moves the same way.
    let img3: Vec<u8> = (0..12).collect(); // 3 channels of 2x2
    let t3 = Transform::new(vec![0.0; 3], vec![1.0 / 255.0; 3]);
    let mut out = [0f32; 12];
    t3.apply(
        &img3,
        (3, 2, 2),
        Augment {
            dy: 0,
            dx: 0,
            flip: true,
        },
        &mut out,
    );
    assert_eq!(
        out.map(|v| v.round() as i32),
        [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]
    );
}

#[test]
fn augment_matches_naive_reference() {
    // Non-square, multi-channel: every shift within and beyond the image, both flips.
    let (c, h, w) = (2usize, 5usize, 7usize);
    let img: Vec<u8> = (0..c * h * w).map(|k| (k * 37 % 256) as u8).collect();
    let t = Transform::new(vec![0.1, 0.7], vec![0.3, 0.2]);
    let lut = t.lut();
    for dy in -6..=6isize {
        for dx in -8..=8isize {
            for flip in [false, true] {
                let mut got = vec![0f32; c * h * w];
                t.apply(&img, (c, h, w), Augment { dy, dx, flip }, &mut got);
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            let xx = if flip { w - 1 - x } else { x } as isize + dx;
                            let yy = y as isize + dy;
                            let v =
                                if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xx) {
                                    img[ch * h * w + yy as usize * w + xx as usize]
                                } else {
                                    0
                                };
                            assert_eq!(
                                got[ch * h * w + y * w + x],
                                lut[ch * 256 + v as usize],
                                "dy {dy} dx {dx} flip {flip}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sample_augment_ranges_and_determinism() {
    let t = Transform::identity(1).with_augmentation(2, true);
    assert!(t.augments());
    let augs: Vec<Augment> = (0..500).map(|i| t.sample_augment(7, 3, i)).collect();
    assert!(augs
        .iter()
        .all(|a| (-2..=2).contains(&a.dy) && (-2..=2).contains(&a.dx)));
    for v in -2..=2 {
        assert!(
            augs.iter().any(|a| a.dy == v) && augs.iter().any(|a| a.dx == v),
            "offset {v} never drawn"
        );
    }
    let flips = augs.iter().filter(|a| a.flip).count();
    assert!((150..350).contains(&flips), "{flips} flips of 500");
    assert_eq!(
        augs,
        (0..500)
            .map(|i| t.sample_augment(7, 3, i))
            .collect::<Vec<_>>()
    );
    assert_ne!(
        augs,
        (0..500)
            .map(|i| t.sample_augment(7, 4, i))
            .collect::<Vec<_>>()
    );
    assert_ne!(
        augs,
        (0..500)
            .map(|i| t.sample_augment(8, 3, i))
            .collect::<Vec<_>>()
    );
    let flip_only = Transform::identity(1).with_augmentation(0, true);
    assert!((0..50).all(|i| {
        let a = flip_only.sample_augment(1, 1, i);
        a.dy == 0 && a.dx == 0
    }));
    assert_eq!(
        Transform::identity(1).sample_augment(1, 1, 1),
        Augment::default()
    );
}

// ---------------------------------------------------------------- loader

#[test]
fn epoch_order_properties() {
    assert_eq!(epoch_order(5, 1, 0, false), vec![0, 1, 2, 3, 4]);
    let a = epoch_order(1000, 42, 0, true);
    let mut s = a.clone();
    s.sort_unstable();
    assert_eq!(s, (0..1000).collect::<Vec<_>>());
    assert_ne!(a, s);
    assert_eq!(a, epoch_order(1000, 42, 0, true));
    assert_ne!(a, epoch_order(1000, 42, 1, true));
    assert_ne!(a, epoch_order(1000, 43, 0, true));
    assert!(epoch_order(0, 1, 1, true).is_empty());
}

#[test]
fn loader_covers_epoch_in_order() {
    let ds = Arc::new(synthetic(10, 2, 3, 3, 3));
    let t = Arc::new(Transform::identity(2));
    let mut cfg = LoaderConfig {
        batch_size: 4,
        shuffle: true,
        seed: 5,
        workers: 3,
        prefetch: 2,
        ..Default::default()
    };
    let it = epoch_batches(ds.clone(), t.clone(), &cfg, 2);
    assert_eq!(it.len(), 3);
    let batches: Vec<Batch> = it.collect();
    assert_eq!(
        batches.iter().map(Batch::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let all: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(all, epoch_order(10, 5, 2, true));
    for b in &batches {
        for (j, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[j], ds.label(i));
            let want: Vec<f32> = ds.image(i).iter().map(|&v| v as f32 / 255.0).collect();
            assert_eq!(
                b.images
                    .index_axis(ndarray::Axis(0), j)
                    .iter()
                    .copied()
                    .collect::<Vec<_>>(),
                want
            );
        }
    }
    cfg.drop_last = true;
    assert_eq!(collect(&ds, &t, &cfg, 2).len(), 2);
    cfg.batch_size = 20;
    assert_eq!(collect(&ds, &t, &cfg, 2).len(), 0);
    cfg.drop_last = false;
    assert_eq!(collect(&ds, &t, &cfg, 2)[0].len(), 10);
}

#[test]
fn loader_deterministic_across_worker_counts() {
    let ds = Arc::new(synthetic(203, 3, 8, 8, 10));
    let t = Arc::new(Transform::from_dataset_stats(&ds).with_augmentation(2, true));
    let base = LoaderConfig {
        batch_size: 16,
        shuffle: true,
        augment: true,
        seed: 11,
        workers: 1,
        prefetch: 1,
        ..Default::default()
    };
    let one = collect(&ds, &t, &base, 4);
    for (workers, prefetch) in [(3, 1), (3, 8), (2, 4), (8, 2)] {
        let cfg = LoaderConfig {
            workers,
            prefetch,
            ..base.clone()
        };
        assert_eq!(
            collect(&ds, &t, &cfg, 4),
            one,
            "workers {workers}, prefetch {prefetch}"
        );
    }
    // Augmentation is the per-sample one, and actually changes images.
    let lut_t = (*t).clone();
    let b = &one[0];
    let i = b.indices[3];
    let mut want = vec![0f32; 3 * 64];
    lut_t.apply(
        ds.image(i),
        (3, 8, 8),
        t.sample_augment(11, 4, i),
        &mut want,
    );
    assert_eq!(
        b.images
            .index_axis(ndarray::Axis(0), 3)
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        want
    );
    let plain = collect(
        &ds,
        &t,
        &LoaderConfig {
            augment: false,
            ..base.clone()
        },
        4,
    );
    assert_eq!(
        plain.iter().map(|b| b.indices.clone()).collect::<Vec<_>>(),
        one.iter().map(|b| b.indices.clone()).collect::<Vec<_>>()
    );
    assert_ne!(plain, one);
    // Another epoch differs.
    assert_ne!(collect(&ds, &t, &base, 5), one);
}

#[test]
fn loader_drop_early_stops_workers() {
    let ds = Arc::new(synthetic(4000, 3, 8, 8, 10));
    let t = Arc::new(Transform::identity(3).with_augmentation(1, true));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for workers in [1, 3] {
            let cfg = LoaderConfig {
                batch_size: 8,
                augment: true,
                workers,
                prefetch: 1,
                ..Default::default()
            };
            let mut it = epoch_batches(ds.clone(), t.clone(), &cfg, 0);
            assert_eq!(it.next().unwrap().len(), 8);
            assert_eq!(it.next().unwrap().len(), 8);
            drop(it);
            // Dropped before taking anything.
            drop(epoch_batches(ds.clone(), t.clone(), &cfg, 1));
            // Taken by an adapter that stops early.
            assert_eq!(
                epoch_batches(ds.clone(), t.clone(), &cfg, 2)
                    .take(3)
                    .count(),
                3
            );
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("dropping the iterator hung or panicked");
}

#[test]
fn loader_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let ds = Arc::new(synthetic(4, 1, 2, 2, 2));
    let it = epoch_batches(
        ds,
        Arc::new(Transform::identity(1)),
        &LoaderConfig::default(),
        0,
    );
    assert_send(&it);
    let h = std::thread::spawn(move || it.count());
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
#[should_panic(expected = "channels")]
fn loader_rejects_channel_mismatch() {
    let ds = Arc::new(synthetic(4, 3, 2, 2, 2));
    let _ = epoch_batches(
        ds,
        Arc::new(Transform::identity(1)),
        &LoaderConfig::default(),
        0,
    );
}

// ---------------------------------------------------------------- real data

const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The CIFAR-10 JPEG archive: `$SPARSENET_DATA/cifar10-jpeg.tar.gz`, or
/// `shared/data/` beside the workspace (where the project's data lives on
/// the development machines), whichever exists.
fn cifar_archive() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("SPARSENET_DATA") {
        c.push(PathBuf::from(d).join("cifar10-jpeg.tar.gz"));
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    c.push(ws.join("shared/data/cifar10-jpeg.tar.gz"));
    c.push(ws.join("../shared/data/cifar10-jpeg.tar.gz"));
    c.into_iter().find(|p| p.is_file())
}

/// Fashion-MNIST as Debian's package installs it (`.ci/run` installs it).
#[test]
fn fashion_mnist_smoke() {
    let (train, test) = load_fashion_mnist(Path::new(FASHION_DIR)).unwrap_or_else(|e| {
        panic!("{e}\n(the tests need Fashion-MNIST: `bash .ci/run` installs it)")
    });
    assert_eq!(
        (
            train.len,
            test.len,
            train.channels,
            train.height,
            train.width
        ),
        (60000, 10000, 1, 28, 28)
    );
    assert_eq!(train.class_counts(), vec![6000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
}

/// The CIFAR-10 JPEG archive the project's machines carry: not part of a
/// clone, so not part of CI.
#[test]
#[ignore = "needs cifar10-jpeg.tar.gz in $SPARSENET_DATA or shared/data beside the workspace"]
fn cifar10_jpeg_smoke() {
    let a = cifar_archive().expect("cifar10-jpeg.tar.gz in $SPARSENET_DATA or shared/data");
    let test = read_image_folder_tar_gz(&a, "test").unwrap();
    assert_eq!(
        (test.len, test.channels, test.height, test.width),
        (10000, 3, 32, 32)
    );
    assert_eq!(test.class_names, CIFAR10_NAMES.to_vec());
    assert_eq!(test.class_counts(), vec![1000; 10]);
}

/// `cargo test --release -p sparsenet-runtime data::tests::timing -- --ignored --nocapture`
#[test]
#[ignore]
fn timing_real_datasets() {
    if Path::new(FASHION_DIR).is_dir() {
        let t0 = Instant::now();
        let (train, test) = load_fashion_mnist(Path::new(FASHION_DIR)).unwrap();
        eprintln!(
            "Fashion-MNIST: {} + {} images in {:.2} s",
            train.len,
            test.len,
            t0.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("note: {FASHION_DIR} absent");
    }
    let Some(a) = cifar_archive() else {
        eprintln!("note: CIFAR-10 archive absent");
        return;
    };
    let t0 = Instant::now();
    let (train, test) = load_cifar10(&a).unwrap();
    eprintln!(
        "CIFAR-10 tar.gz: {} + {} images in {:.2} s",
        train.len,
        test.len,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!((train.len, test.len), (50000, 10000));
    let t0 = Instant::now();
    let stats = Transform::from_dataset_stats(&train);
    eprintln!(
        "stats in {:.3} s: mean {:?} std {:?}",
        t0.elapsed().as_secs_f64(),
        stats.mean.iter().map(|m| m * 255.0).collect::<Vec<_>>(),
        stats.std
    );
    let ds = Arc::new(train);
    let t = Arc::new(stats.with_augmentation(4, true));
    for (workers, augment) in [(1, true), (2, true), (2, false)] {
        let cfg = LoaderConfig {
            batch_size: 64,
            shuffle: true,
            augment,
            workers,
            prefetch: 8,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut n = 0usize;
        let mut sum = 0f32;
        for b in epoch_batches(ds.clone(), t.clone(), &cfg, 0) {
            sum += b.images[[0, 0, 0, 0]];
            n += 1;
        }
        let s = t0.elapsed().as_secs_f64();
        eprintln!(
            "loader batch 64, augment {augment}, {workers} worker(s): {n} batches in {s:.2} s = {:.0} batches/s ({:.0} images/s) [{sum:.1}]",
            n as f64 / s,
            ds.len as f64 / s
        );
    }
}

#[test]
fn read_image_decodes_as_the_folder_reader_does() {
    let dir = tmp();
    let path = dir.path().join("one.png");
    write(&path, &png(rgb(5, 4, 7)));
    let image = read_image(&path).unwrap();
    assert_eq!((image.channels, image.height, image.width), (3, 4, 5));
    assert_eq!(image.pixels, planar(5, 4, 7));

    // Grayscale stays one channel.
    let gray = dir.path().join("gray.png");
    write(
        &gray,
        &encode(
            DynamicImage::ImageLuma8(GrayImage::from_fn(3, 2, |x, y| {
                image::Luma([(x + 10 * y) as u8])
            })),
            ImageFormat::Png,
        ),
    );
    let g = read_image(&gray).unwrap();
    assert_eq!((g.channels, g.height, g.width), (1, 2, 3));
    assert_eq!(g.pixels, vec![0, 1, 2, 10, 11, 12]);

    // Not an image by its extension, missing, or corrupt: errors naming the file.
    let txt = dir.path().join("notes.txt");
    write(&txt, b"hello");
    let e = read_image(&txt).unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("JPEG or PNG"), "{e}");
    let e = read_image(&dir.path().join("absent.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.png"), "{e}");
    let bad = dir.path().join("bad.png");
    write(&bad, b"\x89PNG\r\n\x1a\n truncated");
    let e = read_image(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.png"), "{e}");
}

/// Found by `tests/fuzz_readers.rs` (issue 19): a valid 6x5 PNG whose IHDR
/// claims 8000x8000 (CRC fixed) had the decoder allocate 192 MB for a
/// 100-byte file; a 16x12 JPEG whose SOF claims 8000x65535 made the decoder
/// allocate and fill 512 MiB for over 2 s. Both are now refused from the
/// header, naming the file, before anything is allocated.
#[test]
fn image_claiming_more_pixels_than_its_file_holds_is_refused() {
    let d = tmp();
    let mut png_file = png(rgb(6, 5, 1));
    png_file[16..20].copy_from_slice(&8000u32.to_be_bytes());
    png_file[20..24].copy_from_slice(&8000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png_file[12..29]);
    png_file[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let p = write(&d.path().join("huge.png"), &png_file);
    let e = read_image(&p).unwrap_err();
    check_msg(
        &e,
        &[
            "huge.png",
            "claims a 8000x8000 image",
            "192000000 bytes",
            "corrupt header",
        ],
    );

    let mut jpeg = encode(DynamicImage::ImageRgb8(rgb(16, 12, 2)), ImageFormat::Jpeg);
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&65535u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&8000u16.to_be_bytes());
    let p = write(&d.path().join("huge.jpg"), &jpeg);
    let t = std::time::Instant::now();
    let e = read_image(&p).unwrap_err();
    check_msg(
        &e,
        &[
            "huge.jpg",
            "claims a 8000x65535 image",
            "JPEG",
            "corrupt header",
        ],
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(1));

    // The bound is far from what real images need: a 256x256 noise PNG and
    // JPEG, and a uniform 1024x1024 PNG (deflate at its best), still load.
    let noise = RgbImage::from_fn(256, 256, |x, y| {
        let v = (x * 7919 + y * 104729) as u8;
        image::Rgb([v, v.wrapping_mul(3), v ^ 0x5a])
    });
    let p = write(
        &d.path().join("noise.jpg"),
        &encode(DynamicImage::ImageRgb8(noise.clone()), ImageFormat::Jpeg),
    );
    assert_eq!(read_image(&p).unwrap().width, 256);
    let p = write(&d.path().join("noise.png"), &png(noise));
    assert_eq!(read_image(&p).unwrap().height, 256);
    let flat = png(RgbImage::from_pixel(1024, 1024, image::Rgb([9, 9, 9])));
    let p = write(&d.path().join("flat.png"), &flat);
    assert_eq!(read_image(&p).unwrap().pixels.len(), 3 << 20);
    // A 1-bit 2048x2048 PNG (the decoder reports it as 8-bit): the bound
    // counts the bits as stored.
    let p = write(&d.path().join("one_bit.png"), &one_bit_png(2048, 2048));
    let img = read_image(&p).unwrap();
    assert_eq!((img.channels, img.width, img.height), (1, 2048, 2048));
    let flat = encode(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(1024, 1024, image::Rgb([9, 9, 9]))),
        ImageFormat::Jpeg,
    );
    let p = write(&d.path().join("flat.jpg"), &flat);
    assert_eq!(read_image(&p).unwrap().pixels.len(), 3 << 20);
}

/// A white 1-bit greyscale PNG, deflated at the best level.
fn one_bit_png(w: u32, h: u32) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, ty: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(ty);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&out[start..]);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]);
    let row = 1 + (w as usize).div_ceil(8);
    let mut raw = vec![0xffu8; row * h as usize];
    for r in 0..h as usize {
        raw[r * row] = 0; // filter: none
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&raw).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn resized_images_keep_their_channels_and_average_when_shrinking() {
    // Channel 0 uniform 100, channel 1 a 1-pixel checkerboard of 0 and 200.
    let (h, w) = (8, 12);
    let mut pixels = vec![100u8; h * w];
    pixels.extend((0..h * w).map(|i| if (i / w + i % w) % 2 == 0 { 0 } else { 200 }));
    let img = Image {
        channels: 2,
        height: h,
        width: w,
        pixels,
    };
    assert_eq!(img.resized(h, w), img, "the same size is the same image");
    let small = img.resized(4, 6);
    assert_eq!((small.channels, small.height, small.width), (2, 4, 6));
    assert_eq!(small.pixels.len(), 2 * 4 * 6);
    assert!(
        small.pixels[..24].iter().all(|&v| v == 100),
        "{:?}",
        &small.pixels[..24]
    );
    // The checkerboard's mean, not one of its samples: every source pixel counts.
    assert!(
        small.pixels[24..].iter().all(|&v| (90..=110).contains(&v)),
        "{:?}",
        &small.pixels[24..]
    );
    let big = img.resized(16, 3);
    assert_eq!(
        (big.height, big.width, big.pixels.len()),
        (16, 3, 2 * 16 * 3)
    );
}
