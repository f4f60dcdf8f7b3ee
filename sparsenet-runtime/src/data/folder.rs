//! Image folders (`root/<class>/<image>.{jpg,jpeg,png}`), on disk or inside a
//! `.tar.gz`, decoded in parallel with rayon.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat};
use rayon::prelude::*;

use super::{entry_location, gzip_error, open_maybe_gz, DataError, Dataset, DEFLATE_MAX_RATIO};

/// Where one image's bytes are.
pub(crate) enum Blob {
    File(PathBuf),
    Mem { location: String, bytes: Vec<u8> },
}

impl Blob {
    fn location(&self) -> String {
        match self {
            Blob::File(p) => p.display().to_string(),
            Blob::Mem { location, .. } => location.clone(),
        }
    }
}

/// The image format implied by a file name's extension (case-insensitive).
pub(crate) fn image_format_of(name: &str) -> Option<ImageFormat> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
        "png" => Some(ImageFormat::Png),
        _ => None,
    }
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

const NOT_IMAGE: &str =
    "not a JPEG or PNG file (by its extension); class folders may hold only .jpg, .jpeg or .png files";

fn decode(blob: &Blob, name: &str) -> Result<DynamicImage, DataError> {
    let owned;
    let bytes: &[u8] = match blob {
        Blob::File(p) => {
            owned = fs::read(p).map_err(|e| DataError::io(p, e))?;
            &owned
        }
        Blob::Mem { bytes, .. } => bytes,
    };
    let by_ext = image_format_of(name).expect("filtered by extension");
    // Trust the content over the extension when it is clearly JPEG or PNG.
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        _ => by_ext,
    };
    check_claimed_size(bytes, format).map_err(|problem| DataError::Image {
        location: blob.location(),
        problem,
    })?;
    image::load_from_memory_with_format(bytes, format).map_err(|e| DataError::Image {
        location: blob.location(),
        problem: format!("cannot decode as {}: {e}", format_name(format)),
    })
}

/// How messages name an image format.
fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => "an image",
    }
}

/// The most pixels per byte a JPEG file can hold: every 8x8 block of every
/// component costs at least one bit (its DC Huffman code; the decoder does
/// not support arithmetic coding), and the components' blocks cover at
/// least half the image's pixels however they are subsampled (the worst is
/// one component sampled 4x1, another 1x4), so a file of `n` bytes holds at
/// most `n * 8 * 64 * 2` pixels.
const JPEG_MAX_PIXELS_PER_BYTE: u64 = 8 * 64 * 2;

/// Refuses an image whose header claims more pixels than a file of its
/// length can encode, before the decoder allocates them: a PNG's pixel data
/// (at least `width * height * stored bits per pixel / 8` bytes) is
/// deflated, which compresses at most [`DEFLATE_MAX_RATIO`]:1; a JPEG holds at most
/// [`JPEG_MAX_PIXELS_PER_BYTE`] pixels per byte. A few hundred corrupt bytes
/// claiming a 16384x16384 image would otherwise have the decoder allocate
/// (and for a JPEG, fill) hundreds of megabytes. A header that does not
/// parse is left to the decoder to report.
fn check_claimed_size(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    let Ok(decoder) =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), format).into_decoder()
    else {
        return Ok(());
    };
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    let len = bytes.len() as u64;
    let (needs, can) = match format {
        ImageFormat::Png => {
            // Bits per pixel as stored (the decoder reports its output, a
            // 1-bit image as 8 bits): IHDR, the first chunk, holds the bit
            // depth at byte 24 and the colour type at byte 25.
            let Some(&[depth, colour]) = bytes.get(24..26) else {
                return Ok(());
            };
            let samples = match colour {
                0 | 3 => 1, // grey, palette index
                2 => 3,     // RGB
                4 => 2,     // grey + alpha
                6 => 4,     // RGBA
                _ => return Ok(()),
            };
            (
                pixels.saturating_mul(depth as u64 * samples).div_ceil(8),
                len.saturating_mul(DEFLATE_MAX_RATIO),
            )
        }
        ImageFormat::Jpeg => (pixels, len.saturating_mul(JPEG_MAX_PIXELS_PER_BYTE)),
        _ => return Ok(()),
    };
    if needs > can {
        let what = match format {
            ImageFormat::Png => format!(
                "{needs} bytes of pixel data, more than the {can} a {len}-byte PNG file can \
                 hold (deflate compresses at most {DEFLATE_MAX_RATIO}:1)"
            ),
            _ => format!(
                "{needs} pixels, more than the {can} a {len}-byte JPEG file can hold (at \
                 least one bit per 8x8 block)"
            ),
        };
        return Err(format!(
            "its header claims a {w}x{h} image: {what}; a corrupt header"
        ));
    }
    Ok(())
}

