//! A user's crate declaring its own network, as the README's "Snapshot
//! your network" section describes; `tests/generated_code.rs` snapshots
//! everything `sparsenet!` generates for it.

use sparsenet::sparsenet;

sparsenet! {
    /// A small SparseNet for 3x32x32 images: two stages of four bottleneck
    /// units, growth 8, exponential aggregation.
    pub struct MyNet {
        style: paper,
        input: [3, 32, 32],
        classes: 10,
        units: [4, 4],
        growth: 8,
        bottleneck: true,
    }

    /// `MyNet` with one key changed (classes 10 -> 100): the test
    /// `one_changed_key_is_a_readable_diff` snapshots what that changes in
    /// the generated code.
    pub struct MyNet100 {
        style: paper,
        input: [3, 32, 32],
        classes: 100,
        units: [4, 4],
        growth: 8,
        bottleneck: true,
    }
}
