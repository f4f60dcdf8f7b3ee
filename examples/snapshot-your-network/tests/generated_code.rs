//! Snapshot tests of what `sparsenet!` generates for this crate's network.
//! A change anywhere (the declaration, or a sparsenet version that
//! generates other code) fails them with a diff; `cargo insta review`
//! accepts the new snapshots. The snapshots are in `tests/snapshots/`.

use similar::TextDiff;
use snapshot_your_network::{MyNet, MyNet100};
use sparsenet::runtime::gpu::{GpuNetwork, Precision};
use sparsenet::runtime::snapshot::{layers_table, tensors_table};

/// The generated Rust code, formatted (the `expansion` feature).
#[test]
fn generated_rust() {
    insta::assert_snapshot!(MyNet::EXPANSION);
}

/// The layer table: shapes, concatenated channels, parameters, MACs.
#[test]
fn summary() {
    insta::assert_snapshot!(MyNet::summary());
}

/// Every layer's sources (newest first), sizes and counts.
#[test]
fn layers() {
    insta::assert_snapshot!(layers_table::<MyNet>());
}

/// Tensor names, shapes and places: what a weights file must hold.
#[test]
fn tensor_names() {
    insta::assert_snapshot!(tensors_table::<MyNet>());
}

/// The CUDA C the GPU path compiles (as NVRTC gets it, TF32 convolutions).
#[test]
fn cuda_source() {
    insta::assert_snapshot!(<MyNet as GpuNetwork>::GPU_PROGRAM.full_source(Precision::Tf32));
}

/// What a change of one key (classes 10 -> 100) does to the generated code,
/// as a unified diff: the snapshot a reviewer reads when a declaration
/// changes. (Here both versions are compiled side by side; in a real crate
/// the `generated_rust` snapshot fails with this diff.)
#[test]
fn one_changed_key_is_a_readable_diff() {
    let before = MyNet::EXPANSION.replace("MyNet", "NET");
    let after = MyNet100::EXPANSION.replace("MyNet100", "NET");
    let diff = TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(1)
        .header("classes: 10", "classes: 100")
        .to_string();
    insta::assert_snapshot!(diff);
}
