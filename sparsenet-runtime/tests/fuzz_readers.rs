//! Fuzz tests of every reader of outside bytes (issue 19), on stable Rust.
//!
//! Each test builds small valid files in memory (IDX plain and gzip, CIFAR
//! binary batches, PNG and JPEG images, tar and tar.gz archives of image
//! folders and of CIFAR batches, safetensors weights, a checkpoint written by
//! `save_checkpoint`, a metrics CSV written by `MetricsLog`), mutates them
//! deterministically (seeded ChaCha: bit flips, byte overwrites, truncations
//! at random and at structural boundaries, length and size fields set to
//! extremes, duplicated, reordered and deleted parts, appended garbage) and
//! runs the reader on each case in its own thread under `catch_unwind` and a
//! time bound. A case passes when the reader returns `Ok` or an error whose
//! message names the file; a panic, a case over the time bound, or an error
//! not naming the file fails the test, naming the reader, the mutation and
//! the case's seed.
//!
//! * `SPARSENET_FUZZ_CASES=N`: N cases per reader instead of the default
//!   (sized so that the whole file runs in well under a minute in release).
//! * `SPARSENET_FUZZ_SEED=S`: another base seed (default 0).
//! * `SPARSENET_FUZZ_REPLAY=SEED`: run only the case with that seed (as
//!   printed by a failure), in every test.

use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use sparsenet_runtime::data::{
    load_cifar10, load_cifar100, load_fashion_mnist, read_cifar_bin, read_idx, read_image,
    read_image_folder, read_image_folder_tar_gz, CifarKind,
};
use sparsenet_runtime::train::{
    load_checkpoint_for, read_checkpoint_progress, save_checkpoint, EpochRecord, MetricsLog,
    TrainProgress,
};
use sparsenet_runtime::weights::{load_weights, weights_from_bytes, weights_to_bytes};
use sparsenet_runtime::{Store, TensorSpec};

/// The most one case may take.
const TIME_LIMIT: Duration = Duration::from_secs(2);

/// The largest single allocation one case may make on its thread. The valid
/// inputs are a few KiB; a reader that believes a corrupt size field would
/// ask for gigabytes.
const ALLOC_LIMIT: usize = 64 << 20;

/// Records, per thread, the largest single allocation since the last reset:
/// the allocation bound of each case (its own thread; allocations on rayon's
/// threads, which decode image folders in parallel, are not seen).
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Probe;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| {
            if size > l.get() {
                l.set(size)
            }
        });
    }

    /// Resets this thread's record.
    pub fn reset() {
        let _ = LARGEST.try_with(|l| l.set(0));
    }

    /// The largest allocation of this thread since `reset`.
    pub fn largest() -> usize {
        LARGEST.try_with(|l| l.get()).unwrap_or(0)
    }

    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc(layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            System.alloc_zeroed(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            System.realloc(ptr, layout, new_size)
        }
    }
}

#[global_allocator]
static PROBE: alloc_probe::Probe = alloc_probe::Probe;

// ---------------------------------------------------------------------------
// The shared mutation module

mod mutate {
    use super::*;

    /// A fixed-width integer field of a format.
    #[derive(Clone, Debug)]
    pub struct Field {
        pub name: String,
        pub at: usize,
        pub width: usize,
        pub big_endian: bool,
    }

    impl Field {
        pub fn be(name: impl Into<String>, at: usize, width: usize) -> Field {
            Field {
                name: name.into(),
                at,
                width,
                big_endian: true,
            }
        }
        pub fn le(name: impl Into<String>, at: usize, width: usize) -> Field {
            Field {
                name: name.into(),
                at,
                width,
                big_endian: false,
            }
        }
    }

