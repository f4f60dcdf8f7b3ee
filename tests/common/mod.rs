//! Shared helpers for the integration tests: fixture loading and error metrics.
#![allow(dead_code)]

use sparsenet::runtime::ndarray::{Array, ArrayD, IxDyn};
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads tensors of a safetensors file as f64 arrays (F32, F64 or I64).
pub struct Tensors {
    bytes: Vec<u8>,
}

impl Tensors {
    pub fn open(name: &str) -> Self {
        let path = fixture(name);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Tensors { bytes }
    }

    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.names().into_iter().cloned().collect()
    }

    pub fn get(&self, name: &str) -> ArrayD<f64> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
        let data = t.data();
        let vals: Vec<f64> = match t.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("unexpected dtype {d:?}"),
        };
        Array::from_shape_vec(IxDyn(t.shape()), vals).unwrap()
    }
}

/// max |a - b| / max |b|: the error relative to the reference's scale.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}
