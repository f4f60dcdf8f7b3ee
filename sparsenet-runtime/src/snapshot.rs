//! A declared network's description as plain text, for snapshot tests
//! (`insta::assert_snapshot!`): what each function returns depends only on
//! the declaration, so a changed snapshot is a changed network.
//!
//! Beside these: `Name::summary()` (the layer table with shapes and
//! counts), `Name::EXPANSION` (the generated Rust code, with the
//! `expansion` feature) and `Name::GPU_PROGRAM.source` (the generated
//! CUDA C).
//!
//! The `sparsenet` crate's documentation ("Snapshot tests") shows them in use.

use crate::model::NetworkSpec;
use std::fmt::Write;

/// One line per tensor, in storage order: dotted name, shape, store (its
/// running statistics are `state`) and offset in that store.
pub fn tensors_table<N: NetworkSpec>() -> String {
    let mut out = String::new();
    for t in N::tensors() {
        let _ = writeln!(out, "{} {:?} {} @{}", t.name, t.shape, t.store, t.offset);
    }
    out
}

/// One line per layer, in execution order: name, operation, the sources it
/// concatenates (newest first), channels and sizes in and out, parameters
/// and multiply-adds per image.
pub fn layers_table<N: NetworkSpec>() -> String {
    let mut out = String::new();
    for l in N::layers() {
        let _ = writeln!(
            out,
            "{} {} <- {} | {}x{}x{} -> {}x{}x{} | {} params, {} MACs",
            l.name,
            l.op,
            l.sources.join(", "),
            l.in_channels,
            l.in_size.0,
            l.in_size.1,
            l.out_channels,
            l.out_size.0,
            l.out_size.1,
            l.params,
            l.macs
        );
    }
    out
}