    /// What a mutator knows of a file's structure.
    #[derive(Clone, Debug, Default)]
    pub struct Layout {
        /// Offsets where a structure begins or ends (truncate / insert there).
        pub boundaries: Vec<usize>,
        /// Length, size, count and dimension fields.
        pub fields: Vec<Field>,
        /// Disjoint, ordered parts (records, chunks, entries, segments) that
        /// can be duplicated, swapped or deleted.
        pub parts: Vec<Range<usize>>,
    }

    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, b'0', b'9'];

    /// The extreme values a `width`-byte field is set to: 0, 1, the largest
    /// unsigned (also -1 as signed), the largest and smallest signed,
    /// u32::MAX in a wider field, and the original value +-1 and doubled.
    fn extremes(width: usize, orig: u64) -> Vec<(String, u64)> {
        let bits = (width * 8) as u32;
        let max = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let mut v = vec![
            ("0".to_string(), 0),
            ("1".to_string(), 1),
            ("max (or -1 signed)".to_string(), max),
            ("max-1".to_string(), max - 1),
            ("signed max".to_string(), max >> 1),
            ("signed min".to_string(), (max >> 1) + 1),
            ("orig+1".to_string(), orig.wrapping_add(1) & max),
            ("orig-1".to_string(), orig.wrapping_sub(1) & max),
            ("orig*2".to_string(), orig.wrapping_mul(2) & max),
        ];
        if width > 4 {
            v.push(("u32::MAX".to_string(), u32::MAX as u64));
        }
        v
    }

    fn read_field(b: &[u8], f: &Field) -> u64 {
        let mut v = 0u64;
        for i in 0..f.width {
            let byte = b[f.at + if f.big_endian { i } else { f.width - 1 - i }] as u64;
            v = (v << 8) | byte;
        }
        v
    }

    fn write_field(b: &mut [u8], f: &Field, v: u64) {
        for i in 0..f.width {
            let byte = (v >> (8 * (f.width - 1 - i))) as u8;
            b[f.at + if f.big_endian { i } else { f.width - 1 - i }] = byte;
        }
    }

    fn pick<T: Clone>(rng: &mut ChaCha8Rng, v: &[T]) -> T {
        v[rng.gen_range(0..v.len())].clone()
    }

    fn garbage(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.gen()).collect()
    }

    /// One random mutation of `b`, described.
    fn once(b: &mut Vec<u8>, layout: &Layout, rng: &mut ChaCha8Rng) -> String {
        let len = b.len();
        loop {
            match rng.gen_range(0..12) {
                0 if len > 0 => {
                    let k = rng.gen_range(1..=8);
                    let mut at = Vec::new();
                    for _ in 0..k {
                        let i = rng.gen_range(0..len);
                        let bit = rng.gen_range(0..8);
                        b[i] ^= 1 << bit;
                        at.push(format!("{i}.{bit}"));
                    }
                    return format!("bit flips at {}", at.join(","));
                }
                1 if len > 0 => {
                    let k = rng.gen_range(1..=8);
                    let mut at = Vec::new();
                    for _ in 0..k {
                        let i = rng.gen_range(0..len);
                        let v = if rng.gen_bool(0.5) {
                            pick(rng, &INTERESTING)
                        } else {
                            rng.gen()
                        };
                        b[i] = v;
                        at.push(format!("{i}=0x{v:02x}"));
                    }
                    return format!("byte overwrites {}", at.join(","));
                }
                2 if len > 0 => {
                    let n = rng.gen_range(0..len);
                    b.truncate(n);
                    return format!("truncated at random offset {n}");
                }
                3 if !layout.boundaries.is_empty() => {
                    let n = pick(rng, &layout.boundaries);
                    let n = (n as i64 + rng.gen_range(-1..=1)).clamp(0, len as i64) as usize;
                    b.truncate(n);
                    return format!("truncated at boundary {n}");
                }
                4 | 5 if !layout.fields.is_empty() => {
                    let f = pick(rng, &layout.fields);
                    if f.at + f.width > len {
                        continue;
                    }
                    let orig = read_field(b, &f);
                    let (what, v) = pick(rng, &extremes(f.width, orig));
                    write_field(b, &f, v);
                    return format!(
                        "field {} (at {}, {} bytes) {orig} -> {what} = {v}",
                        f.name, f.at, f.width
                    );
                }
                6 if !layout.parts.is_empty() => {
                    let p = pick(rng, &layout.parts);
                    if p.end > len {
                        continue;
                    }
                    let copy = b[p.clone()].to_vec();
                    b.splice(p.end..p.end, copy);
                    return format!("duplicated part {p:?}");
                }
                7 if layout.parts.len() >= 2 => {
                    let i = rng.gen_range(0..layout.parts.len());
                    let j = rng.gen_range(0..layout.parts.len());
                    let (i, j) = (i.min(j), i.max(j));
                    let (p, q) = (layout.parts[i].clone(), layout.parts[j].clone());
                    if i == j || q.end > len || p.end > q.start {
                        continue;
                    }
                    let mut out = b[..p.start].to_vec();
                    out.extend_from_slice(&b[q.clone()]);
                    out.extend_from_slice(&b[p.end..q.start]);
                    out.extend_from_slice(&b[p.clone()]);
                    out.extend_from_slice(&b[q.end..]);
                    *b = out;
                    return format!("swapped parts {p:?} and {q:?}");
                }
                8 if !layout.parts.is_empty() => {
                    let p = pick(rng, &layout.parts);
                    if p.end > len {
                        continue;
                    }
                    b.drain(p.clone());
                    return format!("deleted part {p:?}");
                }
                9 => {
                    let what = match rng.gen_range(0..4) {
                        0 => {
                            let n = rng.gen_range(1..600);
                            b.extend(garbage(rng, n));
                            format!("{n} random bytes")
                        }
                        1 => {
                            let n = rng.gen_range(1..2000);
                            b.extend(std::iter::repeat(0).take(n));
                            format!("{n} zero bytes")
                        }
                        2 => {
                            let copy = b.clone();
                            b.extend(copy);
                            "a copy of the file".to_string()
                        }
                        _ => {
                            b.push(rng.gen());
                            "one byte".to_string()
                        }
                    };
                    return format!("appended {what}");
                }
                10 => {
                    let at = if !layout.boundaries.is_empty() && rng.gen_bool(0.5) {
                        pick(rng, &layout.boundaries).min(len)
                    } else {
                        rng.gen_range(0..=len)
                    };
                    let n = rng.gen_range(1..64);
                    let g = garbage(rng, n);
                    b.splice(at..at, g);
                    return format!("inserted {n} random bytes at {at}");
                }
                11 if len > 0 => {
                    let from = rng.gen_range(0..len);
                    let n = rng.gen_range(1..=(len - from).min(256));
                    let to = rng.gen_range(0..len);
                    let chunk = b[from..from + n].to_vec();
                    let end = (to + n).min(len);
                    b[to..end].copy_from_slice(&chunk[..end - to]);
                    return format!("copied {n} bytes from {from} over {to}");
                }
                _ => continue,
            }
        }
    }

    /// One to three stacked random mutations of `base` (the first one uses
    /// the layout as it is; later ones may find it stale, which is fine).
    pub fn mutate(base: &[u8], layout: &Layout, rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
        let mut b = base.to_vec();
        let n = match rng.gen_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let what: Vec<String> = (0..n).map(|_| once(&mut b, layout, rng)).collect();
        (b, what.join("; "))
    }

    /// Gzip-compresses `b`.
    pub fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// The layout of a gzip member (one, as `gzip` writes it).
    pub fn gzip_layout(gz: &[u8]) -> Layout {
        let n = gz.len();
        Layout {
            boundaries: vec![0, 2, 3, 10, n - 8, n - 4, n],
            fields: vec![
                Field::le("gzip flags", 3, 1),
                Field::le("gzip method", 2, 1),
                Field::le("gzip mtime", 4, 4),
                Field::le("gzip CRC-32", n - 8, 4),
                Field::le("gzip ISIZE", n - 4, 4),
            ],
            parts: vec![10..n - 8],
        }
    }

    /// Either mutates the plain bytes then compresses them, or compresses
    /// then mutates the gzip stream.
    pub fn mutate_gz(plain: &[u8], layout: &Layout, rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
        if rng.gen_bool(0.5) {
            let (b, what) = mutate(plain, layout, rng);
            (gzip(&b), format!("{what}, then gzip"))
        } else {
            let gz = gzip(plain);
            let (b, what) = mutate(&gz, &gzip_layout(&gz), rng);
            (b, format!("gzip, then {what}"))
        }
    }
}

use mutate::{gzip, mutate, mutate_gz, Field, Layout};