/// (channels, height, width) the image will have in the dataset.
fn shape_of(img: &DynamicImage) -> (usize, usize, usize) {
    let c = if img.color().has_color() { 3 } else { 1 };
    (c, img.height() as usize, img.width() as usize)
}

/// Writes the image channel-planar into `out` (alpha dropped).
fn write_planar(img: DynamicImage, out: &mut [u8]) {
    if img.color().has_color() {
        let rgb = img.into_rgb8();
        let hw = out.len() / 3;
        let (r, rest) = out.split_at_mut(hw);
        let (g, b) = rest.split_at_mut(hw);
        for (p, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            r[p] = px[0];
            g[p] = px[1];
            b[p] = px[2];
        }
    } else {
        out.copy_from_slice(img.into_luma8().as_raw());
    }
}

fn fmt_shape((c, h, w): (usize, usize, usize)) -> String {
    format!("{c}x{h}x{w} (channels x height x width)")
}

/// One decoded image, channel-planar like a [`Dataset`]'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// 1 (grayscale) or 3 (RGB; an alpha channel is dropped).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` bytes: all of channel 0, then channel 1, ...
    pub pixels: Vec<u8>,
}

impl Image {
    /// This image resized to `height` x `width` (aspect ratio not kept),
    /// each channel with the `image` crate's triangle (bilinear) filter,
    /// widened when shrinking so that every source pixel counts (as PIL's
    /// `resize(size, BILINEAR)`): for classifying photos of another size.
    /// A zero `height` or `width` gives an empty image.
    pub fn resized(&self, height: usize, width: usize) -> Image {
        let plane = self.height * self.width;
        let mut pixels = Vec::with_capacity(self.channels * height * width);
        for c in 0..self.channels {
            let src = image::GrayImage::from_raw(
                self.width as u32,
                self.height as u32,
                self.pixels[c * plane..(c + 1) * plane].to_vec(),
            )
            .expect("a plane holds height x width bytes");
            let out = image::imageops::resize(
                &src,
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            );
            pixels.extend_from_slice(out.as_raw());
        }
        Image {
            channels: self.channels,
            height,
            width,
            pixels,
        }
    }
}

/// Reads one JPEG or PNG file as the image folders' reader does (the same
/// decoding, channel count and layout), e.g. to classify it with a model
/// trained on such a folder. Errors name the file.
pub fn read_image(path: &Path) -> Result<Image, DataError> {
    let name = os_name(path);
    if image_format_of(&name).is_none() {
        return Err(DataError::Image {
            location: path.display().to_string(),
            problem: "not a JPEG or PNG file (by its extension: .jpg, .jpeg or .png)".into(),
        });
    }
    let img = decode(&Blob::File(path.to_path_buf()), &name)?;
    let (channels, height, width) = shape_of(&img);
    let mut pixels = vec![0u8; channels * height * width];
    write_planar(img, &mut pixels);
    Ok(Image {
        channels,
        height,
        width,
        pixels,
    })
}

/// Class name -> (file name, blob) list.
pub(crate) type Classes = BTreeMap<String, Vec<(String, Blob)>>;

