//! Training checkpoints: model, optimiser state and progress in one safetensors
//! file.
//!
//! A checkpoint holds
//!
//! * every model tensor under its own name (parameters and batch-norm state, as
//!   in a plain weights file written by [`save_weights`](crate::weights::save_weights)),
//! * the SGD velocity of each parameter tensor under
//!   `optimizer.velocity.<parameter name>`,
//! * `__metadata__` strings: `format` (`sparsenet-checkpoint`),
//!   `format_version`, `model`, `epoch` (completed epochs), `step` (global
//!   step), `seed`, and the caller's extra entries (for instance `config`, a
//!   JSON string of the run configuration).
//!
//! Saving is atomic ([`write_atomically`]): a crash at any moment leaves either
//! the previous checkpoint or the new one. Loading checks everything (file
//! structure, metadata, model name, every tensor's name, dtype and shape) before
//! it writes to the caller's buffers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use safetensors::SafeTensors;

use crate::files::{excerpt, write_atomically};
use crate::float::Float;
use crate::weights::{
    weights_from_bytes, weights_from_bytes_exact, weights_to_bytes, Store, TensorSpec, WeightsError,
};

/// Value of the `format` metadata entry.
pub const CHECKPOINT_FORMAT: &str = "sparsenet-checkpoint";
/// Value of the `format_version` metadata entry written by this version.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Prefix of the optimiser's velocity tensors.
pub const VELOCITY_PREFIX: &str = "optimizer.velocity.";

/// Metadata keys written by [`save_checkpoint`] itself; extra entries may not use
/// them.
pub const RESERVED_KEYS: [&str; 6] = ["format", "format_version", "model", "epoch", "step", "seed"];

/// Where training stands: saved with, and restored from, a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TrainProgress {
    /// Completed epochs.
    pub epoch: u64,
    /// Completed optimisation steps (global, over all epochs).
    pub step: u64,
    /// Seed of the run (initialisation, shuffling, augmentation).
    pub seed: u64,
    /// Name of the model; a checkpoint only loads into the same model.
    pub model: String,
    /// Free-form entries, e.g. `config` -> JSON of the run configuration. Keys
    /// must not be one of [`RESERVED_KEYS`].
    pub extra: BTreeMap<String, String>,
}

/// Everything that can go wrong while saving or loading a checkpoint. Every
/// message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing, or the tensors of the file (missing, extra, wrong shape
    /// or dtype, truncated or corrupt file).
    #[error("checkpoint {}: {source}", .path.display())]
    Weights {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WeightsError,
    },
    /// The file is a valid safetensors file but not a checkpoint of this format
    /// (a plain weights file, a missing or malformed metadata entry).
    #[error("{} is not a usable training checkpoint: {reason}", .path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong with its metadata.
        reason: String,
    },
    /// The checkpoint was written for another model.
    #[error(
        "checkpoint {} is for model `{found}`, but the model being loaded is `{expected}`",
        .path.display()
    )]
    ModelMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The model being loaded.
        expected: String,
        /// The model the checkpoint was written for.
        found: String,
    },
    /// The velocity does not have one element per parameter.
    #[error(
        "checkpoint {}: expected the optimiser velocity to have one element per parameter \
         ({expected}), found {found} elements",
        .path.display()
    )]
    VelocityLength {
        /// The checkpoint file.
        path: PathBuf,
        /// The number of parameters.
        expected: usize,
        /// The number of velocity elements.
        found: usize,
    },
    /// An extra metadata key collides with one the checkpoint writes itself.
    #[error(
        "checkpoint {}: extra metadata key `{key}` is reserved (reserved keys: {})",
        .path.display(),
        RESERVED_KEYS.join(", ")
    )]
    ReservedKey {
        /// The checkpoint file.
        path: PathBuf,
        /// The reserved key.
        key: String,
    },
}