// ---------------------------------------------------------------------------
// The runner

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// One prepared case: what was done to the input, and the call of the reader,
/// which returns `Ok(())`, or the error message (that must contain `names`).
struct Case {
    what: String,
    names: Option<String>,
    call: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Runs `default_cases` cases (or `SPARSENET_FUZZ_CASES`) of `reader`;
/// `make` prepares the case of a seed (writing files into `dir`).
fn fuzz(reader: &str, default_cases: u64, mut make: impl FnMut(&mut ChaCha8Rng, &Path) -> Case) {
    let dir = tempfile::tempdir().unwrap();
    let cases = env_u64("SPARSENET_FUZZ_CASES").unwrap_or(default_cases);
    let base = env_u64("SPARSENET_FUZZ_SEED").unwrap_or(0);
    let reader_id = reader.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    });
    let seeds: Vec<u64> = match env_u64("SPARSENET_FUZZ_REPLAY") {
        Some(s) => vec![s],
        None => (0..cases)
            .map(|i| base.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ reader_id.rotate_left(17) ^ i)
            .collect(),
    };
    let start = Instant::now();
    let (mut ok, mut err, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let mut largest = (0usize, 0u64);
    let mut failures: Vec<String> = Vec::new();
    for (i, &seed) in seeds.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let case_dir = dir.path().join(format!("c{}", i % 2));
        let _ = std::fs::remove_dir_all(&case_dir);
        std::fs::create_dir_all(&case_dir).unwrap();
        let Case { what, names, call } = make(&mut rng, &case_dir);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            alloc_probe::reset();
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(call));
            let elapsed = t.elapsed();
            let largest = alloc_probe::largest();
            let _ = tx.send((r.map_err(|p| panic_message(&*p)), elapsed, largest));
        });
        let fail = |why: String| format!("reader {reader}, mutation [{what}], seed {seed}: {why}");
        match rx.recv_timeout(TIME_LIMIT) {
            Err(_) => {
                failures.push(fail(format!("did not finish within {TIME_LIMIT:?}")));
                break; // the case's thread still runs: stop here
            }
            Ok((Err(p), _, _)) => failures.push(fail(format!("PANICKED: {p}"))),
            Ok((Ok(r), t, bytes)) => {
                slowest = slowest.max(t);
                if bytes > largest.0 {
                    largest = (bytes, seed);
                }
                if t > TIME_LIMIT {
                    failures.push(fail(format!("took {t:?}")));
                }
                if bytes > ALLOC_LIMIT {
                    failures.push(fail(format!(
                        "allocated {bytes} bytes at once (limit {ALLOC_LIMIT})"
                    )));
                }
                match r {
                    Ok(()) => ok += 1,
                    Err(msg) => {
                        err += 1;
                        if let Some(n) = &names {
                            if !msg.contains(n.as_str()) {
                                failures.push(fail(format!(
                                    "the error does not name the file `{n}`: {msg}"
                                )));
                            }
                        }
                    }
                }
            }
        }
        if failures.len() >= 10 {
            break;
        }
    }
    eprintln!(
        "fuzz {reader}: {} cases in {:.2?} ({ok} Ok, {err} errors, slowest {slowest:.2?}, \
         largest allocation {} KiB (seed {})), {} failures",
        seeds.len(),
        start.elapsed(),
        largest.0 >> 10,
        largest.1,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failing case(s) (rerun one with SPARSENET_FUZZ_REPLAY=<seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// Valid files

/// An IDX file of unsigned bytes with the given dimensions and payload.
fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn idx_layout(dims: usize, record: usize, len: usize) -> Layout {
    let header = 4 + 4 * dims;
    let mut l = Layout {
        boundaries: (0..=header).step_by(4).collect(),
        fields: vec![Field::be("magic", 0, 4)],
        parts: Vec::new(),
    };
    for d in 0..dims {
        l.fields.push(Field::be(format!("dim {d}"), 4 + 4 * d, 4));
    }
    let mut at = header;
    while at + record <= len {
        l.boundaries.push(at + record);
        l.parts.push(at..at + record);
        at += record;
    }
    l
}

fn idx_pair() -> (Vec<u8>, Layout, Vec<u8>, Layout) {
    let (n, h, w) = (6u32, 5u32, 4u32);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 7) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let images = idx(0x803, &[n, h, w], &pixels);
    let labels = idx(0x801, &[n], &labels);
    let il = idx_layout(3, (h * w) as usize, images.len());
    let ll = idx_layout(1, 1, labels.len());
    (images, il, labels, ll)
}

fn cifar_batch(kind: CifarKind, records: usize, first_label: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for r in 0..records {
        let label = ((first_label + r) % kind.classes()) as u8;
        match kind {
            CifarKind::Cifar10 => b.push(label),
            CifarKind::Cifar100 { .. } => b.extend_from_slice(&[label % 20, label]),
        }
        b.extend((0..3072).map(|i| (i * 31 + r) as u8));
    }
    b
}

fn cifar_layout(kind: CifarKind, len: usize) -> Layout {
    let rec = kind.record_len();
    let mut l = Layout::default();
    let mut at = 0;
    while at + rec <= len {
        l.boundaries.push(at);
        l.parts.push(at..at + rec);
        for k in 0..rec - 3072 {
            l.fields.push(Field::be(
                format!("label byte {k} of record {}", at / rec),
                at + k,
                1,
            ));
        }
        at += rec;
    }
    l.boundaries.push(len);
    l
}

fn png_bytes(variant: u64) -> Vec<u8> {
    let img = match variant % 3 {
        0 => image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(6, 5, |x, y| {
            image::Rgb([(x * 40) as u8, (y * 50) as u8, 7])
        })),
        1 => image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(6, 5, |x, y| {
            image::Luma([(x * 9 + y) as u8])
        })),
        _ => image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(6, 5, |x, y| {
            image::Rgba([(x * 40) as u8, (y * 50) as u8, 7, 200])
        })),
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn jpeg_bytes(variant: u64) -> Vec<u8> {
    let img = match variant % 2 {
        0 => image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 15) as u8, (y * 20) as u8, 90])
        })),
        _ => image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(16, 12, |x, y| {
            image::Luma([(x * 9 + y) as u8])
        })),
    };
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    buf.into_inner()
}

/// PNG chunks: boundaries, length fields, IHDR fields, chunks as parts.
fn png_layout(b: &[u8]) -> Layout {
    let mut l = Layout {
        boundaries: vec![0, 8],
        ..Layout::default()
    };
    let mut at = 8;
    while at + 12 <= b.len() {
        let n = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let ty = String::from_utf8_lossy(&b[at + 4..at + 8]).into_owned();
        l.fields.push(Field::be(format!("{ty} length"), at, 4));
        if ty == "IHDR" {
            l.fields.push(Field::be("IHDR width", at + 8, 4));
            l.fields.push(Field::be("IHDR height", at + 12, 4));
            for (k, name) in [
                "bit depth",
                "colour type",
                "compression",
                "filter",
                "interlace",
            ]
            .iter()
            .enumerate()
            {
                l.fields
                    .push(Field::be(format!("IHDR {name}"), at + 16 + k, 1));
            }
        }
        let end = at + 12 + n;
        if end > b.len() {
            break;
        }
        l.boundaries.extend([at + 8, at + 8 + n, end]);
        l.parts.push(at..end);
        at = end;
    }
    l
}

/// Recomputes the CRC of every chunk whose length fits (so that a mutated
/// chunk reaches the decoder's checks beyond the CRC).
fn png_fix_crcs(b: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= b.len() {
        let n = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 12).checked_add(n).filter(|&e| e <= b.len()) else {
            break;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&b[at + 4..at + 8 + n]);
        b[at + 8 + n..end].copy_from_slice(&crc.sum().to_be_bytes());
        at = end;
    }
}

/// JPEG segments up to the scan: boundaries, length fields, SOF fields,
/// segments (and the scan) as parts.
fn jpeg_layout(b: &[u8]) -> Layout {
    let mut l = Layout {
        boundaries: vec![0, 2, b.len().saturating_sub(2), b.len()],
        ..Layout::default()
    };
    let mut at = 2;
    while at + 4 <= b.len() && b[at] == 0xff {
        let marker = b[at + 1];
        let n = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        l.fields.push(Field::be(
            format!("segment FF{marker:02X} length"),
            at + 2,
            2,
        ));
        if matches!(marker, 0xc0..=0xc2) {
            l.fields.push(Field::be("SOF precision", at + 4, 1));
            l.fields.push(Field::be("SOF height", at + 5, 2));
            l.fields.push(Field::be("SOF width", at + 7, 2));
            l.fields.push(Field::be("SOF components", at + 9, 1));
            for c in 0..b[at + 9] as usize {
                l.fields
                    .push(Field::be(format!("SOF sampling {c}"), at + 11 + 3 * c, 1));
                l.fields.push(Field::be(
                    format!("SOF quant table {c}"),
                    at + 12 + 3 * c,
                    1,
                ));
            }
        }
        if marker == 0xda {
            l.fields.push(Field::be("SOS components", at + 4, 1));
        }
        let end = (at + 2 + n).min(b.len());
        l.boundaries.extend([at, at + 4, end]);
        l.parts.push(at..end);
        if marker == 0xda {
            l.parts.push(end..b.len() - 2);
            break;
        }
        at = end;
    }
    l
}