/// Checks the layout, orders images by (class, file name) and decodes them in
/// parallel. `root` names the folder (or archive split) in layout errors.
pub(crate) fn build_dataset(
    root: &Path,
    root_desc: &str,
    source: PathBuf,
    classes: Classes,
) -> Result<Dataset, DataError> {
    if classes.is_empty() {
        return Err(DataError::layout(
            root,
            format!("no class folders in {root_desc} (expected one sub-folder per class holding .jpg, .jpeg or .png files)"),
        ));
    }
    if let Some((name, _)) = classes.iter().find(|(_, files)| files.is_empty()) {
        return Err(DataError::layout(
            root,
            format!("class folder '{name}' in {root_desc} holds no image"),
        ));
    }
    if classes.len() == 1 {
        let name = classes.keys().next().unwrap();
        return Err(DataError::layout(
            root,
            format!("{root_desc} has a single class folder '{name}': a dataset needs at least 2 classes"),
        ));
    }
    if classes.len() > u16::MAX as usize {
        return Err(DataError::layout(
            root,
            format!("{root_desc} has {} classes (at most 65535)", classes.len()),
        ));
    }
    let class_names: Vec<String> = classes.keys().cloned().collect();
    let mut items: Vec<(u16, String, Blob)> = Vec::new();
    for (label, (_, mut files)) in classes.into_iter().enumerate() {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        items.extend(
            files
                .into_iter()
                .map(|(name, blob)| (label as u16, name, blob)),
        );
    }
    let first = decode(&items[0].2, &items[0].1)?;
    let shape = shape_of(&first);
    let (c, h, w) = shape;
    let chw = c * h * w;
    let first_loc = items[0].2.location();
    let mut pixels = vec![0u8; items.len() * chw];
    write_planar(first, &mut pixels[..chw]);
    let results: Vec<Result<(), DataError>> = pixels[chw..]
        .par_chunks_mut(chw)
        .zip(items[1..].par_iter())
        .map(|(out, (_, name, blob))| {
            let img = decode(blob, name)?;
            let s = shape_of(&img);
            if s != shape {
                return Err(DataError::Image {
                    location: blob.location(),
                    problem: format!(
                        "size {} differs from {} of the first image {first_loc}; all images must have the same size and channel count",
                        fmt_shape(s),
                        fmt_shape(shape)
                    ),
                });
            }
            write_planar(img, out);
            Ok(())
        })
        .collect();
    // Report the first failure in dataset order: deterministic.
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    Ok(Dataset {
        pixels,
        labels: items.iter().map(|i| i.0).collect(),
        len: items.len(),
        channels: c,
        height: h,
        width: w,
        classes: class_names.len(),
        class_names,
        source,
    })
}

fn os_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads an image folder: one sub-folder per class (sorted by name; the
/// position is the label), each holding `.jpg` / `.jpeg` / `.png` files
/// (extension case-insensitive), decoded in parallel. Images are ordered by
/// class, then file name.
///
/// Hidden files and folders (name starting with `.`) are skipped, and so are
/// plain files next to the class folders (a README, a licence). Any other
/// non-image file, or a folder, inside a class folder is an error naming it.
/// All images must have the same size and channel count (grayscale stays 1
/// channel, colour is RGB; alpha is dropped), else the error names the file
/// and both sizes. An empty folder, no class folder, a single class or an
/// empty class is an error.
pub fn read_image_folder(dir: &Path) -> Result<Dataset, DataError> {
    let meta = fs::metadata(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            DataError::NotFound {
                what: "image folder",
                path: dir.to_path_buf(),
                hint: "expected a directory with one sub-folder of images per class".into(),
            }
        } else {
            DataError::io(dir, e)
        }
    })?;
    if !meta.is_dir() {
        return Err(DataError::layout(
            dir,
            "not a directory (expected one sub-folder of images per class)",
        ));
    }
    let list = |d: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut v = Vec::new();
        for e in fs::read_dir(d).map_err(|e| DataError::io(d, e))? {
            let p = e.map_err(|e| DataError::io(d, e))?.path();
            if !is_hidden(&os_name(&p)) {
                v.push(p);
            }
        }
        v.sort();
        Ok(v)
    };
    let top = list(dir)?;
    if top.is_empty() {
        return Err(DataError::layout(
            dir,
            "the folder is empty (expected one sub-folder of images per class)",
        ));
    }
    let mut classes = Classes::new();
    for class_dir in top.iter().filter(|p| p.is_dir()) {
        let mut files = Vec::new();
        for f in list(class_dir)? {
            let name = os_name(&f);
            if f.is_dir() {
                return Err(DataError::Image {
                    location: f.display().to_string(),
                    problem: "unexpected folder inside a class folder (class folders hold image files only)".into(),
                });
            }
            if image_format_of(&name).is_none() {
                return Err(DataError::Image {
                    location: f.display().to_string(),
                    problem: NOT_IMAGE.into(),
                });
            }
            files.push((name, Blob::File(f)));
        }
        classes.insert(os_name(class_dir), files);
    }
    build_dataset(
        dir,
        &format!("folder {}", dir.display()),
        dir.to_path_buf(),
        classes,
    )
}

