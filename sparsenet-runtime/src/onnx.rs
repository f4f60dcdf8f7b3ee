//! ONNX export of any declared network: its inference graph
//! ([`NetworkSpec::graph`](crate::NetworkSpec::graph)) as Conv, BatchNormalization, Relu, Concat,
//! AveragePool / MaxPool, GlobalAveragePool, Flatten and Gemm nodes (opset
//! 17, IR version 8), every weight and running statistic an initializer
//! under its tensor name, the batch dimension symbolic (`batch`). Input
//! `input` `[batch, C, H, W]`, output `logits` `[batch, classes]`: what
//! [`Model::infer`] computes. `tests/onnx_export.rs` checks the files with
//! onnxruntime against our logits.
//!
//! The protobuf messages are the subset of `onnx.proto` the export writes,
//! with its field numbers, encoded by `prost`.

use crate::files::write_atomically;
use crate::model::{GraphNode, GraphOp, Model};
use crate::weights::Store;
use prost::Message;
use std::path::{Path, PathBuf};

/// The opset the graph uses (BatchNormalization-15, the rest unchanged
/// since opset 13 or earlier).
pub const OPSET: i64 = 17;
/// The ONNX IR version of opset 17.
pub const IR_VERSION: i64 = 8;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be written (the old file, if any, is unchanged).
    #[error("cannot write ONNX file {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A weight or statistic is NaN or infinite: the exported model would
    /// compute NaN.
    #[error("tensor `{name}` holds a non-finite value at element {index}: nothing was exported")]
    NonFinite {
        /// The tensor.
        name: &'static str,
        /// The flat index of its first non-finite value.
        index: usize,
    },
}

/// The ONNX file of `model`, as bytes (deterministic: the same model gives
/// the same bytes).
pub fn to_onnx_bytes<M: Model<f32>>(model: &M) -> Result<Vec<u8>, OnnxError> {
    Ok(build::<M>(model)?.encode_to_vec())
}

/// Writes the ONNX file of `model` to `path`, atomically (a temporary file
/// renamed over it).
pub fn save_onnx<M: Model<f32>>(model: &M, path: &Path) -> Result<(), OnnxError> {
    let bytes = to_onnx_bytes(model)?;
    write_atomically(path, &bytes).map_err(|source| OnnxError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The ONNX model of `model`: its tensors as initializers, its graph as
/// nodes, a batch of any size in and logits out.
fn build<M: Model<f32>>(model: &M) -> Result<ModelProto, OnnxError> {
    let initializer = initializers(model)?;
    let mut node = Vec::new();
    for g in M::graph() {
        let x = node_input(g, &mut node);
        op_nodes(g, x, &mut node);
    }
    let [c, h, w] = M::INPUT;
    let batch = || Dimension {
        value: Some(dimension::Value::DimParam("batch".into())),
    };
    let fixed = |n: usize| Dimension {
        value: Some(dimension::Value::DimValue(n as i64)),
    };
    let value = |name: &str, dims: Vec<Dimension>| ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim: dims }),
            }),
        }),
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "sparsenet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{}: exported by sparsenet", M::NAME),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        graph: Some(GraphProto {
            node,
            name: M::NAME.to_string(),
            initializer,
            input: vec![value("input", vec![batch(), fixed(c), fixed(h), fixed(w)])],
            output: vec![value("logits", vec![batch(), fixed(M::CLASSES)])],
        }),
    })
}