/// Sets the width and height of a PNG (IHDR, CRC fixed) or a JPEG (SOF).
fn set_image_dims(b: &mut [u8], w: u32, h: u32) {
    if b.starts_with(&[0x89, b'P']) {
        b[16..20].copy_from_slice(&w.to_be_bytes());
        b[20..24].copy_from_slice(&h.to_be_bytes());
        png_fix_crcs(b);
    } else {
        let l = jpeg_layout(b);
        for f in &l.fields {
            let v = match f.name.as_str() {
                "SOF height" => h.min(65535) as u16,
                "SOF width" => w.min(65535) as u16,
                _ => continue,
            };
            b[f.at..f.at + 2].copy_from_slice(&v.to_be_bytes());
        }
    }
}

/// Mutates an image file (PNG or JPEG by its content): its bytes, or both
/// of its dimensions set to extremes (a small file claiming a huge image).
fn mutate_image(base: &[u8], rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    if rng.gen_range(0..8) == 0 {
        let dims = [0, 1, 255, 4096, 8000, 16384, 65535, 1 << 20, u32::MAX];
        let (w, h) = (
            dims[rng.gen_range(0..dims.len())],
            dims[rng.gen_range(0..dims.len())],
        );
        let mut b = base.to_vec();
        set_image_dims(&mut b, w, h);
        return (b, format!("dimensions set to {w}x{h}"));
    }
    if base.starts_with(&[0x89, b'P']) {
        let (mut b, what) = mutate(base, &png_layout(base), rng);
        if rng.gen_bool(0.7) {
            png_fix_crcs(&mut b);
            (b, format!("{what}; CRCs fixed"))
        } else {
            (b, what)
        }
    } else {
        mutate(base, &jpeg_layout(base), rng)
    }
}

// --- tar ---

/// One tar entry, written by `tar_bytes` with full control of the header.
#[derive(Clone)]
struct TarEntry {
    name: Vec<u8>,
    kind: u8,
    data: Vec<u8>,
    /// The size field as written (None: the data's length in octal).
    size_field: Option<[u8; 12]>,
}

fn file_entry(name: &str, data: Vec<u8>) -> TarEntry {
    TarEntry {
        name: name.as_bytes().to_vec(),
        kind: b'0',
        data,
        size_field: None,
    }
}

fn dir_entry(name: &str) -> TarEntry {
    TarEntry {
        name: name.as_bytes().to_vec(),
        kind: b'5',
        data: Vec::new(),
        size_field: None,
    }
}

fn octal(v: u64, width: usize) -> Vec<u8> {
    let mut s = format!("{v:0w$o}", w = width - 1).into_bytes();
    s.push(0);
    s
}

/// A ustar archive of `entries`; `fix_cksum: false` leaves each checksum
/// as computed before the size field was overridden.
fn tar_bytes(entries: &[TarEntry], fix_cksum: bool) -> (Vec<u8>, Layout) {
    let mut out = Vec::new();
    let mut l = Layout::default();
    for e in entries {
        let start = out.len();
        let mut h = [0u8; 512];
        let n = e.name.len().min(100);
        h[..n].copy_from_slice(&e.name[..n]);
        h[100..108].copy_from_slice(&octal(0o644, 8));
        h[108..116].copy_from_slice(&octal(0, 8));
        h[116..124].copy_from_slice(&octal(0, 8));
        h[124..136].copy_from_slice(&octal(e.data.len() as u64, 12));
        h[136..148].copy_from_slice(&octal(0, 12));
        h[156] = e.kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let cksum = |h: &mut [u8; 512]| {
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| b as u32).sum();
            let mut c = format!("{sum:06o}").into_bytes();
            c.extend_from_slice(&[0, b' ']);
            h[148..156].copy_from_slice(&c);
        };
        cksum(&mut h);
        if let Some(s) = e.size_field {
            h[124..136].copy_from_slice(&s);
            if fix_cksum {
                cksum(&mut h);
            }
        }
        out.extend_from_slice(&h);
        l.fields
            .push(Field::be("tar size (octal text)", start + 124, 12));
        l.fields
            .push(Field::be("tar size low bytes", start + 132, 4));
        l.fields.push(Field::be("tar type flag", start + 156, 1));
        l.fields.push(Field::be("tar checksum", start + 148, 8));
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        l.boundaries
            .extend([start, start + 512, start + 512 + e.data.len(), out.len()]);
        l.parts.push(start..out.len());
    }
    out.extend_from_slice(&[0u8; 1024]);
    l.boundaries.push(out.len());
    (out, l)
}

/// Extreme values of a tar size field: octal text and GNU base-256.
fn tar_size_extreme(rng: &mut ChaCha8Rng) -> ([u8; 12], String) {
    let mut f = [0u8; 12];
    let what = match rng.gen_range(0..8) {
        0 => {
            f.copy_from_slice(&octal(0, 12));
            "0"
        }
        1 => {
            f.copy_from_slice(&octal(1, 12));
            "1"
        }
        2 => {
            f.copy_from_slice(b"77777777777\0");
            "octal 8 GiB - 1"
        }
        3 => {
            f.copy_from_slice(&octal(u32::MAX as u64, 12));
            "u32::MAX"
        }
        4 => {
            f[0] = 0x80;
            f[4..].copy_from_slice(&u64::MAX.to_be_bytes());
            "base-256 u64::MAX"
        }
        5 => {
            f = [0xff; 12];
            "base-256 -1"
        }
        6 => {
            f[0] = 0x80;
            f[4..].copy_from_slice(&(1u64 << 62).to_be_bytes());
            "base-256 2^62"
        }
        _ => {
            f.copy_from_slice(b"zz-garbage\0 ");
            "not a number"
        }
    };
    (f, what.to_string())
}

