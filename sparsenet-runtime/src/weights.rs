//! Saving and loading model weights in the [safetensors] format.
//!
//! Generated models keep every trainable parameter in one flat `params` vector and
//! every batch-norm running statistic in one flat `state` vector. A static table of
//! [`TensorSpec`]s names each tensor (PyTorch-style dotted names such as
//! `stages.0.units.3.conv2.weight`), gives its shape, and says where it lives in
//! the flat stores. [`save_weights`] writes every spec'd tensor to a safetensors
//! file; [`load_weights`] checks that a file matches the table exactly before it
//! copies anything, so a failed load leaves the model unchanged.
//!
//! # Example
//!
//! A hand-written table (generated models have theirs in
//! `NetworkSpec::tensors()`): a dense layer's weight and bias in the
//! parameters, a BatchNorm's running mean and variance in the state.
//!
//! ```
//! use sparsenet_runtime::weights::{weights_from_bytes, weights_to_bytes, WeightsError};
//! use sparsenet_runtime::{Store, TensorSpec};
//! use std::path::Path;
//!
//! const SPECS: &[TensorSpec] = &[
//!     TensorSpec { name: "fc.weight", shape: &[2, 3], store: Store::Param, offset: 0 },
//!     TensorSpec { name: "fc.bias", shape: &[2], store: Store::Param, offset: 6 },
//!     TensorSpec { name: "bn.running_mean", shape: &[2], store: Store::State, offset: 0 },
//!     TensorSpec { name: "bn.running_var", shape: &[2], store: Store::State, offset: 2 },
//! ];
//! let params: Vec<f32> = (0..8).map(|i| i as f32).collect();
//! let state = vec![0.5f32, -0.5, 1.0, 2.0];
//!
//! // The bytes of a safetensors file (`save_weights` writes the same to disk).
//! let bytes = weights_to_bytes(SPECS, &params, &state, None)?;
//!
//! let (mut p, mut s) = (vec![0.0f32; 8], vec![0.0f32; 4]);
//! weights_from_bytes(&bytes, Path::new("<memory>"), SPECS, &mut p, &mut s)?;
//! assert_eq!((p, s), (params, state));
//!
//! // A table that does not match the file is refused, and nothing is copied.
//! let wrong = [TensorSpec { shape: &[3, 2], ..SPECS[0] }];
//! let mut p = vec![0.0f32; 6];
//! let err = weights_from_bytes(&bytes, Path::new("<memory>"), &wrong, &mut p, &mut [])
//!     .unwrap_err();
//! assert!(matches!(err, WeightsError::ShapeMismatch { .. }), "{err}");
//! assert!(p.iter().all(|&v| v == 0.0));
//! # Ok::<(), WeightsError>(())
//! ```
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{SafeTensorError, SafeTensors, View};
use safetensors::Dtype;

/// Where a named tensor lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// In the flat vector of trainable parameters.
    Param,
    /// In the flat vector of non-trainable state (batch-norm running statistics).
    State,
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Store::Param => "parameter",
            Store::State => "state",
        })
    }
}

/// One named tensor of a model: PyTorch-style dotted name, shape, and its place in
/// the flat store.
#[derive(Clone, Copy, Debug)]
pub struct TensorSpec {
    /// Dotted name, e.g. `stages.0.units.3.conv2.weight`.
    pub name: &'static str,
    /// Shape, outermost dimension first (row-major / C order).
    pub shape: &'static [usize],
    /// Which flat vector holds the data.
    pub store: Store,
    /// Index of the first element in that vector.
    pub offset: usize,
}

impl TensorSpec {
    /// Number of elements: the product of `shape` (1 for a scalar, `shape == []`).
    pub const fn len(&self) -> usize {
        let mut n = 1usize;
        let mut i = 0;
        while i < self.shape.len() {
            n *= self.shape[i];
            i += 1;
        }
        n
    }

    /// Whether the tensor has no elements (some dimension is 0).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An element type that can be stored in a safetensors file.
pub trait WeightElem: Copy + bytemuck::Pod + 'static {
    /// The safetensors dtype of this element type.
    const DTYPE: Dtype;
    /// `v` in this type, rounded to nearest (ties to even) where it has
    /// fewer bits; a value beyond this type's range becomes an infinity.
    fn from_f64_rounded(v: f64) -> Self;
    /// Widened to f64 (exact for f32 and f64).
    fn to_f64_exact(self) -> f64;
}

impl WeightElem for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn from_f64_rounded(v: f64) -> Self {
        v as f32
    }
    fn to_f64_exact(self) -> f64 {
        self as f64
    }
}

impl WeightElem for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn from_f64_rounded(v: f64) -> Self {
        v
    }
    fn to_f64_exact(self) -> f64 {
        self
    }
}

/// Why a value of a weights file (or of a model being saved) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueProblem {
    /// NaN or an infinity.
    NotFinite,
    /// An F64 value beyond f32's range, loaded into an f32 model.
    TooLargeForF32,
    /// A BatchNorm running variance below zero (its square root is NaN).
    NegativeVariance,
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueProblem::NotFinite => {
                "weights and statistics must be finite (from a run that diverged, or a corrupt file?)"
            }
            ValueProblem::TooLargeForF32 => {
                "it is too large for an f32 model (the largest finite f32 is 3.4028235e38)"
            }
            ValueProblem::NegativeVariance => "a running variance cannot be negative",
        })
    }
}

