//! sparsenet: SparseNet-family convolutional networks declared with one
//! macro invocation and compiled into fully specialised programs.
//!
//! ```
//! use sparsenet::prelude::*;
//!
//! sparsenet! {
//!     /// The seed notebook's 2018-02-20 network at depth 40, growth 12.
//!     pub struct SeedNet40 {
//!         style: seed_2018_02_20,
//!         input: [3, 32, 32],
//!         classes: 10,
//!         depth: 40,
//!         growth: 12,
//!     }
//! }
//! assert_eq!(SeedNet40::<f32>::PARAMETERS, 185_314);
//! ```

// Lets the generated code's `::sparsenet::runtime` paths resolve inside
// this crate too.
extern crate self as sparsenet;

pub mod zoo;

pub use sparsenet_macros::sparsenet;
pub use sparsenet_runtime as runtime;

/// Everything a user of a generated model needs in scope.
pub mod prelude {
    pub use crate::runtime::ndarray::{Array2, Array4, ArrayView4};
    pub use crate::runtime::{LayerInfo, Mode, Model, NetworkSpec};
    pub use crate::sparsenet;
}