/// The entries of a tar archive kept by a filter: files with their bytes,
/// directories with none. Paths are split into components, `.` removed.
pub(crate) struct TarScan {
    pub files: Vec<(Vec<String>, Vec<u8>)>,
    pub dirs: Vec<Vec<String>>,
}

/// The most bytes an archive entry of some kind can legitimately hold, and
/// why (for the error that refuses a larger one).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryLimit {
    pub bytes: u64,
    pub why: &'static str,
}

/// The limit of a JPEG or PNG entry: the most the image decoder allocates
/// for one image's pixels (the `image` crate's default limit, 512 MiB). A
/// JPEG or PNG file is no larger than its pixels but for its metadata, so a
/// larger entry is not an image the decoder would accept.
pub(crate) fn image_entry_limit() -> EntryLimit {
    EntryLimit {
        bytes: image::Limits::default().max_alloc.unwrap_or(u64::MAX),
        why: "the most the image decoder allocates for one image",
    }
}

/// Streams a `.tar.gz` (or a plain `.tar`: gzip is detected by its magic
/// bytes) and keeps the entries whose path components `keep` accepts,
/// each up to the size `keep` gives for it.
///
/// Nothing is allocated from what a header claims before the claim is
/// checked: an entry larger than its limit, or than the whole archive can
/// hold, is an error naming it. After the end-of-archive marker only zero
/// padding may follow (data there, e.g. a second archive appended, would
/// otherwise be dropped unseen), and the gzip stream is read to its end, so
/// its CRC-32 and length are checked: a corrupt archive is an error, not
/// corrupt images.
pub(crate) fn scan_tar(
    archive: &Path,
    keep: &dyn Fn(&[String]) -> Option<EntryLimit>,
) -> Result<TarScan, DataError> {
    if let Err(e) = fs::metadata(archive) {
        if e.kind() == io::ErrorKind::NotFound {
            return Err(DataError::NotFound {
                what: "archive",
                path: archive.to_path_buf(),
                hint: "no such file".into(),
            });
        }
    }
    let (reader, gz, capacity) = open_maybe_gz(archive)?;
    let mut ar = tar::Archive::new(reader);
    let mut scan = TarScan {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    let mut last = String::from("(none)");
    let wrap = |e: io::Error, last: &str| {
        gzip_error(
            archive,
            gz,
            io::Error::new(e.kind(), format!("{e} (after archive entry {last})")),
        )
    };
    for entry in ar.entries().map_err(|e| wrap(e, &last))? {
        let mut entry = entry.map_err(|e| wrap(e, &last))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps: Vec<String> = name
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        last = name;
        if comps.is_empty() {
            continue;
        }
        let Some(limit) = keep(&comps) else {
            continue;
        };
        let ty = entry.header().entry_type();
        if ty.is_dir() {
            scan.dirs.push(comps);
        } else if ty.is_file() || ty == tar::EntryType::Continuous {
            let size = entry.size();
            let location = || entry_location(archive, &last);
            if size > capacity {
                return Err(DataError::format(
                    location(),
                    format!(
                        "its tar header claims {size} bytes, more than the whole archive can \
                         hold (at most {capacity} bytes{}): a corrupt header",
                        if gz { " once decompressed" } else { "" }
                    ),
                ));
            }
            if size > limit.bytes {
                return Err(DataError::format(
                    location(),
                    format!(
                        "its tar header claims {size} bytes, more than such an entry can \
                         legitimately hold ({} bytes: {})",
                        limit.bytes, limit.why
                    ),
                ));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).map_err(|e| wrap(e, &last))?;
            scan.files.push((comps, bytes));
        }
    }
    let mut rest = ar.into_inner();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = rest.read(&mut chunk).map_err(|e| wrap(e, &last))?;
        if n == 0 {
            break;
        }
        if chunk[..n].iter().any(|&b| b != 0) {
            return Err(DataError::format(
                archive.display().to_string(),
                format!(
                    "data after the tar end-of-archive marker (after entry {last}), which tar \
                     readers ignore: a second archive appended to this one? Only the first \
                     archive's entries would be read"
                ),
            ));
        }
    }
    Ok(scan)
}