/// Everything that can go wrong while saving or loading weights.
///
/// Every message names the file (for in-memory serialisation, `<memory>`) and,
/// where one is involved, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The weights file could not be read.
    #[error("cannot read weights file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The weights file could not be written (no such directory, no
    /// permission, disk full...); the file at `path`, if any, is unchanged.
    #[error("cannot write weights file {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed safetensors file (truncated, corrupt, or
    /// something else entirely), a tensor's data has the wrong byte length,
    /// or safetensors failed to serialise the tensors.
    #[error("{} is not a valid safetensors file: {reason}", .path.display())]
    Corrupt {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// What is wrong, with the byte counts or offsets involved.
        reason: String,
    },
    /// A tensor the model needs is not in the file.
    #[error(
        "tensor `{name}` is missing from {}; the model expects a tensor of shape {expected:?}",
        .path.display()
    )]
    MissingTensor {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The tensor's dotted name.
        name: String,
        /// The shape the model has for it.
        expected: Vec<usize>,
    },
    /// A tensor in the file has the wrong element type (e.g. `F64` weights
    /// loaded into an `f32` model).
    #[error(
        "tensor `{name}` in {} has dtype {found:?}, the model expects {expected:?}",
        .path.display()
    )]
    DtypeMismatch {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The tensor's dotted name.
        name: String,
        /// The dtype of the model's element type ([`WeightElem::DTYPE`]).
        expected: Dtype,
        /// The dtype in the file.
        found: Dtype,
    },
    /// A tensor in the file has the wrong shape.
    #[error(
        "tensor `{name}` in {} has shape {found:?}, the model expects {expected:?}",
        .path.display()
    )]
    ShapeMismatch {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The tensor's dotted name.
        name: String,
        /// The shape the model has for it.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor the model does not have (the first such name in
    /// sorted order is reported).
    #[error(
        "tensor `{name}` (shape {shape:?}, dtype {dtype:?}) in {} is not part of the model; \
         expected only the model's tensors, found {count} unexpected tensor(s)",
        .path.display()
    )]
    UnexpectedTensor {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The first unexpected name in sorted order.
        name: String,
        /// That tensor's shape in the file.
        shape: Vec<usize>,
        /// That tensor's dtype in the file.
        dtype: Dtype,
        /// How many tensors of the file the model does not have.
        count: usize,
    },
    /// A spec points outside the flat store it names (a tensor table that
    /// does not match the `params` / `state` slices given). Checked before
    /// any file is read or written.
    #[error(
        "tensor `{name}` (for {}) does not fit the model's {store} store: expected \
         offset {offset} + length {} to be at most the store's length, found the store has \
         only {available} elements",
        .path.display(),
        .len.map_or_else(|| "overflowing usize".to_string(), |l| l.to_string())
    )]
    SpecOutOfBounds {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The spec's tensor name.
        name: String,
        /// The store the spec points into.
        store: Store,
        /// The spec's first element in that store.
        offset: usize,
        /// `None` when the element count overflows `usize`.
        len: Option<usize>,
        /// The length of the store's slice.
        available: usize,
    },
    /// Two specs of the tensor table share a name. Checked before any file
    /// is read or written.
    #[error(
        "tensor name `{name}` (for {}) appears more than once in the model's tensor table; \
         expected unique names",
        .path.display()
    )]
    DuplicateSpec {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// A value that would make the model compute NaN, or hide one: NaN or an
    /// infinity, an F64 value too large for an f32 model, a negative running
    /// variance. Found before anything was copied (on load) or written (on
    /// save). The first such value of the tensor is reported.
    #[error(
        "tensor `{name}` ({}) holds {value} at index {index:?}: {problem} \
         ({count} such value(s) in this tensor; nothing was {})",
        .path.display(),
        if *.saving { "written" } else { "loaded" }
    )]
    BadValue {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The tensor's dotted name.
        name: String,
        /// Where in the tensor, outermost dimension first.
        index: Vec<usize>,
        /// The value (widened to f64).
        value: f64,
        /// What is wrong with it.
        problem: ValueProblem,
        /// How many values of the tensor have a problem.
        count: usize,
        /// Whether it was found while saving rather than loading.
        saving: bool,
    },
    /// `T::DTYPE` does not describe `T` (a wrong [`WeightElem`] implementation).
    #[error(
        "element type for {} does not match its dtype: expected {dtype:?} elements of \
         {dtype_size} bytes, found a Rust type of {elem_size} bytes",
        .path.display()
    )]
    ElementSize {
        /// The file (`<memory>` for [`weights_to_bytes`]; for
        /// [`weights_from_bytes`], the `origin` it was given).
        path: PathBuf,
        /// The dtype `T::DTYPE` claims.
        dtype: Dtype,
        /// Bytes per element of that dtype.
        dtype_size: usize,
        /// `size_of::<T>()`.
        elem_size: usize,
    },
}

/// Placeholder "path" used in messages from [`weights_to_bytes`], which has no file.
const MEMORY_ORIGIN: &str = "<memory>";

/// safetensors refuses headers larger than this; checked here too for a clear message.
const MAX_HEADER_SIZE: u64 = 100_000_000;