/// Mutates an archive: its entry list (duplicated, reordered, deleted,
/// renamed, retyped entries, size fields set to extremes, entry contents
/// mutated), or its bytes; then gzips it when `gz` (the gzip stream itself
/// mutated too, sometimes).
fn mutate_archive(
    entries: &[TarEntry],
    gz: bool,
    content: &dyn Fn(&[u8], &mut ChaCha8Rng) -> (Vec<u8>, String),
    rng: &mut ChaCha8Rng,
) -> (Vec<u8>, String) {
    let mut es = entries.to_vec();
    let mut what = Vec::new();
    let mut fix = true;
    let raw_level = rng.gen_range(0..3) == 0;
    if !raw_level {
        for _ in 0..rng.gen_range(1..=2) {
            let i = rng.gen_range(0..es.len());
            match rng.gen_range(0..8) {
                0 => {
                    let e = es[i].clone();
                    let j = rng.gen_range(0..=es.len());
                    es.insert(j, e);
                    what.push(format!("entry {i} duplicated at {j}"));
                }
                1 => {
                    let j = rng.gen_range(0..es.len());
                    es.swap(i, j);
                    what.push(format!("entries {i} and {j} swapped"));
                }
                2 if es.len() > 1 => {
                    es.remove(i);
                    what.push(format!("entry {i} deleted"));
                }
                3 => {
                    let names: [&[u8]; 12] = [
                        b"",
                        b"/",
                        b"..",
                        b"train/../x.png",
                        b"train/cat/.hidden.png",
                        b"train/cat/sub/y.png",
                        b"train/cat",
                        b"train//cat///z.png",
                        b"./train/./dog/w.jpg",
                        b"train/cat/\xff\xfe.png",
                        b"train/cat/no_extension",
                        b"top/train/cat/q.PNG",
                    ];
                    let n = names[rng.gen_range(0..names.len())];
                    what.push(format!(
                        "entry {i} renamed to {:?}",
                        String::from_utf8_lossy(n)
                    ));
                    es[i].name = n.to_vec();
                }
                4 => {
                    let kinds = [
                        b'1', b'2', b'3', b'5', b'6', b'7', b'x', b'g', b'L', b'K', b'Z', 0,
                    ];
                    let k = kinds[rng.gen_range(0..kinds.len())];
                    es[i].kind = k;
                    what.push(format!("entry {i} type flag set to 0x{k:02x}"));
                }
                5 | 6 => {
                    let (d, w) = content(&es[i].data, rng);
                    es[i].data = d;
                    what.push(format!("entry {i} content: {w}"));
                }
                _ => {
                    let (f, w) = tar_size_extreme(rng);
                    es[i].size_field = Some(f);
                    fix = rng.gen_bool(0.8);
                    what.push(format!(
                        "entry {i} size field set to {w} (checksum {})",
                        if fix { "fixed" } else { "stale" }
                    ));
                }
            }
        }
    }
    let (mut tar, layout) = tar_bytes(&es, fix);
    if raw_level {
        let (b, w) = mutate(&tar, &layout, rng);
        tar = b;
        what.push(format!("tar bytes: {w}"));
    }
    if !gz {
        return (tar, what.join("; "));
    }
    if rng.gen_range(0..4) == 0 {
        let z = gzip(&tar);
        let (b, w) = mutate(&z, &mutate::gzip_layout(&z), rng);
        what.push(format!("gzip, then {w}"));
        (b, what.join("; "))
    } else {
        (gzip(&tar), what.join("; "))
    }
}

fn image_folder_entries() -> Vec<TarEntry> {
    vec![
        dir_entry("train/"),
        dir_entry("train/cat/"),
        file_entry("train/cat/a.png", png_bytes(0)),
        file_entry("train/cat/b.png", png_bytes(0)),
        dir_entry("train/dog/"),
        file_entry("train/dog/c.png", png_bytes(0)),
        file_entry("train/dog/d.png", png_bytes(0)),
        dir_entry("test/"),
        file_entry("test/cat/e.png", png_bytes(0)),
        file_entry("test/dog/f.png", png_bytes(0)),
        file_entry("train/README", b"readme".to_vec()),
    ]
}

// --- safetensors ---

const SPECS: &[TensorSpec] = &[
    TensorSpec {
        name: "conv.weight",
        shape: &[2, 1, 3, 3],
        store: Store::Param,
        offset: 0,
    },
    TensorSpec {
        name: "bn.weight",
        shape: &[2],
        store: Store::Param,
        offset: 18,
    },
    TensorSpec {
        name: "fc.bias",
        shape: &[],
        store: Store::Param,
        offset: 20,
    },
    TensorSpec {
        name: "bn.running_mean",
        shape: &[2],
        store: Store::State,
        offset: 0,
    },
    TensorSpec {
        name: "bn.running_var",
        shape: &[2],
        store: Store::State,
        offset: 2,
    },
];
const N_PARAMS: usize = 21;
const N_STATE: usize = 4;

fn params() -> (Vec<f32>, Vec<f32>) {
    (
        (0..N_PARAMS).map(|i| i as f32 * 0.5 - 3.0).collect(),
        vec![0.1, -0.2, 1.5, 2.5],
    )
}

/// A safetensors file split into its header entries (raw JSON text each)
/// and its data.
struct StFile {
    entries: Vec<(String, String)>,
    data: Vec<u8>,
}