/// Every parameter and running statistic of `model` as an initializer
/// under its PyTorch-style name; an error at the first non-finite value.
fn initializers<M: Model<f32>>(model: &M) -> Result<Vec<TensorProto>, OnnxError> {
    let mut initializer = Vec::new();
    for t in M::tensors() {
        let store = match t.store {
            Store::Param => model.params(),
            Store::State => model.state(),
        };
        let data = &store[t.offset..t.offset + t.len()];
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(OnnxError::NonFinite {
                name: t.name,
                index,
            });
        }
        initializer.push(TensorProto {
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: t.name.to_string(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
    }

    Ok(initializer)
}

/// The nodes that build a graph node's input (the concatenation of its
/// sources, then its BatchNorm and ReLU); returns the input's name.
fn node_input(g: &GraphNode, node: &mut Vec<NodeProto>) -> String {
    let out = g.output;
    let mut x = match g.inputs {
        [one] => one.to_string(),
        many => {
            let name = format!("{out}/concat");
            node.push(node_proto(
                "Concat",
                many.iter().map(|s| s.to_string()).collect(),
                &name,
                vec![int("axis", 1)],
            ));
            name
        }
    };
    if let Some(bn) = g.pre {
        let p = bn.prefix;
        let name = format!("{out}/bn");
        node.push(node_proto(
            "BatchNormalization",
            vec![
                x,
                format!("{p}.weight"),
                format!("{p}.bias"),
                format!("{p}.running_mean"),
                format!("{p}.running_var"),
            ],
            &name,
            vec![float("epsilon", bn.eps as f32)],
        ));
        x = name;
        if bn.relu {
            let name = format!("{out}/relu");
            node.push(node_proto("Relu", vec![x], &name, vec![]));
            x = name;
        }
    }
    x
}

/// The nodes of a graph node's own operation on its input `x`.
fn op_nodes(g: &GraphNode, x: String, node: &mut Vec<NodeProto>) {
    let out = g.output;
    match g.op {
        GraphOp::Conv {
            weight,
            bias,
            kernel,
            stride,
            pad,
        } => {
            let mut inputs = vec![x, weight.to_string()];
            inputs.extend(bias.map(str::to_string));
            let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
            node.push(node_proto(
                "Conv",
                inputs,
                out,
                vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ],
            ));
        }
        GraphOp::AvgPool { kernel, stride } => {
            let (k, s) = (kernel as i64, stride as i64);
            node.push(node_proto(
                "AveragePool",
                vec![x],
                out,
                vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s])],
            ));
        }
        GraphOp::MaxPool {
            kernel,
            stride,
            pad,
        } => {
            let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
            node.push(node_proto(
                "MaxPool",
                vec![x],
                out,
                vec![
                    ints("kernel_shape", &[k, k]),
                    ints("strides", &[s, s]),
                    ints("pads", &[p, p, p, p]),
                ],
            ));
        }
        GraphOp::Identity => node.push(node_proto("Identity", vec![x], out, vec![])),
        GraphOp::GapDense { weight, bias } => {
            let gap = format!("{out}/global_avg_pool");
            node.push(node_proto("GlobalAveragePool", vec![x], &gap, vec![]));
            let flat = format!("{out}/flatten");
            node.push(node_proto(
                "Flatten",
                vec![gap],
                &flat,
                vec![int("axis", 1)],
            ));
            node.push(node_proto(
                "Gemm",
                vec![flat, weight.to_string(), bias.to_string()],
                out,
                vec![int("transB", 1)],
            ));
        }
    }
}

fn node_proto(
    op: &str,
    input: Vec<String>,
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input,
        output: vec![output.to_string()],
        name: format!("{output}/{op}"),
        op_type: op.to_string(),
        attribute,
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INT,
        i,
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_FLOAT,
        f,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INTS,
        ints: v.to_vec(),
        ..Default::default()
    }
}

// onnx.proto's enums: TensorProto.DataType.FLOAT, AttributeProto.AttributeType.
const FLOAT: i32 = 1;
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_INTS: i32 = 7;

// The messages of onnx.proto the export writes (field numbers as there;
// repeated scalars unpacked, as proto2 writes them).

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TypeTensor>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeTensor {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(oneof = "dimension::Value", tags = "1, 2")]
    value: Option<dimension::Value>,
}

mod dimension {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(int64, tag = "1")]
        DimValue(i64),
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_encode_as_onnx_proto_writes_them() {
        // AttributeProto{name: "axis", type: INT, i: 1}: name (1, len 4),
        // i (3, varint 1), type (20, varint 2).
        let bytes = int("axis", 1).encode_to_vec();
        assert_eq!(
            bytes,
            [0x0a, 4, b'a', b'x', b'i', b's', 0x18, 1, 0xa0, 0x01, 2]
        );
        // Repeated int64 unpacked: one key per element (8 << 3 | 0 = 0x40).
        let bytes = ints("strides", &[2, 3]).encode_to_vec();
        assert!(
            bytes.windows(4).any(|w| w == [0x40, 2, 0x40, 3]),
            "{bytes:?}"
        );
    }
}