/// Saves `params` and `state` as described by `specs` to a safetensors file at
/// `path`, atomically: written to a temporary file beside it, synced, then renamed
/// over `path`, so a crash leaves the old file or the new one, never a torn one.
pub fn save_weights<T: WeightElem>(
    path: &Path,
    specs: &[TensorSpec],
    params: &[T],
    state: &[T],
) -> Result<(), WeightsError> {
    let bytes = to_bytes_impl(path, specs, params, state, None)?;
    crate::files::write_atomically(path, &bytes).map_err(|source| WeightsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the safetensors file at `path` into `params` and `state` as described by
/// `specs`. The file must hold exactly the spec'd tensors with the spec'd shapes,
/// as F32 or F64 (converted to `T`: F32 into f64 exactly, F64 into f32 rounded to
/// nearest, ties to even), every value finite and every running variance >= 0;
/// on any error `params` and `state` are left unchanged.
pub fn load_weights<T: WeightElem>(
    path: &Path,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
) -> Result<(), WeightsError> {
    // Catch a bad table before touching the file system.
    check_specs::<T>(path, specs, params.len(), state.len())?;
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    weights_from_bytes(&bytes, path, specs, params, state)
}

/// Serialises `params` and `state` as described by `specs` to the bytes of a
/// safetensors file, with optional string metadata (`__metadata__`, its keys
/// in sorted order). The same arguments always give the same bytes.
pub fn weights_to_bytes<T: WeightElem>(
    specs: &[TensorSpec],
    params: &[T],
    state: &[T],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>, WeightsError> {
    to_bytes_impl(Path::new(MEMORY_ORIGIN), specs, params, state, metadata)
}

/// Deserialises the bytes of a safetensors file into `params` and `state` as
/// described by `specs`. `origin` is used only in error messages. The same checks
/// and conversions as [`load_weights`] apply, and on any error nothing is written.
/// `bytes` need not be aligned.
pub fn weights_from_bytes<T: WeightElem>(
    bytes: &[u8],
    origin: &Path,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
) -> Result<(), WeightsError> {
    from_bytes_impl(bytes, origin, specs, params, state, true)
}

/// [`weights_from_bytes`] without the dtype conversion: every tensor must be
/// stored as `T::DTYPE` ([`WeightsError::DtypeMismatch`] otherwise). For
/// files that must come back bit for bit, such as checkpoints.
pub fn weights_from_bytes_exact<T: WeightElem>(
    bytes: &[u8],
    origin: &Path,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
) -> Result<(), WeightsError> {
    from_bytes_impl(bytes, origin, specs, params, state, false)
}

fn from_bytes_impl<T: WeightElem>(
    bytes: &[u8],
    origin: &Path,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
    convert: bool,
) -> Result<(), WeightsError> {
    let ranges = check_specs::<T>(origin, specs, params.len(), state.len())?;
    let corrupt = |reason: String| WeightsError::Corrupt {
        path: origin.to_path_buf(),
        reason,
    };

    precheck_header(bytes).map_err(corrupt)?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| corrupt(describe_st_error(e, bytes)))?;

    // Check every spec'd tensor, in table order, before copying anything.
    let mut sources: Vec<(&[u8], Dtype)> = Vec::with_capacity(specs.len());
    for spec in specs {
        let view = file
            .tensor(spec.name)
            .map_err(|_| WeightsError::MissingTensor {
                path: origin.to_path_buf(),
                name: spec.name.to_string(),
                expected: spec.shape.to_vec(),
            })?;
        let dtype = view.dtype();
        let convertible = convert && matches!(dtype, Dtype::F32 | Dtype::F64);
        if dtype != T::DTYPE && !convertible {
            return Err(WeightsError::DtypeMismatch {
                path: origin.to_path_buf(),
                name: spec.name.to_string(),
                expected: T::DTYPE,
                found: view.dtype(),
            });
        }
        let found_shape = View::shape(&view);
        if found_shape != spec.shape {
            return Err(WeightsError::ShapeMismatch {
                path: origin.to_path_buf(),
                name: spec.name.to_string(),
                expected: spec.shape.to_vec(),
                found: found_shape.to_vec(),
            });
        }
        let data = view.data();
        // safetensors validated size == numel * dtype size; check it here too.
        let elem = dtype.size();
        if data.len() != spec.len() * elem {
            return Err(corrupt(format!(
                "tensor `{}` should hold {} bytes of data, found {}",
                spec.name,
                spec.len() * elem,
                data.len()
            )));
        }
        check_values(
            spec,
            decode(data, dtype),
            T::DTYPE == Dtype::F32,
            origin,
            false,
        )?;
        sources.push((data, dtype));
    }

    // Tensors the model doesn't have.
    let known: HashSet<&str> = specs.iter().map(|s| s.name).collect();
    let mut extra: Vec<&String> = file
        .names()
        .into_iter()
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        let name = extra[0].clone();
        let (shape, dtype) = match file.tensor(&name) {
            Ok(v) => (View::shape(&v).to_vec(), v.dtype()),
            Err(_) => (Vec::new(), Dtype::U8), // unreachable: the name came from the file
        };
        return Err(WeightsError::UnexpectedTensor {
            path: origin.to_path_buf(),
            name,
            shape,
            dtype,
            count: extra.len(),
        });
    }

    // All checks passed: copy.
    for ((spec, range), (src, dtype)) in specs.iter().zip(ranges).zip(sources) {
        let dst = match spec.store {
            Store::Param => &mut params[range],
            Store::State => &mut state[range],
        };
        if dtype == T::DTYPE {
            copy_from_le_bytes(dst, src);
        } else {
            for (d, v) in dst.iter_mut().zip(decode(src, dtype)) {
                *d = T::from_f64_rounded(v);
            }
        }
    }
    Ok(())
}

/// The values of little-endian F32 or F64 data, widened to f64 (exact).
fn decode(data: &[u8], dtype: Dtype) -> Box<dyn Iterator<Item = f64> + '_> {
    match dtype {
        Dtype::F32 => Box::new(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64),
        ),
        _ => Box::new(
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
        ),
    }
}

/// Refuses a tensor holding a value a model must not compute with (see
/// [`ValueProblem`]); the error names its first such value.
fn check_values(
    spec: &TensorSpec,
    values: impl Iterator<Item = f64>,
    into_f32: bool,
    path: &Path,
    saving: bool,
) -> Result<(), WeightsError> {
    let variance = spec.name.ends_with("running_var");
    let problem = |v: f64| {
        if !v.is_finite() {
            Some(ValueProblem::NotFinite)
        } else if into_f32 && !(v as f32).is_finite() {
            Some(ValueProblem::TooLargeForF32)
        } else if variance && v < 0.0 {
            Some(ValueProblem::NegativeVariance)
        } else {
            None
        }
    };
    let mut first = None;
    let mut count = 0usize;
    for (i, v) in values.enumerate() {
        if let Some(p) = problem(v) {
            count += 1;
            first.get_or_insert((i, v, p));
        }
    }
    let Some((flat, value, problem)) = first else {
        return Ok(());
    };
    // The flat index as a multi-index over the tensor's shape.
    let mut index = vec![0usize; spec.shape.len()];
    let mut rest = flat;
    for (slot, &dim) in index.iter_mut().zip(spec.shape).rev() {
        *slot = rest % dim.max(1);
        rest /= dim.max(1);
    }
    Err(WeightsError::BadValue {
        path: path.to_path_buf(),
        name: spec.name.to_string(),
        index,
        value,
        problem,
        count,
        saving,
    })
}