/// The path of an entry relative to `split/`, tolerating one top folder
/// (`top/split/...`). `None` if the entry is not under `split`.
pub(crate) fn split_rel<'a>(comps: &'a [String], split: &str) -> Option<&'a [String]> {
    if comps.first().map(String::as_str) == Some(split) {
        Some(&comps[1..])
    } else if comps.len() >= 2 && comps[1] == split {
        Some(&comps[2..])
    } else {
        None
    }
}

/// Builds the image-folder dataset of `split` from a scan, taking the
/// matching entries out of it.
pub(crate) fn dataset_from_scan(
    archive: &Path,
    scan: &mut TarScan,
    split: &str,
) -> Result<Dataset, DataError> {
    let mut classes = Classes::new();
    let mut seen_any = false;
    for d in &scan.dirs {
        if let Some(rel) = split_rel(d, split) {
            seen_any = true;
            if rel.len() == 1 && !is_hidden(&rel[0]) {
                classes.entry(rel[0].clone()).or_default();
            }
        }
    }
    let files = std::mem::take(&mut scan.files);
    for (comps, bytes) in files {
        let Some(rel) = split_rel(&comps, split) else {
            scan.files.push((comps, bytes));
            continue;
        };
        seen_any = true;
        if rel.iter().any(|c| is_hidden(c)) || rel.len() < 2 {
            continue; // hidden files (e.g. macOS "._x.jpg"), files beside the class folders
        }
        let location = entry_location(archive, &comps.join("/"));
        if rel.len() > 2 {
            return Err(DataError::Image {
                location,
                problem:
                    "unexpected folder inside a class folder (class folders hold image files only)"
                        .into(),
            });
        }
        if image_format_of(&rel[1]).is_none() {
            return Err(DataError::Image {
                location,
                problem: NOT_IMAGE.into(),
            });
        }
        classes
            .entry(rel[0].clone())
            .or_default()
            .push((rel[1].clone(), Blob::Mem { location, bytes }));
    }
    if !seen_any {
        return Err(DataError::layout(
            archive,
            format!("no entries under '{split}/' (expected {split}/<class>/<image>.jpg, optionally inside one top folder)"),
        ));
    }
    build_dataset(
        archive,
        &format!("'{split}/' of {}", archive.display()),
        archive.to_path_buf(),
        classes,
    )
}

/// Reads the image folder `split/<class>/*.{jpg,jpeg,png}` straight from a
/// `.tar.gz` (no extraction to disk), e.g. `split = "train"` or `"test"`.
/// Entry paths may start with `./` or sit inside one top folder. Same rules
/// as [`read_image_folder`]; errors name the archive and the entry.
pub fn read_image_folder_tar_gz(archive: &Path, split: &str) -> Result<Dataset, DataError> {
    let mut scan = scan_tar(archive, &|c| {
        split_rel(c, split).map(|_| image_entry_limit())
    })?;
    dataset_from_scan(archive, &mut scan, split)
}