fn st_split(b: &[u8]) -> StFile {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&b[8..8 + n]).unwrap();
    StFile {
        entries: header
            .into_iter()
            .map(|(k, v)| (k, serde_json::to_string(&v).unwrap()))
            .collect(),
        data: b[8 + n..].to_vec(),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Extreme JSON numbers (as text): sizes, offsets and negative values.
const JSON_NUMBERS: [&str; 14] = [
    "0",
    "1",
    "-1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "1e300",
    "1.5",
    "\"3\"",
    "null",
    "99999999999999999999999999999999999999",
];

/// Mutates a safetensors file at the header level: keys duplicated,
/// reordered, deleted, renamed; dtypes, shapes and data offsets set to
/// extremes; metadata values replaced; then the length prefix (right or
/// extreme) and the data (kept, truncated or extended).
fn mutate_st(base: &[u8], rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let mut f = st_split(base);
    let mut what = Vec::new();
    for _ in 0..rng.gen_range(1..=2) {
        let i = rng.gen_range(0..f.entries.len());
        let key = f.entries[i].0.clone();
        match rng.gen_range(0..9) {
            0 => {
                let mut e = f.entries[i].clone();
                if rng.gen_bool(0.5) {
                    // same key, another entry's value
                    e.1 = f.entries[rng.gen_range(0..f.entries.len())].1.clone();
                }
                let j = rng.gen_range(0..=f.entries.len());
                f.entries.insert(j, e);
                what.push(format!("key {key} duplicated at {j}"));
            }
            1 => {
                let j = rng.gen_range(0..f.entries.len());
                f.entries.swap(i, j);
                what.push(format!("keys {i} and {j} swapped"));
            }
            2 => {
                f.entries.remove(i);
                what.push(format!("key {key} deleted"));
                if f.entries.is_empty() {
                    break;
                }
            }
            3 => {
                let names = [
                    "",
                    "__metadata__",
                    "conv.weight",
                    "x",
                    "optimizer.velocity.fc.bias",
                    "\u{0}",
                ];
                let n = names[rng.gen_range(0..names.len())];
                f.entries[i].0 = n.to_string();
                what.push(format!("key {key} renamed to {n:?}"));
            }
            4 | 5 | 6 if key != "__metadata__" => {
                let v: serde_json::Value = serde_json::from_str(&f.entries[i].1).unwrap();
                let mut dtype = json_str(v["dtype"].as_str().unwrap_or("F32"));
                let mut shape: Vec<String> = v["shape"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default();
                let mut offs: Vec<String> = v["data_offsets"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default();
                let num = JSON_NUMBERS[rng.gen_range(0..JSON_NUMBERS.len())];
                match rng.gen_range(0..6) {
                    0 => {
                        let ds = [
                            "\"F16\"",
                            "\"BF16\"",
                            "\"F64\"",
                            "\"I64\"",
                            "\"U8\"",
                            "\"BOOL\"",
                            "\"F8_E4M3\"",
                            "\"XX\"",
                            "\"\"",
                            "5",
                            "null",
                        ];
                        dtype = ds[rng.gen_range(0..ds.len())].to_string();
                        what.push(format!("{key} dtype set to {dtype}"));
                    }
                    1 if !shape.is_empty() => {
                        let d = rng.gen_range(0..shape.len());
                        shape[d] = num.to_string();
                        what.push(format!("{key} shape[{d}] set to {num}"));
                    }
                    2 => {
                        let k = rng.gen_range(0..40);
                        shape = vec!["1".to_string(); k];
                        if rng.gen_bool(0.5) && k > 0 {
                            shape[0] = num.to_string();
                        }
                        what.push(format!("{key} shape set to [{}]", shape.join(",")));
                    }
                    3 if offs.len() == 2 => {
                        let d = rng.gen_range(0..2);
                        offs[d] = num.to_string();
                        what.push(format!("{key} data_offsets[{d}] set to {num}"));
                    }
                    4 if offs.len() == 2 => {
                        offs.swap(0, 1);
                        what.push(format!("{key} data_offsets reversed"));
                    }
                    _ => {
                        offs.truncate(rng.gen_range(0..2));
                        what.push(format!(
                            "{key} data_offsets cut to {} number(s)",
                            offs.len()
                        ));
                    }
                }
                f.entries[i].1 = format!(
                    "{{\"dtype\":{dtype},\"shape\":[{}],\"data_offsets\":[{}]}}",
                    shape.join(","),
                    offs.join(",")
                );
            }
            _ => {
                // metadata, or any entry's value, replaced
                let vals = [
                    "{}".to_string(),
                    "{\"format\":\"sparsenet-checkpoint\",\"format_version\":\"1\"}".to_string(),
                    "[]".to_string(),
                    "\"x\"".to_string(),
                    "{\"epoch\":5}".to_string(),
                    "{\"format\":\"sparsenet-checkpoint\",\"format_version\":\"1\",\"model\":\"m\",\"epoch\":\"-1\",\"step\":\"18446744073709551616\",\"seed\":\"\"}".to_string(),
                    JSON_NUMBERS[rng.gen_range(0..JSON_NUMBERS.len())].to_string(),
                ];
                let v = vals[rng.gen_range(0..vals.len())].clone();
                what.push(format!("value of {key} set to {v}"));
                f.entries[i].1 = v;
            }
        }
    }
    let mut header = String::from("{");
    for (k, (key, v)) in f.entries.iter().enumerate() {
        if k > 0 {
            header.push(',');
        }
        header.push_str(&json_str(key));
        header.push(':');
        header.push_str(v);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut len = header.len() as u64;
    if rng.gen_range(0..6) == 0 {
        let v = [
            0,
            1,
            2,
            u32::MAX as u64,
            u64::MAX,
            len - 1,
            len + 1,
            1 << 63,
        ];
        len = v[rng.gen_range(0..v.len())];
        what.push(format!("header length set to {len}"));
    }
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    let mut data = f.data;
    match rng.gen_range(0..6) {
        0 => {
            let n = rng.gen_range(0..=data.len());
            data.truncate(n);
            what.push(format!("data cut to {n} bytes"));
        }
        1 => {
            let n = rng.gen_range(1..64);
            data.extend(std::iter::repeat(0xab).take(n));
            what.push(format!("{n} bytes appended"));
        }
        _ => {}
    }
    out.extend_from_slice(&data);
    (out, what.join("; "))
}

fn st_layout(b: &[u8]) -> Layout {
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut l = Layout {
        boundaries: vec![0, 4, 8, 9, 8 + n - 1, 8 + n, b.len()],
        fields: vec![
            Field::le("header length", 0, 8),
            Field::le("header length low word", 0, 4),
        ],
        parts: Vec::new(),
    };
    // each f32 of the data is a part
    let mut at = 8 + n;
    while at + 4 <= b.len() {
        l.boundaries.push(at);
        l.parts.push(at..at + 4);
        at += 4;
    }
    l
}

/// Header-level or byte-level mutation of a safetensors file.
fn mutate_safetensors(base: &[u8], rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    if rng.gen_bool(0.5) {
        mutate_st(base, rng)
    } else {
        mutate(base, &st_layout(base), rng)
    }
}

// --- metrics CSV ---

fn metrics_csv() -> String {
    let mut log = MetricsLog::new();
    for e in 1..=4u64 {
        log.push(EpochRecord {
            epoch: e,
            step: e * 100,
            lr: 0.1 / e as f64,
            train_loss: 2.0 / e as f64,
            train_acc: 0.2 * e as f64,
            test_loss: 2.1 / e as f64,
            test_acc: 0.19 * e as f64,
            images_per_sec: 1234.5,
            elapsed_sec: 10.25 * e as f64,
        });
    }
    log.to_csv()
}

fn csv_layout(text: &str) -> Layout {
    let mut l = Layout::default();
    let mut start = 0;
    for (i, c) in text.bytes().enumerate() {
        if c == b',' {
            l.boundaries.push(i);
        }
        if c == b'\n' {
            l.boundaries.push(i + 1);
            l.parts.push(start..i + 1);
            start = i + 1;
        }
    }
    l
}

/// Text-level mutation: a field replaced by an extreme, fields added or
/// removed, a BOM, CRLF line ends.
fn mutate_csv_text(text: &str, rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = rng.gen_range(0..lines.len());
    let vals = [
        "",
        "-1",
        "-0",
        "18446744073709551615",
        "18446744073709551616",
        "NaN",
        "inf",
        "-inf",
        "1e999",
        "1e-999",
        "0x10",
        " 1 ",
        "1,2",
        "\u{feff}",
        "é",
        "\"1\"",
    ];
    let what = match rng.gen_range(0..4) {
        0 => {
            let mut fields: Vec<String> = lines[i].split(',').map(str::to_string).collect();
            let k = rng.gen_range(0..fields.len());
            let v = vals[rng.gen_range(0..vals.len())];
            fields[k] = v.to_string();
            lines[i] = fields.join(",");
            format!("line {i} field {k} set to {v:?}")
        }
        1 => {
            lines[i].push_str(",7");
            format!("line {i} got a 10th field")
        }
        2 => {
            lines[0] = format!("\u{feff}{}", lines[0]);
            "BOM before the header".to_string()
        }
        _ => {
            let joined = lines.join("\r\n");
            return (joined.into_bytes(), "CRLF line ends".to_string());
        }
    };
    let mut s = lines.join("\n");
    s.push('\n');
    (s.into_bytes(), what)
}

// ---------------------------------------------------------------------------
// The tests: one per reader

#[test]
fn fuzz_read_idx_plain() {
    let (images, il, labels, ll) = idx_pair();
    fuzz("read_idx (plain)", 15000, |rng, dir| {
        let (ip, lp) = (dir.join("images-idx3-ubyte"), dir.join("labels-idx1-ubyte"));
        let (what, named) = if rng.gen_bool(0.6) {
            let (b, w) = mutate(&images, &il, rng);
            write(&ip, &b);
            write(&lp, &labels);
            (format!("images: {w}"), name_of(&ip))
        } else {
            let (b, w) = mutate(&labels, &ll, rng);
            write(&ip, &images);
            write(&lp, &b);
            (format!("labels: {w}"), name_of(&lp))
        };
        Case {
            what,
            names: Some(named),
            call: Box::new(move || read_idx(&ip, &lp).map(drop).map_err(|e| e.to_string())),
        }
    });
}

#[test]
fn fuzz_read_idx_gzip() {
    let (images, il, labels, ll) = idx_pair();
    fuzz("read_idx (gzip)", 10000, |rng, dir| {
        let (ip, lp) = (
            dir.join("images-idx3-ubyte.gz"),
            dir.join("labels-idx1-ubyte.gz"),
        );
        let (what, named) = if rng.gen_bool(0.6) {
            let (b, w) = mutate_gz(&images, &il, rng);
            write(&ip, &b);
            write(&lp, &gzip(&labels));
            (format!("images: {w}"), name_of(&ip))
        } else {
            let (b, w) = mutate_gz(&labels, &ll, rng);
            write(&ip, &gzip(&images));
            write(&lp, &b);
            (format!("labels: {w}"), name_of(&lp))
        };
        Case {
            what,
            names: Some(named),
            call: Box::new(move || read_idx(&ip, &lp).map(drop).map_err(|e| e.to_string())),
        }
    });
}

#[test]
fn fuzz_load_fashion_mnist() {
    // The four standard files (2 classes each, as `idx_pair` has 3); one of
    // them mutated, gzipped or not; read through the named loader, which
    // also checks labels < 10 and that both splits agree.
    let (images, il, labels, ll) = idx_pair();
    fuzz("load_fashion_mnist", 6000, |rng, dir| {
        let gz = rng.gen_bool(0.5);
        let names = [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ];
        let victim = rng.gen_range(0..4);
        let mut what = String::new();
        for (i, n) in names.iter().enumerate() {
            let (base, layout) = if i % 2 == 0 {
                (&images, &il)
            } else {
                (&labels, &ll)
            };
            let path = dir.join(if gz { format!("{n}.gz") } else { n.to_string() });
            let bytes = if i != victim {
                if gz {
                    gzip(base)
                } else {
                    base.clone()
                }
            } else {
                let (b, w) = if gz {
                    mutate_gz(base, layout, rng)
                } else {
                    mutate(base, layout, rng)
                };
                what = format!("{}: {w}", name_of(&path));
                b
            };
            write(&path, &bytes);
        }
        let dir = dir.to_path_buf();
        Case {
            what,
            // errors name the file, or (splits that disagree) its folder
            names: Some(dir.display().to_string()),
            call: Box::new(move || {
                load_fashion_mnist(&dir)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    });
}

#[test]
fn fuzz_read_cifar_bin() {
    let kinds = [
        CifarKind::Cifar10,
        CifarKind::Cifar100 { fine: true },
        CifarKind::Cifar100 { fine: false },
    ];
    let bases: Vec<Vec<u8>> = kinds.iter().map(|&k| cifar_batch(k, 3, 4)).collect();
    fuzz("read_cifar_bin", 12000, |rng, dir| {
        let k = rng.gen_range(0..kinds.len());
        let kind = kinds[k];
        let (b, w) = mutate(&bases[k], &cifar_layout(kind, bases[k].len()), rng);
        let (good, bad) = (dir.join("data_batch_1.bin"), dir.join("data_batch_2.bin"));
        write(&good, &bases[k]);
        write(&bad, &b);
        let files = if rng.gen_bool(0.5) {
            vec![good, bad.clone()]
        } else {
            vec![bad.clone()]
        };
        Case {
            what: format!("{kind:?}: {w}"),
            names: Some(name_of(&bad)),
            call: Box::new(move || {
                read_cifar_bin(&files, kind)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    });
}

fn fuzz_image(reader: &str, cases: u64, bases: Vec<Vec<u8>>, ext: &'static [&'static str]) {
    fuzz(reader, cases, |rng, dir| {
        let v = rng.gen_range(0..bases.len());
        let (b, w) = mutate_image(&bases[v], rng);
        let p = dir.join(format!("img.{}", ext[rng.gen_range(0..ext.len())]));
        write(&p, &b);
        Case {
            what: format!("base image {v}: {w}"),
            names: Some(name_of(&p)),
            call: Box::new(move || read_image(&p).map(drop).map_err(|e| e.to_string())),
        }
    });
}

#[test]
fn fuzz_read_image_png() {
    fuzz_image(
        "read_image (PNG)",
        15000,
        (0..3).map(png_bytes).collect(),
        &["png", "PNG", "jpg"],
    );
}

#[test]
fn fuzz_read_image_jpeg() {
    fuzz_image(
        "read_image (JPEG)",
        10000,
        (0..2).map(jpeg_bytes).collect(),
        &["jpg", "jpeg", "png"],
    );
}

#[test]
fn fuzz_read_image_folder() {
    let png = png_bytes(0);
    let jpg = jpeg_bytes(0);
    fuzz("read_image_folder", 2500, |rng, dir| {
        let root = dir.join("train");
        for (class, files) in [("cat", ["a.png", "b.png"]), ("dog", ["c.png", "d.jpg"])] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for f in files {
                let base = if f.ends_with("png") { &png } else { &jpg };
                write(&root.join(class).join(f), base);
            }
        }
        // d.jpg is 16x12, the others 6x5: make it a PNG like them, or mutate it
        write(&root.join("dog").join("d.jpg"), &png);
        let (victim, base) = if rng.gen_bool(0.5) {
            ("b.png", &png)
        } else {
            ("d.jpg", if rng.gen_bool(0.5) { &png } else { &jpg })
        };
        let class = if victim == "b.png" { "cat" } else { "dog" };
        let (b, w) = mutate_image(base, rng);
        let p = root.join(class).join(victim);
        write(&p, &b);
        Case {
            what: format!("{class}/{victim}: {w}"),
            names: None,
            call: Box::new(move || {
                read_image_folder(&root)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    });
}

fn fuzz_tar_folder(reader: &str, cases: u64, gz: bool) {
    let entries = image_folder_entries();
    let content = |b: &[u8], rng: &mut ChaCha8Rng| {
        if b.starts_with(&[0x89, b'P']) {
            mutate_image(b, rng)
        } else {
            mutate(b, &Layout::default(), rng)
        }
    };
    fuzz(reader, cases, |rng, dir| {
        let (b, w) = mutate_archive(&entries, gz, &content, rng);
        let p = dir.join(if gz { "folders.tar.gz" } else { "folders.tar" });
        write(&p, &b);
        let split = if rng.gen_bool(0.8) { "train" } else { "test" };
        Case {
            what: format!("{w} (split {split})"),
            names: Some(name_of(&p)),
            call: Box::new(move || {
                read_image_folder_tar_gz(&p, split)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    });
}

#[test]
fn fuzz_read_image_folder_tar() {
    fuzz_tar_folder("read_image_folder_tar_gz (plain tar)", 8000, false);
}

#[test]
fn fuzz_read_image_folder_tar_gz() {
    fuzz_tar_folder("read_image_folder_tar_gz (tar.gz)", 6000, true);
}

#[test]
fn fuzz_load_cifar_archives() {
    let mut c10: Vec<TarEntry> = vec![dir_entry("cifar-10-batches-bin/")];
    for (i, n) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
    .iter()
    .enumerate()
    {
        c10.push(file_entry(
            &format!("cifar-10-batches-bin/{n}"),
            cifar_batch(CifarKind::Cifar10, 2, i),
        ));
    }
    let k100 = CifarKind::Cifar100 { fine: true };
    let c100 = vec![
        file_entry("cifar-100-binary/train.bin", cifar_batch(k100, 3, 0)),
        file_entry("cifar-100-binary/test.bin", cifar_batch(k100, 2, 50)),
    ];
    fuzz(
        "load_cifar10 / load_cifar100 (binary archives)",
        6000,
        |rng, dir| {
            let ten = rng.gen_bool(0.6);
            let kind = if ten { CifarKind::Cifar10 } else { k100 };
            let content =
                move |b: &[u8], rng: &mut ChaCha8Rng| mutate(b, &cifar_layout(kind, b.len()), rng);
            let gz = rng.gen_bool(0.7);
            let (b, w) = mutate_archive(if ten { &c10 } else { &c100 }, gz, &content, rng);
            let p = dir.join(if gz {
                "cifar-binary.tar.gz"
            } else {
                "cifar-binary.tar"
            });
            write(&p, &b);
            Case {
                what: format!("{}: {w}", if ten { "CIFAR-10" } else { "CIFAR-100" }),
                names: Some(name_of(&p)),
                call: Box::new(move || {
                    if ten {
                        load_cifar10(&p).map(drop).map_err(|e| e.to_string())
                    } else {
                        load_cifar100(&p).map(drop).map_err(|e| e.to_string())
                    }
                }),
            }
        },
    );
}

#[test]
fn fuzz_load_weights() {
    let (p, s) = params();
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("model".to_string(), "fuzz-net".to_string());
    let base = weights_to_bytes(SPECS, &p, &s, Some(meta)).unwrap();
    fuzz("load_weights / weights_from_bytes", 20000, |rng, dir| {
        let (b, w) = mutate_safetensors(&base, rng);
        let path = dir.join("model.safetensors");
        let through_file = rng.gen_range(0..4) == 0;
        if through_file {
            write(&path, &b);
        }
        Case {
            what: w,
            names: Some(name_of(&path)),
            call: Box::new(move || {
                let (mut params, mut state) = (vec![7.0f32; N_PARAMS], vec![7.0f32; N_STATE]);
                let r = if through_file {
                    load_weights(&path, SPECS, &mut params, &mut state)
                } else {
                    weights_from_bytes(&b, &path, SPECS, &mut params, &mut state)
                };
                match r {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // a failed load leaves the model unchanged
                        assert!(
                            params.iter().chain(&state).all(|&v| v == 7.0),
                            "a failed load changed the model: {e}"
                        );
                        Err(e.to_string())
                    }
                }
            }),
        }
    });
}

#[test]
fn fuzz_load_checkpoint() {
    let (p, s) = params();
    let velocity: Vec<f32> = (0..N_PARAMS).map(|i| i as f32 * -0.01).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut progress = TrainProgress {
        epoch: 3,
        step: 300,
        seed: 42,
        model: "fuzz-net".to_string(),
        ..TrainProgress::default()
    };
    progress.extra.insert(
        "config".to_string(),
        "{\"lr\":0.1,\"epochs\":10}".to_string(),
    );
    save_checkpoint(&path, SPECS, &p, &s, &velocity, &progress).unwrap();
    let base = std::fs::read(&path).unwrap();
    fuzz(
        "load_checkpoint_for / read_checkpoint_progress",
        10000,
        |rng, dir| {
            let (b, w) = mutate_safetensors(&base, rng);
            let path = dir.join("checkpoint.safetensors");
            write(&path, &b);
            let progress_only = rng.gen_bool(0.4);
            Case {
                what: format!(
                    "{w} ({})",
                    if progress_only {
                        "progress only"
                    } else {
                        "full load"
                    }
                ),
                names: Some(name_of(&path)),
                call: Box::new(move || {
                    if progress_only {
                        return read_checkpoint_progress(&path)
                            .map(drop)
                            .map_err(|e| e.to_string());
                    }
                    let mut params = vec![7.0f32; N_PARAMS];
                    let mut state = vec![7.0f32; N_STATE];
                    let mut vel = vec![7.0f32; N_PARAMS];
                    match load_checkpoint_for(
                        &path,
                        "fuzz-net",
                        SPECS,
                        &mut params,
                        &mut state,
                        &mut vel,
                    ) {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            assert!(
                                params.iter().chain(&state).chain(&vel).all(|&v| v == 7.0),
                                "a failed load changed the model: {e}"
                            );
                            Err(e.to_string())
                        }
                    }
                }),
            }
        },
    );
}

#[test]
fn fuzz_read_metrics_csv() {
    let text = metrics_csv();
    let layout = csv_layout(&text);
    fuzz("MetricsLog::read_csv", 20000, |rng, dir| {
        let (b, w) = if rng.gen_bool(0.4) {
            mutate_csv_text(&text, rng)
        } else {
            mutate(text.as_bytes(), &layout, rng)
        };
        let path = dir.join("metrics.csv");
        write(&path, &b);
        Case {
            what: w,
            names: Some(name_of(&path)),
            call: Box::new(move || {
                let log = MetricsLog::read_csv(&path).map_err(|e| e.to_string())?;
                // what a resumed run does with it
                let mut log2 = log.clone();
                log2.truncate_after_epoch(2);
                let _ = log.to_csv();
                Ok(())
            }),
        }
    });
}

/// The harness itself: a reader that panics on some inputs fails the test,
/// naming the reader, the mutation and the seed.
#[test]
#[should_panic(expected = "reader self-test, mutation [")]
fn harness_reports_a_panicking_reader() {
    fuzz("self-test", 50, |rng, _| {
        let (b, what) = mutate(b"0123456789", &Layout::default(), rng);
        Case {
            what,
            names: None,
            call: Box::new(move || {
                assert!(b.len() >= 10, "short input");
                Ok(())
            }),
        }
    });
}