// ---------------------------------------------------------------------------
// Internals

/// Product of `shape`, or `None` on overflow.
fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Checks that names are unique, that every spec fits its store, and that
/// `T::DTYPE` describes `T`; returns each spec's element range.
fn check_specs<T: WeightElem>(
    path: &Path,
    specs: &[TensorSpec],
    params_len: usize,
    state_len: usize,
) -> Result<Vec<Range<usize>>, WeightsError> {
    let elem_size = std::mem::size_of::<T>();
    if T::DTYPE.size() != elem_size {
        return Err(WeightsError::ElementSize {
            path: path.to_path_buf(),
            dtype: T::DTYPE,
            dtype_size: T::DTYPE.size(),
            elem_size,
        });
    }
    let mut seen = HashSet::with_capacity(specs.len());
    let mut ranges = Vec::with_capacity(specs.len());
    for spec in specs {
        if !seen.insert(spec.name) {
            return Err(WeightsError::DuplicateSpec {
                path: path.to_path_buf(),
                name: spec.name.to_string(),
            });
        }
        let available = match spec.store {
            Store::Param => params_len,
            Store::State => state_len,
        };
        let len = checked_len(spec.shape);
        let end = len.and_then(|l| spec.offset.checked_add(l));
        match end {
            Some(end) if end <= available => ranges.push(spec.offset..end),
            _ => {
                return Err(WeightsError::SpecOutOfBounds {
                    path: path.to_path_buf(),
                    name: spec.name.to_string(),
                    store: spec.store,
                    offset: spec.offset,
                    len,
                    available,
                })
            }
        }
    }
    Ok(ranges)
}

/// A tensor to serialise; borrows the model's memory on little-endian targets.
struct OutTensor<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: Cow<'a, [u8]>,
}

impl View for &OutTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes_impl<T: WeightElem>(
    path: &Path,
    specs: &[TensorSpec],
    params: &[T],
    state: &[T],
    metadata: Option<BTreeMap<String, String>>,
) -> Result<Vec<u8>, WeightsError> {
    let ranges = check_specs::<T>(path, specs, params.len(), state.len())?;
    // A file we write is a file we can read back: the load's value checks.
    for (spec, range) in specs.iter().zip(ranges.clone()) {
        let src = match spec.store {
            Store::Param => &params[range],
            Store::State => &state[range],
        };
        check_values(
            spec,
            src.iter().map(|v| v.to_f64_exact()),
            false,
            path,
            true,
        )?;
    }
    let tensors: Vec<(&str, OutTensor<'_>)> = specs
        .iter()
        .zip(ranges)
        .map(|(spec, range)| {
            let src = match spec.store {
                Store::Param => &params[range],
                Store::State => &state[range],
            };
            let tensor = OutTensor {
                dtype: T::DTYPE,
                shape: spec.shape,
                data: to_le_bytes(src),
            };
            (spec.name, tensor)
        })
        .collect();
    let failed = |reason: String| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("serialisation failed: {reason}"),
    };
    // safetensors takes the metadata as a HashMap and writes it in the map's
    // iteration order, which differs from map to map: identical saves gave
    // different bytes. So it writes the tensors alone (sorted by dtype and
    // name, hence the same every time), and the metadata is put in here.
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), &None)
        .map_err(|e| failed(e.to_string()))?;
    match metadata {
        Some(meta) => with_sorted_metadata(&bytes, &meta).map_err(failed),
        None => Ok(bytes),
    }
}

/// The safetensors file `bytes` (written without metadata) with `meta` as
/// its `__metadata__`, keys sorted, first in the header as safetensors
/// writes it; the header is padded with spaces to a multiple of 8 bytes as
/// safetensors pads it. The tensors' data offsets count from the end of the
/// header, so they stay valid.
fn with_sorted_metadata(bytes: &[u8], meta: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + len]).map_err(|e| e.to_string())?;
    let tensors = header
        .trim_end_matches(' ')
        .strip_prefix('{')
        .ok_or("the header is not a JSON object")?;
    let meta_json = serde_json::to_string(meta).map_err(|e| e.to_string())?;
    let sep = if tensors == "}" { "" } else { "," };
    let mut out_header = format!("{{\"__metadata__\":{meta_json}{sep}{tensors}").into_bytes();
    out_header.resize(out_header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + out_header.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(out_header.len() as u64).to_le_bytes());
    out.extend_from_slice(&out_header);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// The little-endian bytes of `src` (borrowed on little-endian targets).
fn to_le_bytes<T: WeightElem>(src: &[T]) -> Cow<'_, [u8]> {
    let bytes: &[u8] = bytemuck::cast_slice(src);
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytes)
    } else {
        let size = std::mem::size_of::<T>();
        let mut out = bytes.to_vec();
        for chunk in out.chunks_exact_mut(size) {
            chunk.reverse();
        }
        Cow::Owned(out)
    }
}

/// Fills `dst` from little-endian bytes `src` (`src.len() == dst.len() * size_of::<T>()`),
/// which may be unaligned.
fn copy_from_le_bytes<T: WeightElem>(dst: &mut [T], src: &[u8]) {
    let size = std::mem::size_of::<T>();
    for (d, chunk) in dst.iter_mut().zip(src.chunks_exact(size)) {
        let out = bytemuck::bytes_of_mut(d);
        out.copy_from_slice(chunk);
        if cfg!(target_endian = "big") {
            out.reverse();
        }
    }
}