/// Saves a training checkpoint to `path`, atomically: model tensors from
/// `params` and `state` as described by `specs`, the optimiser `velocity` (same
/// layout as `params`), and `progress`.
pub fn save_checkpoint<T: Float>(
    path: &Path,
    specs: &[TensorSpec],
    params: &[T],
    state: &[T],
    velocity: &[T],
    progress: &TrainProgress,
) -> Result<(), CheckpointError> {
    if velocity.len() != params.len() {
        return Err(CheckpointError::VelocityLength {
            path: path.to_path_buf(),
            expected: params.len(),
            found: velocity.len(),
        });
    }
    let mut metadata = BTreeMap::new();
    for (k, v) in &progress.extra {
        if RESERVED_KEYS.contains(&k.as_str()) {
            return Err(CheckpointError::ReservedKey {
                path: path.to_path_buf(),
                key: k.clone(),
            });
        }
        metadata.insert(k.clone(), v.clone());
    }
    metadata.insert("format".into(), CHECKPOINT_FORMAT.into());
    metadata.insert(
        "format_version".into(),
        CHECKPOINT_FORMAT_VERSION.to_string(),
    );
    metadata.insert("model".into(), progress.model.clone());
    metadata.insert("epoch".into(), progress.epoch.to_string());
    metadata.insert("step".into(), progress.step.to_string());
    metadata.insert("seed".into(), progress.seed.to_string());

    let weights_err = |source| CheckpointError::Weights {
        path: path.to_path_buf(),
        source,
    };
    let all_specs = with_velocity_specs(specs, state.len());
    let mut state_and_velocity = Vec::with_capacity(state.len() + velocity.len());
    state_and_velocity.extend_from_slice(state);
    state_and_velocity.extend_from_slice(velocity);
    let bytes = weights_to_bytes(&all_specs, params, &state_and_velocity, Some(metadata))
        .map_err(weights_err)?;
    write_atomically(path, &bytes).map_err(|source| {
        weights_err(WeightsError::Write {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Loads the checkpoint at `path` into `params`, `state` and `velocity` (same
/// layout as `params`) as described by `specs`, and returns the saved progress.
///
/// The file must be a checkpoint of this format holding exactly the model's
/// tensors (and one velocity per parameter tensor) with the model's shapes and
/// dtype `T`; on any error the outputs are left unchanged. The stored model name
/// is returned in the progress, not checked: use [`load_checkpoint_for`] to
/// refuse another model's checkpoint with an error naming both models.
pub fn load_checkpoint<T: Float>(
    path: &Path,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
    velocity: &mut [T],
) -> Result<TrainProgress, CheckpointError> {
    load_impl(path, None, specs, params, state, velocity)
}

/// As [`load_checkpoint`], and also checks that the checkpoint was written for
/// the model named `model` ([`CheckpointError::ModelMismatch`] names both). The
/// model check comes first, so loading another model's checkpoint reports the
/// model names rather than the first differing tensor.
pub fn load_checkpoint_for<T: Float>(
    path: &Path,
    model: &str,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
    velocity: &mut [T],
) -> Result<TrainProgress, CheckpointError> {
    load_impl(path, Some(model), specs, params, state, velocity)
}

/// Reads only the progress (metadata) of the checkpoint at `path`, e.g. to find
/// the model name and seed before building the model. The file's structure is
/// fully checked; its tensors are not compared with any model.
pub fn read_checkpoint_progress(path: &Path) -> Result<TrainProgress, CheckpointError> {
    let bytes = read_file(path)?;
    // Validate the structure through `weights_from_bytes` with an empty model:
    // a well-formed file fails only with "unexpected tensor" (or loads, when it
    // holds no tensors at all).
    match weights_from_bytes::<f32>(&bytes, path, &[], &mut [], &mut []) {
        Ok(()) | Err(WeightsError::UnexpectedTensor { .. }) => {}
        Err(source) => {
            return Err(CheckpointError::Weights {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    parse_progress(path, &bytes)
}

// ---------------------------------------------------------------------------
// Internals

fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|source| CheckpointError::Weights {
        path: path.to_path_buf(),
        source: WeightsError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn load_impl<T: Float>(
    path: &Path,
    expected_model: Option<&str>,
    specs: &[TensorSpec],
    params: &mut [T],
    state: &mut [T],
    velocity: &mut [T],
) -> Result<TrainProgress, CheckpointError> {
    if velocity.len() != params.len() {
        return Err(CheckpointError::VelocityLength {
            path: path.to_path_buf(),
            expected: params.len(),
            found: velocity.len(),
        });
    }
    let bytes = read_file(path)?;
    let all_specs = with_velocity_specs(specs, state.len());
    let mut new_params = vec![T::zero(); params.len()];
    let mut new_state = vec![T::zero(); state.len() + velocity.len()];
    // Exact: a checkpoint resumes bit for bit, so an f64 run does not
    // continue in f32 (export its weights with `save` and load those).
    let loaded =
        weights_from_bytes_exact(&bytes, path, &all_specs, &mut new_params, &mut new_state);
    let weights_err = |source| CheckpointError::Weights {
        path: path.to_path_buf(),
        source,
    };
    let progress = match loaded {
        Ok(()) => parse_progress(path, &bytes)?,
        // These come after safetensors parsed the file, so its metadata can be
        // read safely; a wrong model or format explains them better.
        Err(
            e @ (WeightsError::MissingTensor { .. }
            | WeightsError::DtypeMismatch { .. }
            | WeightsError::ShapeMismatch { .. }
            | WeightsError::UnexpectedTensor { .. }),
        ) => {
            let progress = parse_progress(path, &bytes)?;
            check_model(path, expected_model, &progress)?;
            return Err(weights_err(e));
        }
        Err(e) => return Err(weights_err(e)),
    };
    check_model(path, expected_model, &progress)?;
    params.copy_from_slice(&new_params);
    let (s, v) = new_state.split_at(state.len());
    state.copy_from_slice(s);
    velocity.copy_from_slice(v);
    Ok(progress)
}

fn check_model(
    path: &Path,
    expected: Option<&str>,
    progress: &TrainProgress,
) -> Result<(), CheckpointError> {
    match expected {
        Some(m) if m != progress.model => Err(CheckpointError::ModelMismatch {
            path: path.to_path_buf(),
            expected: m.to_string(),
            found: progress.model.clone(),
        }),
        _ => Ok(()),
    }
}

/// Parses the metadata of `bytes`, which must already have passed the
/// structural checks of `weights_from_bytes` (safetensors' own parser is not
/// hardened against every corrupt header).
fn parse_progress(path: &Path, bytes: &[u8]) -> Result<TrainProgress, CheckpointError> {
    let meta_err = |reason: String| CheckpointError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| meta_err(format!("cannot read the header: {e}")))?;
    let mut meta: HashMap<String, String> = metadata.metadata().clone().ok_or_else(|| {
        meta_err(
            "expected `__metadata__` with the training progress, found none (a plain weights \
             file? load it with `load_weights`)"
                .to_string(),
        )
    })?;
    match meta.remove("format") {
        Some(f) if f == CHECKPOINT_FORMAT => {}
        Some(f) => {
            return Err(meta_err(format!(
                "expected metadata `format` = `{CHECKPOINT_FORMAT}`, found `{}`",
                excerpt(&f)
            )))
        }
        None => {
            return Err(meta_err(format!(
                "expected metadata `format` = `{CHECKPOINT_FORMAT}`, found no `format` entry \
                 (a plain weights file? load it with `load_weights`)"
            )))
        }
    }
    let mut take = |key: &str| {
        meta.remove(key)
            .ok_or_else(|| meta_err(format!("expected metadata entry `{key}`, found none")))
    };
    let number = |key: &str, v: String| {
        v.parse::<u64>().map_err(|_| {
            meta_err(format!(
                "expected metadata `{key}` to be a non-negative integer, found `{}`",
                excerpt(&v)
            ))
        })
    };
    let version = take("format_version")?;
    let version = number("format_version", version)?;
    if version != CHECKPOINT_FORMAT_VERSION as u64 {
        return Err(meta_err(format!(
            "expected checkpoint format version {CHECKPOINT_FORMAT_VERSION}, found version \
             {version} (written by a different version of sparsenet?)"
        )));
    }
    let model = take("model")?;
    let epoch = take("epoch")?;
    let step = take("step")?;
    let seed = take("seed")?;
    Ok(TrainProgress {
        epoch: number("epoch", epoch)?,
        step: number("step", step)?,
        seed: number("seed", seed)?,
        model,
        extra: meta.into_iter().collect(),
    })
}

/// `specs` plus one velocity spec per parameter spec. The velocity tensors live
/// in the state store after the model's `state_len` state elements, at their
/// parameter's offset: the caller passes `[state, velocity]` concatenated.
fn with_velocity_specs(specs: &[TensorSpec], state_len: usize) -> Vec<TensorSpec> {
    let mut all = specs.to_vec();
    for spec in specs.iter().filter(|s| s.store == Store::Param) {
        all.push(TensorSpec {
            name: velocity_name(spec.name),
            shape: spec.shape,
            store: Store::State,
            // An overflow here is caught by the spec checks of `weights.rs`.
            offset: state_len.saturating_add(spec.offset),
        });
    }
    all
}

/// `optimizer.velocity.<name>` as a `&'static str` ([`TensorSpec`] names are
/// static). Each distinct name is allocated once and kept for the life of the
/// process: a model has a fixed, small set of parameter names.
fn velocity_name(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&n) = names.get(name) {
        return n;
    }
    let full: &'static str = Box::leak(format!("{VELOCITY_PREFIX}{name}").into_boxed_str());
    names.insert(name.to_string(), full);
    full
}

/// Loads a model's weights file saved by [`Model::save`](crate::Model::save)
/// or a checkpoint of [`crate::train::Trainer`].
pub fn load_weights_any<M: crate::Model<f32>>(
    model: &mut M,
    path: &Path,
) -> Result<(), CheckpointError> {
    if model.load(path).is_ok() {
        return Ok(());
    }
    let mut velocity = vec![0.0f32; M::PARAMETERS];
    let (p, s) = model.stores_mut();
    load_checkpoint_for(path, M::NAME, M::tensors(), p, s, &mut velocity)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conv, a BN with running statistics, a scalar and an empty tensor.
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
            shape: &[0, 3],
            store: Store::Param,
            offset: 117,
        },
    ];
    const N_PARAMS: usize = 117;
    const N_STATE: usize = 8;

    struct Run<T> {
        params: Vec<T>,
        state: Vec<T>,
        velocity: Vec<T>,
    }

    /// Values with awkward bit patterns (subnormals, negative zero, NaN-free).
    fn run<T: Float>(salt: f64) -> Run<T> {
        let f = |i: usize, k: f64| {
            T::from_f64c(((i as f64 + salt) * k).sin() * 10f64.powi((i % 7) as i32 - 3))
        };
        let mut params: Vec<T> = (0..N_PARAMS).map(|i| f(i, 1.3)).collect();
        params[5] = T::from_f64c(-0.0);
        params[6] = T::min_positive_value() / T::from_f64c(4.0);
        Run {
            params,
            // Positive: some are running variances, which load refuses below 0.
            state: (0..N_STATE).map(|i| f(i, 0.7).abs()).collect(),
            velocity: (0..N_PARAMS).map(|i| f(i, 2.9)).collect(),
        }
    }

    fn progress() -> TrainProgress {
        let mut extra = BTreeMap::new();
        extra.insert(
            "config".to_string(),
            r#"{"batch_size":64,"schedule":"step:0.5,0.75","note":"quotes \" and unicode é"}"#
                .to_string(),
        );
        extra.insert("git".to_string(), "abc123".to_string());
        TrainProgress {
            epoch: 17,
            step: 17 * 782,
            seed: u64::MAX - 1,
            model: "sparsenet-bc-40-k24".to_string(),
            extra,
        }
    }

    fn bits<T: Float>(v: &[T]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    fn assert_same<T: Float>(a: &Run<T>, b: &Run<T>) {
        assert_eq!(bits(&a.params), bits(&b.params));
        assert_eq!(bits(&a.state), bits(&b.state));
        assert_eq!(bits(&a.velocity), bits(&b.velocity));
    }

    fn save<T: Float>(path: &Path, r: &Run<T>, p: &TrainProgress) -> Result<(), CheckpointError> {
        save_checkpoint(path, SPECS, &r.params, &r.state, &r.velocity, p)
    }

    fn load<T: Float>(path: &Path, r: &mut Run<T>) -> Result<TrainProgress, CheckpointError> {
        load_checkpoint(path, SPECS, &mut r.params, &mut r.state, &mut r.velocity)
    }

    fn round_trip<T: Float>() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let a = run::<T>(1.0);
        save(&path, &a, &progress()).unwrap();
        let mut b = run::<T>(5.0);
        let p = load(&path, &mut b).unwrap();
        assert_eq!(p, progress());
        assert_same(&a, &b);
        assert_eq!(read_checkpoint_progress(&path).unwrap(), progress());
        let mut c = run::<T>(5.0);
        let p = load_checkpoint_for(
            &path,
            "sparsenet-bc-40-k24",
            SPECS,
            &mut c.params,
            &mut c.state,
            &mut c.velocity,
        )
        .unwrap();
        assert_eq!(p, progress());
        assert_same(&a, &c);
    }

    #[test]
    fn round_trip_is_bitwise() {
        round_trip::<f32>();
        round_trip::<f64>();
    }

    #[test]
    fn file_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let a = run::<f32>(1.0);
        save(&path, &a, &progress()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        let mut expected: Vec<String> = SPECS.iter().map(|s| s.name.to_string()).collect();
        for s in SPECS.iter().filter(|s| s.store == Store::Param) {
            expected.push(format!("optimizer.velocity.{}", s.name));
        }
        expected.sort();
        assert_eq!(names.into_iter().cloned().collect::<Vec<_>>(), expected);
        let v = st.tensor("optimizer.velocity.stem.bn.weight").unwrap();
        assert_eq!(v.shape(), &[4]);
        assert_eq!(
            v.data(),
            bytemuck::cast_slice::<f32, u8>(&a.velocity[108..112])
        );
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta["format"], "sparsenet-checkpoint");
        assert_eq!(meta["format_version"], "1");
        assert_eq!(meta["model"], "sparsenet-bc-40-k24");
        assert_eq!(meta["epoch"], "17");
        assert_eq!(meta["step"], (17 * 782).to_string());
        assert_eq!(meta["seed"], (u64::MAX - 1).to_string());
        assert_eq!(meta["config"], progress().extra["config"]);
        // The model tensors alone load as plain weights once the velocity is gone:
        // the names are the model's own.
        let mut p = vec![0f32; N_PARAMS];
        let mut s = vec![0f32; N_STATE];
        let e = crate::weights::load_weights(&path, SPECS, &mut p, &mut s).unwrap_err();
        assert!(e.to_string().contains("optimizer.velocity."), "{e}");
    }

    /// Identical saves write identical bytes (the metadata's key order used
    /// to follow a HashMap's, different from one save to the next), and the
    /// metadata comes first in the header, keys sorted.
    #[test]
    fn identical_saves_write_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = run::<f32>(1.0);
        let files: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let path = dir.path().join(format!("ckpt{i}.safetensors"));
                save(&path, &a, &progress()).unwrap();
                std::fs::read(&path).unwrap()
            })
            .collect();
        for (i, f) in files.iter().enumerate() {
            assert!(f == &files[0], "save {i} differs from save 0");
        }
        let len = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&files[0][8..8 + len]).unwrap();
        assert_eq!(len % 8, 0);
        let keys = [
            "config",
            "epoch",
            "format",
            "format_version",
            "git",
            "model",
            "seed",
            "step",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| header.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(
            header.starts_with("{\"__metadata__\":{\"config\":"),
            "{header}"
        );
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{header}");
    }

    #[test]
    fn wrong_model_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let a = run::<f32>(1.0);
        save(&path, &a, &progress()).unwrap();
        let mut b = run::<f32>(5.0);
        let e = load_checkpoint_for(
            &path,
            "densenet-40",
            SPECS,
            &mut b.params,
            &mut b.state,
            &mut b.velocity,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CheckpointError::ModelMismatch { .. }), "{msg}");
        assert!(
            msg.contains("`densenet-40`") && msg.contains("`sparsenet-bc-40-k24`"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_same(&b, &run::<f32>(5.0));

        // Another model's tensors too: the model names are still what is reported.
        const OTHER: &[TensorSpec] = &[TensorSpec {
            name: "fc.weight",
            shape: &[2, 2],
            store: Store::Param,
            offset: 0,
        }];
        let (mut p, mut v) = (vec![1f32; 4], vec![2f32; 4]);
        let e = load_checkpoint_for(&path, "tiny", OTHER, &mut p, &mut [], &mut v).unwrap_err();
        assert!(matches!(e, CheckpointError::ModelMismatch { .. }), "{e}");
        assert_eq!((p, v), (vec![1f32; 4], vec![2f32; 4]));
        // Without a model name, the tensor mismatch is reported.
        let (mut p, mut v) = (vec![1f32; 4], vec![2f32; 4]);
        let e = load_checkpoint(&path, OTHER, &mut p, &mut [], &mut v).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Weights {
                    source: WeightsError::MissingTensor { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn wrong_dtype_and_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        save(&path, &run::<f64>(1.0), &progress()).unwrap();
        let mut b = run::<f32>(5.0);
        let e = load(&path, &mut b).unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError::Weights {
                    source: WeightsError::DtypeMismatch { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_same(&b, &run::<f32>(5.0));
        // The velocity must have the parameters' length.
        let mut short = vec![0f32; N_PARAMS - 1];
        let e = load_checkpoint(&path, SPECS, &mut b.params, &mut b.state, &mut short).unwrap_err();
        assert!(matches!(e, CheckpointError::VelocityLength { .. }), "{e}");
        let r = run::<f32>(1.0);
        let e =
            save_checkpoint(&path, SPECS, &r.params, &r.state, &short, &progress()).unwrap_err();
        assert!(e.to_string().contains("116 elements"), "{e}");
    }

    #[test]
    fn reserved_extra_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut p = progress();
        p.extra.insert("epoch".into(), "3".into());
        let e = save(&path, &run::<f32>(1.0), &p).unwrap_err();
        assert!(
            matches!(e, CheckpointError::ReservedKey { ref key, .. } if key == "epoch"),
            "{e}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn plain_weights_file_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = run::<f32>(1.0);
        crate::weights::save_weights(&path, SPECS, &a.params, &a.state).unwrap();
        let e = read_checkpoint_progress(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::Metadata { .. }), "{e}");
        assert!(e.to_string().contains("plain weights"), "{e}");
        let mut b = run::<f32>(5.0);
        let e = load(&path, &mut b).unwrap_err();
        assert!(matches!(e, CheckpointError::Metadata { .. }), "{e}");
        assert_same(&b, &run::<f32>(5.0));
    }

    /// Writes a checkpoint whose metadata is `meta` exactly.
    fn with_metadata(path: &Path, meta: &[(&str, &str)]) {
        let a = run::<f32>(1.0);
        let specs = with_velocity_specs(SPECS, N_STATE);
        let mut sv = a.state.clone();
        sv.extend_from_slice(&a.velocity);
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = weights_to_bytes(&specs, &a.params, &sv, Some(meta)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn bad_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let good = [
            ("format", "sparsenet-checkpoint"),
            ("format_version", "1"),
            ("model", "m"),
            ("epoch", "1"),
            ("step", "2"),
            ("seed", "3"),
        ];
        with_metadata(&path, &good);
        let mut b = run::<f32>(5.0);
        let p = load(&path, &mut b).unwrap();
        assert_eq!((p.epoch, p.step, p.seed, p.model.as_str()), (1, 2, 3, "m"));
        assert!(p.extra.is_empty());

        let cases: Vec<(usize, &str, &str)> = vec![
            (0, "other-format", "`other-format`"),
            (1, "2", "version 2"),
            (1, "x", "`x`"),
            (3, "-1", "`epoch`"),
            (4, "1.5", "`step`"),
            (5, "", "`seed`"),
        ];
        for (i, value, needle) in cases {
            let mut meta = good.to_vec();
            meta[i].1 = value;
            with_metadata(&path, &meta);
            let mut b = run::<f32>(5.0);
            let e = load(&path, &mut b).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, CheckpointError::Metadata { .. }), "{msg}");
            assert!(msg.contains(needle), "{needle}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_same(&b, &run::<f32>(5.0));
        }
        for missing in 0..good.len() {
            let mut meta = good.to_vec();
            let key = meta.remove(missing).0;
            with_metadata(&path, &meta);
            let e = load(&path, &mut run::<f32>(5.0)).unwrap_err();
            assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}");
        }
    }

    #[test]
    fn truncated_and_corrupt_files_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        save(&path, &run::<f32>(1.0), &progress()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.safetensors");
        for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let mut b = run::<f32>(5.0);
            let e = load(&bad, &mut b).unwrap_err();
            assert!(e.to_string().contains("bad.safetensors"), "cut {cut}: {e}");
            assert_same(&b, &run::<f32>(5.0));
            assert!(read_checkpoint_progress(&bad).is_err(), "cut {cut}");
        }
        // Flipped bytes anywhere: a clean error or (e.g. in padding or tensor
        // data) a load; never a panic.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..600 {
            let mut b = bytes.clone();
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
            std::fs::write(&bad, &b).unwrap();
            let mut r = run::<f32>(5.0);
            let _ = load(&bad, &mut r);
            let _ = read_checkpoint_progress(&bad);
        }
        // Missing file.
        let e = load(&dir.path().join("nope.safetensors"), &mut run::<f32>(5.0)).unwrap_err();
        assert!(e.to_string().contains("nope.safetensors"), "{e}");
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
    fn interrupted_save_keeps_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let old = run::<f32>(1.0);
        save(&path, &old, &progress()).unwrap();
        let old_bytes = std::fs::read(&path).unwrap();
        let new = run::<f32>(2.0);
        let mut new_progress = progress();
        new_progress.epoch += 1;

        // 1. A process killed mid-write leaves a partial temporary file next to
        //    the checkpoint (write_atomically writes `.<name>.<random>.tmp`, then
        //    renames). The checkpoint itself is untouched and loads.
        save(&dir.path().join("full"), &new, &new_progress).unwrap();
        let full = std::fs::read(dir.path().join("full")).unwrap();
        std::fs::remove_file(dir.path().join("full")).unwrap();
        let partial = dir.path().join(".ckpt.safetensors.a1b2c3.tmp");
        std::fs::write(&partial, &full[..full.len() / 2]).unwrap();
        let mut b = run::<f32>(5.0);
        assert_eq!(load(&path, &mut b).unwrap(), progress());
        assert_same(&b, &old);
        // The next save replaces the checkpoint and leaves the stale file alone.
        save(&path, &new, &new_progress).unwrap();
        let mut b = run::<f32>(5.0);
        assert_eq!(load(&path, &mut b).unwrap(), new_progress);
        assert_same(&b, &new);
        std::fs::remove_file(&partial).unwrap();
        std::fs::write(&path, &old_bytes).unwrap();

        // 2. A save that fails after writing the temporary file (the rename
        //    fails: the target is a directory) removes its temporary file.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = save(&sub, &new, &new_progress).unwrap_err();
        assert!(e.to_string().contains("sub"), "{e}");
        assert_eq!(dir_entries(dir.path()), vec!["ckpt.safetensors", "sub"]);
        std::fs::remove_dir(&sub).unwrap();

        // 3. A save that cannot create its temporary file (read-only directory;
        //    skipped when running as root, where permissions do not apply).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(dir.path(), perms(0o555)).unwrap();
            let probe = dir.path().join("probe");
            let enforced = std::fs::write(&probe, b"x").is_err();
            if enforced {
                let e = save(&path, &new, &new_progress).unwrap_err();
                assert!(e.to_string().contains("ckpt.safetensors"), "{e}");
            } else {
                std::fs::remove_file(&probe).unwrap();
            }
            std::fs::set_permissions(dir.path(), perms(0o755)).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), old_bytes);

        // 4. A save with bad inputs fails before writing anything.
        assert!(save_checkpoint(
            &path,
            SPECS,
            &new.params[..50],
            &new.state,
            &new.velocity[..50],
            &new_progress
        )
        .is_err());
        let mut b = run::<f32>(5.0);
        assert_eq!(load(&path, &mut b).unwrap(), progress());
        assert_same(&b, &old);
        assert_eq!(dir_entries(dir.path()), vec!["ckpt.safetensors"]);
    }

    #[test]
    fn velocity_names_are_interned() {
        let a = velocity_name("x.weight");
        let b = velocity_name("x.weight");
        assert_eq!(a, "optimizer.velocity.x.weight");
        assert!(std::ptr::eq(a, b));
    }
}
