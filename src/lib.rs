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
//!
//! # Training
//!
//! [`runtime::train::Trainer`] trains any declared model: build it from a
//! [`TrainConfig`](runtime::train::TrainConfig), the training and test
//! [`Dataset`](runtime::data::Dataset)s and their normalisation, then run
//! it epoch by epoch ([`run_epoch`](runtime::train::Trainer::run_epoch)) or
//! whole ([`fit`](runtime::train::Trainer::fit), or
//! [`train`](runtime::train::train) in one call). Every epoch leaves
//! `checkpoint.safetensors`, `metrics.csv` and `metrics.png` in the output
//! folder, and a trainer built with `resume` continues from them exactly.
//! The `train` example is a command line over it. Here a tiny network
//! learns whether the bright half of an 8x8 image is its top or its bottom:
//!
//! ```
//! use sparsenet::prelude::*;
//! use sparsenet::runtime::data::{Dataset, Transform};
//! use sparsenet::runtime::train::{TrainConfig, TrainError, Trainer};
//! use std::sync::Arc;
//!
//! sparsenet! {
//!     struct Tiny { style: paper, input: [1, 8, 8], classes: 2, units: [2, 2], growth: 4 }
//! }
//!
//! /// `n` images, alternately bright on top (label 0) and at the bottom (1).
//! fn halves(n: usize) -> Dataset {
//!     let image = |label: usize| (0..64).map(move |i| if i / 32 == label { 200 } else { 30 });
//!     Dataset {
//!         pixels: (0..n).flat_map(|i| image(i % 2)).collect(),
//!         labels: (0..n).map(|i| (i % 2) as u16).collect(),
//!         len: n,
//!         channels: 1,
//!         height: 8,
//!         width: 8,
//!         classes: 2,
//!         class_names: vec!["top".into(), "bottom".into()],
//!         source: "halves".into(),
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let out = tempfile::tempdir()?;
//! let mut cfg = TrainConfig::new(2, out.path()); // 2 epochs, SGD, cosine schedule
//! cfg.batch_size = 16;
//! cfg.lr.warmup_epochs = 0.0;
//! (cfg.pad_crop, cfg.hflip) = (1, true); // augmentation: random crop and flip
//! cfg.resume = true; // continue from out/checkpoint.safetensors if it exists
//! cfg.seed = 1;
//! let (train, test) = (Arc::new(halves(128)), Arc::new(halves(32)));
//! let transform = Transform::from_dataset_stats(&train);
//!
//! let (tr, te, t) = (train.clone(), test.clone(), transform.clone());
//! let mut trainer = Trainer::<Tiny, _>::cpu(cfg.clone(), tr, te, t)?;
//! assert_eq!(trainer.steps_per_epoch(), 8);
//! while !trainer.is_finished() {
//!     let record = trainer.run_epoch()?;
//!     println!("epoch {}: test accuracy {:.2}", record.epoch, record.test_acc);
//! }
//! let (test_loss, test_acc) = trainer.evaluate()?;
//! println!("test loss {test_loss:.3}, accuracy {test_acc:.2}");
//! assert_eq!(trainer.metrics().records().last().unwrap().test_acc, test_acc);
//! let model: Tiny = trainer.into_model();
//! assert!(out.path().join("checkpoint.safetensors").exists());
//!
//! // A trainer built again with `resume` starts where the run stopped: done.
//! let mut again = Trainer::<Tiny, _>::cpu(cfg, train, test, transform)?;
//! assert_eq!((again.epoch(), again.step()), (2, 16));
//! assert!(again.is_finished());
//! assert!(matches!(again.run_epoch(), Err(TrainError::Finished { epochs: 2 })));
//! assert_eq!(again.model().params(), model.params());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

// Lets the generated code's `::sparsenet::runtime` paths resolve inside
// this crate too.
extern crate self as sparsenet;

// The README's Rust examples run as doctests, so that it cannot fall behind
// the code.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod zoo;

// The macro's reference for users (`cargo doc`): docs/declaring.md, which
// the README links to; its examples run as doctests.
#[doc = include_str!("../docs/declaring.md")]
pub use sparsenet_macros::sparsenet;
/// The runtime: the model contract, the CPU and GPU backends, weights,
/// data and training (`sparsenet_runtime`, re-exported).
pub use sparsenet_runtime as runtime;

/// Everything a user of a generated model needs in scope: the macro, the
/// traits its networks implement and the array types they take and return.
pub mod prelude {
    pub use crate::runtime::ndarray::{Array2, Array4, ArrayView4};
    pub use crate::runtime::{Float, LayerInfo, Mode, Model, NetworkSpec};
    pub use crate::sparsenet;
}
