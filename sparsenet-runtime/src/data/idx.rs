//! IDX files (MNIST, Fashion-MNIST): big-endian header, then u8 payload.

use std::path::Path;

use super::{read_maybe_gz, DataError, Dataset};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// A parsed IDX file: its dimensions and its payload.
struct Idx {
    dims: Vec<usize>,
    payload: Vec<u8>,
}

fn parse_idx(path: &Path, magic: u32, what: &'static str) -> Result<Idx, DataError> {
    let (bytes, gz) = read_maybe_gz(path)?;
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let truncated = |offset: usize, problem: String| DataError::Truncated {
        path: path.to_path_buf(),
        offset: offset as u64,
        decompressed: gz,
        problem,
    };
    if bytes.len() < 4 {
        return Err(truncated(
            bytes.len(),
            format!(
                "the {header}-byte IDX header of {what} is missing (file has {} bytes)",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            found,
            what,
        });
    }
    if bytes.len() < header {
        return Err(truncated(
            bytes.len(),
            format!(
                "the IDX header of {what} needs {header} bytes but the file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndims).map(|d| word(4 + 4 * d) as usize).collect();
    if let Some(d) = dims.iter().position(|&d| d == 0) {
        return Err(DataError::format(
            path.display().to_string(),
            format!(
                "dimension {d} of the IDX header is 0 (dims {dims:?}, at byte offset {})",
                4 + 4 * d
            ),
        ));
    }
    let need = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            DataError::format(
                path.display().to_string(),
                format!("IDX dimensions {dims:?} are too large"),
            )
        })?;
    let have = bytes.len() - header;
    if have < need {
        return Err(truncated(
            bytes.len(),
            format!(
                "the payload of {what} {dims:?} needs {need} bytes after the {header}-byte header but only {have} are present"
            ),
        ));
    }
    if have > need {
        return Err(DataError::format(
            path.display().to_string(),
            format!(
                "{} unexpected trailing bytes at byte offset {}{} (payload of {what} {dims:?} is {need} bytes)",
                have - need,
                header + need,
                if gz { " of the decompressed data" } else { "" }
            ),
        ));
    }
    let mut payload = bytes;
    payload.drain(..header);
    Ok(Idx { dims, payload })
}

/// Reads an IDX image file (magic `0x00000803`, dims N×H×W) and its IDX label
/// file (magic `0x00000801`, dim N). Each file may be gzip-compressed
/// (detected by its first bytes `1f 8b`) or plain.
///
/// Checks the magic numbers, that no dimension is 0, that the payloads have
/// exactly the announced length (a short file is [`DataError::Truncated`] with
/// the offset where it ends, a long one is [`DataError::Format`]) and that the
/// counts agree. `classes` is `max label + 1`; a file whose labels are all the
/// same (a single class) is an error. Class names are `"0"`, `"1"`, ...
pub fn read_idx(images: &Path, labels: &Path) -> Result<Dataset, DataError> {
    let img = parse_idx(images, IDX_IMAGES_MAGIC, "images (N x H x W ubyte)")?;
    let lab = parse_idx(labels, IDX_LABELS_MAGIC, "labels (N ubyte)")?;
    let (n, h, w) = (img.dims[0], img.dims[1], img.dims[2]);
    if lab.dims[0] != n {
        return Err(DataError::CountMismatch {
            images_path: images.to_path_buf(),
            labels_path: labels.to_path_buf(),
            images: n,
            labels: lab.dims[0],
        });
    }
    let max = *lab.payload.iter().max().expect("n > 0") as usize;
    let min = *lab.payload.iter().min().expect("n > 0") as usize;
    if min == max {
        return Err(DataError::format(
            labels.display().to_string(),
            format!("all {n} labels are {max}: a dataset needs at least 2 classes"),
        ));
    }
    let classes = (max + 1).max(2);
    Ok(Dataset {
        pixels: img.payload,
        labels: lab.payload.iter().map(|&l| l as u16).collect(),
        len: n,
        channels: 1,
        height: h,
        width: w,
        classes,
        class_names: (0..classes).map(|c| c.to_string()).collect(),
        source: images.to_path_buf(),
    })
}
