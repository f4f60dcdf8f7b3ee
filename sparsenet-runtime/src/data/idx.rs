//! IDX files (MNIST, Fashion-MNIST): big-endian header, then u8 payload.

use std::io::{self, Read};
use std::path::Path;

use super::{gzip_error, open_maybe_gz, DataError, Dataset};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// A parsed IDX file: its dimensions and its payload.
struct Idx {
    dims: Vec<usize>,
    payload: Vec<u8>,
}

/// Reads `n` more bytes of `reader` (fewer at its end) onto `out`.
fn read_up_to(reader: &mut dyn Read, n: u64, out: &mut Vec<u8>) -> io::Result<()> {
    reader.take(n).read_to_end(out).map(|_| ())
}

fn parse_idx(path: &Path, magic: u32, what: &'static str) -> Result<Idx, DataError> {
    // The header says how long the file is; nothing past that (and one byte
    // to notice trailing data) is ever decompressed, so a small gzip file
    // inflating to gigabytes stops at the size its header announces.
    let (mut reader, gz, capacity) = open_maybe_gz(path)?;
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    let mut bytes = Vec::with_capacity(header);
    read_up_to(&mut reader, header as u64, &mut bytes).map_err(|e| gzip_error(path, gz, e))?;
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
    // Reserve no more than the file can hold: a header claiming terabytes
    // is a truncated file, not an allocation.
    bytes.reserve(need.min(capacity as usize));
    read_up_to(&mut reader, need as u64 + 1, &mut bytes).map_err(|e| gzip_error(path, gz, e))?;
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
        // A plain file's length tells how much follows; a gzip stream's
        // would have to be inflated (all of a gzip bomb), so it is not.
        let trailing = if gz {
            "unexpected trailing data".to_string()
        } else {
            format!(
                "{} unexpected trailing bytes",
                capacity - (header + need) as u64
            )
        };
        return Err(DataError::format(
            path.display().to_string(),
            format!(
                "{trailing} at byte offset {}{} (payload of {what} {dims:?} is {need} bytes)",
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