/// Cheap structural checks that give clearer messages than safetensors' own and
/// reject headers that could make safetensors' validation overflow.
fn precheck_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the file is empty".to_string());
    }
    if bytes.len() < 8 {
        return Err(format!(
            "expected at least an 8-byte header length, found only {} byte(s) (truncated file?)",
            bytes.len()
        ));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_SIZE {
        return Err(format!(
            "expected a header of at most {MAX_HEADER_SIZE} bytes, found a header length of {n} \
             (not a safetensors file?)"
        ));
    }
    let rest = (bytes.len() - 8) as u64;
    if n > rest {
        return Err(format!(
            "expected a {n}-byte header after the length prefix, found only {rest} byte(s) \
             (truncated file?)"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let header = std::str::from_utf8(header).map_err(|_| {
        "expected a UTF-8 JSON header, found bytes that are not UTF-8 (corrupt file?)".to_string()
    })?;
    if !header.starts_with('{') {
        return Err(
            "expected the JSON header to start with `{`, found something else (corrupt file?)"
                .to_string(),
        );
    }
    // safetensors 0.4 adds the last data offset to the header length without an
    // overflow check; refuse absurdly large numbers outside JSON strings up front.
    let limit = (usize::MAX / 4) as u128;
    let mut in_string = false;
    let mut escaped = false;
    let mut number: Option<u128> = None;
    for c in header.bytes().chain(std::iter::once(b' ')) {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_digit() {
            let v = number.unwrap_or(0);
            number = Some(v.saturating_mul(10).saturating_add((c - b'0') as u128));
            continue;
        }
        if let Some(v) = number.take() {
            if v > limit {
                return Err(format!(
                    "expected shapes and offsets of at most {limit}, found a header number \
                     {} (corrupt file?)",
                    if v == u128::MAX {
                        "beyond u128".to_string()
                    } else {
                        v.to_string()
                    }
                ));
            }
        }
        if c == b'"' {
            in_string = true;
        }
    }
    Ok(())
}

/// Turns a safetensors parse error into a sentence.
fn describe_st_error(e: SafeTensorError, bytes: &[u8]) -> String {
    match e {
        SafeTensorError::InvalidHeader => {
            "expected a UTF-8 JSON header, found bytes that are not UTF-8".to_string()
        }
        SafeTensorError::InvalidHeaderStart => {
            "expected the JSON header to start with `{`, found something else".to_string()
        }
        SafeTensorError::InvalidHeaderDeserialization => {
            "expected a JSON header mapping tensor names to dtype, shape and data offsets, \
             found something that does not parse as one (corrupt file?)"
                .to_string()
        }
        SafeTensorError::HeaderTooLarge => {
            "expected a header of at most 100000000 bytes, found a larger one".to_string()
        }
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => format!(
            "expected a complete header, found a file of only {} bytes (truncated file?)",
            bytes.len()
        ),
        SafeTensorError::InvalidOffset(name) => format!(
            "expected tensor `{name}`'s data to start where the previous tensor's ends, \
             found other data offsets (corrupt header?)"
        ),
        SafeTensorError::TensorInvalidInfo => {
            "expected each tensor's data size to equal its \
             element count times its dtype size, found a tensor where it does not (corrupt header?)"
                .to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let header_len = bytes
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            format!(
                "expected the tensor data to fill the file exactly after the header, found {} \
                 data byte(s) that do not match the header (truncated file or trailing bytes?)",
                (bytes.len() as u64).saturating_sub(8 + header_len)
            )
        }
        SafeTensorError::ValidationOverflow => {
            "expected tensor sizes that fit in memory, found a shape whose size overflows \
             (corrupt header?)"
                .to_string()
        }
        other => format!("could not parse the file: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A small model: a conv, a BN with running stats, a scalar, an empty tensor.
    const SPECS: &[TensorSpec] = &[
        TensorSpec {
            name: "stem.conv.weight",
            shape: &[4, 3, 3, 3],
            store: Store::Param,
            offset: 0,
        },
        TensorSpec {
            name: "stem.bn.weight",
            shape: &[4],
            store: Store::Param,
            offset: 108,
        },
        TensorSpec {
            name: "stem.bn.bias",
            shape: &[4],
            store: Store::Param,
            offset: 112,
        },
        TensorSpec {
            name: "stem.bn.running_mean",
            shape: &[4],
            store: Store::State,
            offset: 0,
        },
        TensorSpec {
            name: "stem.bn.running_var",
            shape: &[4],
            store: Store::State,
            offset: 4,
        },
        TensorSpec {
            name: "head.scale",
            shape: &[],
            store: Store::Param,
            offset: 116,
        },
        TensorSpec {
            name: "head.empty",
            shape: &[0, 5],
            store: Store::State,
            offset: 8,
        },
    ];
    const N_PARAMS: usize = 117;
    const N_STATE: usize = 8;

    fn model<T: WeightElem + From<f32>>(seed: f32) -> (Vec<T>, Vec<T>) {
        let p = (0..N_PARAMS)
            .map(|i| T::from(seed + i as f32 * 0.25 - 3.0))
            .collect();
        // Non-negative: some are running variances, which are refused below 0.
        let s = (0..N_STATE)
            .map(|i| T::from((seed * 2.0 + i as f32 * 0.5).abs()))
            .collect();
        (p, s)
    }

    fn file_bytes() -> Vec<u8> {
        let (p, s) = model::<f32>(1.0);
        weights_to_bytes(SPECS, &p, &s, None).unwrap()
    }

    /// Serialises arbitrary tensors (name, dtype, shape, raw data) directly.
    fn raw_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, &None).unwrap()
    }

    /// The tensors of SPECS as (name, dtype, shape, bytes), from a default f32 model.
    fn raw_tensors() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        let (p, s) = model::<f32>(1.0);
        SPECS
            .iter()
            .map(|spec| {
                let src = match spec.store {
                    Store::Param => &p[spec.offset..spec.offset + spec.len()],
                    Store::State => &s[spec.offset..spec.offset + spec.len()],
                };
                (
                    spec.name,
                    Dtype::F32,
                    spec.shape.to_vec(),
                    bytemuck::cast_slice(src).to_vec(),
                )
            })
            .collect()
    }

    fn load_err(bytes: &[u8]) -> WeightsError {
        let (mut p, mut s) = model::<f32>(9.0);
        let (p0, s0) = (p.clone(), s.clone());
        let e = weights_from_bytes(
            bytes,
            Path::new("weights.safetensors"),
            SPECS,
            &mut p,
            &mut s,
        )
        .expect_err("load should fail");
        assert_eq!(p, p0, "failed load changed params");
        assert_eq!(s, s0, "failed load changed state");
        let msg = e.to_string();
        assert!(msg.contains("weights.safetensors"), "no path in: {msg}");
        assert!(
            msg.starts_with(|c: char| !c.is_uppercase()),
            "upper-case start: {msg}"
        );
        e
    }

    #[test]
    fn spec_len() {
        assert_eq!(SPECS[0].len(), 108);
        assert_eq!(SPECS[5].len(), 1);
        assert!(SPECS[6].is_empty());
        const L: usize = SPECS[0].len();
        assert_eq!(L, 108);
    }

    #[test]
    fn round_trip_f32_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let (p, s) = model::<f32>(1.5);
        save_weights(&path, SPECS, &p, &s).unwrap();
        let (mut p2, mut s2) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
        load_weights(&path, SPECS, &mut p2, &mut s2).unwrap();
        assert_eq!(p, p2);
        assert_eq!(s, s2);
    }

    #[test]
    fn round_trip_f64_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let (mut p, s) = model::<f64>(-0.75);
        p[3] = std::f64::consts::PI; // not representable in f32
        p[4] = f64::MIN_POSITIVE;
        save_weights(&path, SPECS, &p, &s).unwrap();
        let (mut p2, mut s2) = (vec![0f64; N_PARAMS], vec![0f64; N_STATE]);
        load_weights(&path, SPECS, &mut p2, &mut s2).unwrap();
        assert_eq!(p, p2);
        assert_eq!(s, s2);
    }

    #[test]
    fn file_is_standard_safetensors() {
        let (p, s) = model::<f32>(1.0);
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        meta.insert("a \"quoted\"\nkey".to_string(), "é\u{1}".to_string());
        let bytes = weights_to_bytes(SPECS, &p, &s, Some(meta.clone())).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata(), &Some(meta.into_iter().collect()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), SPECS.len());
        for spec in SPECS {
            let v = st.tensor(spec.name).unwrap();
            assert_eq!(v.dtype(), Dtype::F32);
            assert_eq!(View::shape(&v), spec.shape);
            let src = match spec.store {
                Store::Param => &p[spec.offset..spec.offset + spec.len()],
                Store::State => &s[spec.offset..spec.offset + spec.len()],
            };
            let expect: Vec<u8> = src.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(v.data(), &expect[..], "{}", spec.name);
        }
    }

    #[test]
    fn unaligned_bytes_load() {
        let bytes = file_bytes();
        for shift in 1..8 {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(&bytes);
            let (mut p, mut s) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
            weights_from_bytes(&buf[shift..], Path::new("x"), SPECS, &mut p, &mut s).unwrap();
            assert_eq!((p, s), model::<f32>(1.0));
        }
    }

    #[test]
    fn empty_model_round_trips() {
        let bytes = weights_to_bytes::<f32>(&[], &[], &[], None).unwrap();
        weights_from_bytes::<f32>(&bytes, Path::new("x"), &[], &mut [], &mut []).unwrap();
    }

    #[test]
    fn missing_tensor() {
        let mut t = raw_tensors();
        t.retain(|x| x.0 != "stem.bn.running_var");
        let e = load_err(&raw_file(&t));
        assert!(
            matches!(e, WeightsError::MissingTensor { ref name, .. } if name == "stem.bn.running_var")
        );
        let msg = e.to_string();
        assert!(msg.contains("`stem.bn.running_var`"), "{msg}");
        assert!(msg.contains("[4]"), "{msg}");
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn wrong_shape() {
        let mut t = raw_tensors();
        t[0].2 = vec![4, 27];
        let e = load_err(&raw_file(&t));
        let msg = e.to_string();
        assert!(matches!(e, WeightsError::ShapeMismatch { .. }), "{msg}");
        assert!(msg.contains("`stem.conv.weight`"), "{msg}");
        assert!(msg.contains("[4, 27]"), "{msg}");
        assert!(msg.contains("[4, 3, 3, 3]"), "{msg}");
        let found = msg.find("[4, 27]").unwrap();
        let expected = msg.find("[4, 3, 3, 3]").unwrap();
        assert!(found < expected, "found shape should come first: {msg}");
    }

    #[test]
    fn wrong_shape_message_format() {
        const S: &[TensorSpec] = &[TensorSpec {
            name: "stages.0.units.3.conv2.weight",
            shape: &[12, 24, 3, 3],
            store: Store::Param,
            offset: 0,
        }];
        let data = vec![0u8; 12 * 48 * 9 * 4];
        let bytes = raw_file(&[(S[0].name, Dtype::F32, vec![12, 48, 3, 3], data)]);
        let mut p = vec![0f32; S[0].len()];
        let e = weights_from_bytes(&bytes, Path::new("weights.safetensors"), S, &mut p, &mut [])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `stages.0.units.3.conv2.weight` in weights.safetensors has shape \
             [12, 48, 3, 3], the model expects [12, 24, 3, 3]"
        );
    }

    #[test]
    fn an_f64_file_loads_into_an_f32_model_rounded_to_nearest() {
        let (mut p, s) = model::<f64>(1.0);
        // Between two f32s: rounds up, rounds down, ties to even.
        p[0] = 1.0 + 2f64.powi(-24) + 2f64.powi(-40);
        p[1] = 1.0 + 2f64.powi(-24) - 2f64.powi(-40);
        p[2] = 1.0 + 3.0 * 2f64.powi(-24);
        let bytes = weights_to_bytes(SPECS, &p, &s, None).unwrap();
        let (mut p32, mut s32) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
        weights_from_bytes(
            &bytes,
            Path::new("w.safetensors"),
            SPECS,
            &mut p32,
            &mut s32,
        )
        .unwrap();
        assert_eq!(p32[0], 1.0 + 2f32.powi(-23));
        assert_eq!(p32[1], 1.0);
        assert_eq!(p32[2], 1.0 + 2.0 * 2f32.powi(-23));
        assert!(p32.iter().zip(&p).all(|(&a, &b)| a == b as f32));
        assert!(s32.iter().zip(&s).all(|(&a, &b)| a == b as f32));
        // The exact reader (checkpoints) refuses instead, naming both dtypes.
        let e = weights_from_bytes_exact(
            &bytes,
            Path::new("w.safetensors"),
            SPECS,
            &mut p32,
            &mut s32,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(
                e,
                WeightsError::DtypeMismatch {
                    expected: Dtype::F32,
                    found: Dtype::F64,
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("`stem.conv.weight`"), "{msg}");
    }

    #[test]
    fn an_f32_file_loads_into_an_f64_model_exactly() {
        let (p, s) = model::<f32>(1.5);
        let bytes = weights_to_bytes(SPECS, &p, &s, None).unwrap();
        let (mut p64, mut s64) = (vec![0f64; N_PARAMS], vec![0f64; N_STATE]);
        weights_from_bytes(&bytes, Path::new("w"), SPECS, &mut p64, &mut s64).unwrap();
        assert!(p64.iter().zip(&p).all(|(&a, &b)| a == b as f64));
        assert!(s64.iter().zip(&s).all(|(&a, &b)| a == b as f64));
    }

    #[test]
    fn integer_and_half_tensors_are_still_refused() {
        let mut t = raw_tensors();
        t[0].1 = Dtype::F16;
        let half = t[0].3.len() / 2;
        t[0].3.truncate(half);
        let e = load_err(&raw_file(&t));
        assert!(
            matches!(
                e,
                WeightsError::DtypeMismatch {
                    found: Dtype::F16,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn checks_follow_spec_order() {
        // Spec 1 has the wrong dtype, spec 3 is missing: the dtype error comes first.
        let mut t = raw_tensors();
        t[1].1 = Dtype::I32;
        t.retain(|x| x.0 != "stem.bn.running_mean");
        let e = load_err(&raw_file(&t));
        assert!(
            matches!(e, WeightsError::DtypeMismatch { ref name, found: Dtype::I32, .. } if name == "stem.bn.weight"),
            "{e}"
        );
    }

    #[test]
    fn extra_tensor() {
        let mut t = raw_tensors();
        t.push(("zz.extra", Dtype::F32, vec![2], vec![0; 8]));
        t.push(("aa.extra", Dtype::F64, vec![1, 1], vec![0; 8]));
        let e = load_err(&raw_file(&t));
        let msg = e.to_string();
        assert!(
            matches!(e, WeightsError::UnexpectedTensor { ref name, count: 2, .. } if name == "aa.extra"),
            "{msg}"
        );
        assert!(msg.contains("`aa.extra`"), "{msg}");
        assert!(msg.contains("[1, 1]"), "{msg}");
    }

    #[test]
    fn metadata_is_not_a_tensor() {
        let (p, s) = model::<f32>(1.0);
        let mut meta = BTreeMap::new();
        meta.insert("epoch".to_string(), "12345678901234567890123".to_string());
        let bytes = weights_to_bytes(SPECS, &p, &s, Some(meta)).unwrap();
        let (mut p2, mut s2) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
        weights_from_bytes(&bytes, Path::new("x"), SPECS, &mut p2, &mut s2).unwrap();
        assert_eq!((p2, s2), (p, s));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = file_bytes();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert!(bytes.len() > 8 + header_len + 100);
        for cut in 0..bytes.len() {
            let e = load_err(&bytes[..cut]);
            assert!(matches!(e, WeightsError::Corrupt { .. }), "cut {cut}: {e}");
        }
        // A few through the file system too: inside the length, header and data.
        let dir = tempfile::tempdir().unwrap();
        for cut in [0, 3, 8, 8 + header_len / 2, 8 + header_len, bytes.len() - 1] {
            let path = dir.path().join(format!("cut{cut}.safetensors"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let (mut p, mut s) = model::<f32>(9.0);
            let e = load_weights(&path, SPECS, &mut p, &mut s).unwrap_err();
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!((p, s), model::<f32>(9.0));
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = file_bytes();
        bytes.extend_from_slice(&[0; 4]);
        load_err(&bytes);
    }

    #[test]
    fn empty_file() {
        let e = load_err(&[]);
        assert!(e.to_string().contains("empty"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.safetensors");
        std::fs::write(&path, b"").unwrap();
        let (mut p, mut s) = model::<f32>(9.0);
        let e = load_weights(&path, SPECS, &mut p, &mut s).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn garbage_bytes() {
        load_err(b"this is not a safetensors file at all, just some text\n");
        load_err(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
        // Plausible length prefix followed by junk.
        let mut b = 16u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"not json here!!!");
        load_err(&b);
        // Valid JSON, wrong structure.
        let mut b = 8u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"[1,2,3] ");
        load_err(&b);
        let mut b = 8u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{\"a\":1}");
        b.push(b' ');
        load_err(&b);
        // Invalid UTF-8 in the header.
        let mut b = 4u64.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
        load_err(&b);
        // Header length near u64::MAX.
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        load_err(&b);

        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.gen_range(0..200);
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len >= 8 && rng.gen_bool(0.5) {
                // Make the length prefix plausible so the header parser runs.
                let n = rng.gen_range(0..=(len as u64 - 8));
                b[..8].copy_from_slice(&n.to_le_bytes());
                if n > 0 {
                    b[8] = b'{';
                }
            }
            load_err(&b);
        }
    }

    #[test]
    fn corrupted_headers_never_panic() {
        let bytes = file_bytes();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..8 + header_len {
            for _ in 0..3 {
                let mut b = bytes.clone();
                b[i] = rng.gen();
                let (mut p, mut s) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
                // Either a clean error or (e.g. a changed padding byte) a good load.
                if weights_from_bytes(&b, Path::new("x"), SPECS, &mut p, &mut s).is_ok() {
                    assert_eq!((p, s), model::<f32>(1.0));
                }
            }
        }
    }

    #[test]
    fn overflowing_offsets_are_an_error() {
        let big = usize::MAX - 4;
        let header =
            format!("{{\"w\":{{\"dtype\":\"U8\",\"shape\":[{big}],\"data_offsets\":[0,{big}]}}}}");
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        load_err(&b);
        let header =
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999999999],\"data_offsets\":[0,4]}}";
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[0; 4]);
        load_err(&b);
    }

    #[test]
    fn nonexistent_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-file.safetensors");
        let (mut p, mut s) = model::<f32>(9.0);
        let e = load_weights(&path, SPECS, &mut p, &mut s).unwrap_err();
        assert!(matches!(e, WeightsError::Read { .. }));
        assert!(e.to_string().contains("no-such-file.safetensors"), "{e}");
        assert_eq!((p, s), model::<f32>(9.0));
    }

    #[test]
    fn failed_load_leaves_model_unchanged() {
        // The last spec is wrong; every earlier tensor is fine and must not be copied.
        let mut t = raw_tensors();
        let last = t.len() - 1;
        t[last].2 = vec![5, 0];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, raw_file(&t)).unwrap();
        let (mut p, mut s) = model::<f32>(9.0);
        let e = load_weights(&path, SPECS, &mut p, &mut s).unwrap_err();
        assert!(matches!(e, WeightsError::ShapeMismatch { .. }), "{e}");
        assert_eq!((p, s), model::<f32>(9.0));
    }

    #[test]
    fn specs_out_of_bounds() {
        let (p, s) = model::<f32>(1.0);
        // Params too short.
        let e = weights_to_bytes(SPECS, &p[..N_PARAMS - 1], &s, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, WeightsError::SpecOutOfBounds { ref name, .. } if name == "head.scale"),
            "{msg}"
        );
        assert!(msg.contains("`head.scale`") && msg.contains("116"), "{msg}");
        // State too short, on load and save.
        let bytes = file_bytes();
        let (mut p2, mut s2) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE - 1]);
        let e = weights_from_bytes(&bytes, Path::new("m.st"), SPECS, &mut p2, &mut s2).unwrap_err();
        assert!(
            matches!(
                e,
                WeightsError::SpecOutOfBounds {
                    store: Store::State,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("m.st"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let e = save_weights(&path, SPECS, &p, &s[..2]).unwrap_err();
        assert!(e.to_string().contains("w.safetensors"), "{e}");
        assert!(!path.exists());
        let e = load_weights(&path, SPECS, &mut p2, &mut s2).unwrap_err();
        assert!(matches!(e, WeightsError::SpecOutOfBounds { .. }), "{e}");
        // Overflowing offset and shape.
        const HUGE: &[TensorSpec] = &[TensorSpec {
            name: "x",
            shape: &[usize::MAX, 2],
            store: Store::Param,
            offset: 0,
        }];
        assert!(weights_to_bytes::<f32>(HUGE, &[0.0], &[], None).is_err());
        const FAR: &[TensorSpec] = &[TensorSpec {
            name: "x",
            shape: &[2],
            store: Store::Param,
            offset: usize::MAX,
        }];
        assert!(weights_to_bytes::<f32>(FAR, &[0.0], &[], None).is_err());
    }

    #[test]
    fn duplicate_spec_names() {
        const DUP: &[TensorSpec] = &[
            TensorSpec {
                name: "a",
                shape: &[1],
                store: Store::Param,
                offset: 0,
            },
            TensorSpec {
                name: "a",
                shape: &[1],
                store: Store::State,
                offset: 0,
            },
        ];
        let e = weights_to_bytes::<f32>(DUP, &[1.0], &[2.0], None).unwrap_err();
        assert!(matches!(e, WeightsError::DuplicateSpec { .. }), "{e}");
        assert!(e.to_string().contains("`a`"), "{e}");
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_is_atomic_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let (p, s) = model::<f32>(1.0);
        save_weights(&path, SPECS, &p, &s).unwrap();
        assert_eq!(dir_entries(dir.path()), vec!["weights.safetensors"]);

        // Overwrite with different values.
        let (p2, s2) = model::<f32>(-4.0);
        save_weights(&path, SPECS, &p2, &s2).unwrap();
        assert_eq!(dir_entries(dir.path()), vec!["weights.safetensors"]);
        let (mut p3, mut s3) = (vec![0f32; N_PARAMS], vec![0f32; N_STATE]);
        load_weights(&path, SPECS, &mut p3, &mut s3).unwrap();
        assert_eq!((p3, s3), (p2, s2));

        // Overwriting a bigger unrelated file leaves exactly the new contents.
        std::fs::write(&path, vec![0xAB; 100_000]).unwrap();
        save_weights(&path, SPECS, &p, &s).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), file_bytes());
        assert_eq!(dir_entries(dir.path()), vec!["weights.safetensors"]);
    }

    #[test]
    fn failed_save_leaves_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let (p, s) = model::<f32>(1.0);
        save_weights(&path, SPECS, &p, &s).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(save_weights(&path, SPECS, &p[..10], &s).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(dir_entries(dir.path()), vec!["weights.safetensors"]);

        // Target is a directory: the rename fails, the temp file is cleaned up.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("keep"), b"x").unwrap();
        let e = save_weights(&sub, SPECS, &p, &s).unwrap_err();
        assert!(matches!(e, WeightsError::Write { .. }), "{e}");
        assert!(e.to_string().contains("sub"), "{e}");
        assert_eq!(dir_entries(dir.path()), vec!["sub", "weights.safetensors"]);
    }

    #[test]
    fn save_into_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("weights.safetensors");
        let (p, s) = model::<f32>(1.0);
        let e = save_weights(&path, SPECS, &p, &s).unwrap_err();
        assert!(matches!(e, WeightsError::Write { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
