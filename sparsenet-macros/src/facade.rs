//! What a user reads about a network without naming its element type:
//! inherent items on `Name<f32>` mirroring `NetworkSpec`'s and
//! `GpuNetwork`'s (`Net::PARAMETERS`, `Net::summary()`,
//! `Net::GPU_PROGRAM`). Without them `Net::PARAMETERS` is E0283 ("type
//! annotations needed": `Net<T>` could be any element type) while
//! `Net::summary()` works: one rule for some items, another for the rest.
//! Inherent items are found before trait items, so `Net::X` takes these;
//! `Net::<f64>::X` and generic code still reach the traits' (the same
//! values: none depends on the element type). Each is the trait's item,
//! not a copy of its value, so the two cannot differ.

use crate::tokens::rt;
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// `impl Name<f32> { ... }`: every constant and function of `NetworkSpec`,
/// and `GpuNetwork::GPU_PROGRAM`.
pub fn emit_facade(name: &Ident) -> TokenStream {
    let rt = rt();
    let spec = quote!(<Self as #rt::NetworkSpec>);
    quote! {
        /// The network's description without naming the element type
        /// (`Net::PARAMETERS`, `Net::summary()`, `Net::GPU_PROGRAM`; the
        /// same for every element type).
        impl #name<f32> {
            /// The network's name as declared (`NetworkSpec::NAME`).
            pub const NAME: &'static str = #spec::NAME;
            /// `[channels, height, width]` of one input image (`NetworkSpec::INPUT`).
            pub const INPUT: [usize; 3] = #spec::INPUT;
            /// Number of classes, the width of the logits (`NetworkSpec::CLASSES`).
            pub const CLASSES: usize = #spec::CLASSES;
            /// Trainable parameters (`NetworkSpec::PARAMETERS`).
            pub const PARAMETERS: usize = #spec::PARAMETERS;
            /// Length of the running-statistics store (`NetworkSpec::STATE_LEN`).
            pub const STATE_LEN: usize = #spec::STATE_LEN;
            /// Multiply-adds of one forward pass per image (`NetworkSpec::MACS_PER_IMAGE`).
            pub const MACS_PER_IMAGE: u64 = #spec::MACS_PER_IMAGE;
            /// Floats per image of every activation a forward pass produces
            /// (`NetworkSpec::ACTIVATIONS_PER_IMAGE`).
            pub const ACTIVATIONS_PER_IMAGE: usize = #spec::ACTIVATIONS_PER_IMAGE;
            /// Floats per image alive at the peak of an inference pass
            /// (`NetworkSpec::PEAK_INFERENCE_PER_IMAGE`).
            pub const PEAK_INFERENCE_PER_IMAGE: usize = #spec::PEAK_INFERENCE_PER_IMAGE;
            /// The GPU program: CUDA C source, kernels and launch sequences
            /// (`GpuNetwork::GPU_PROGRAM`).
            pub const GPU_PROGRAM: #rt::gpu::GpuProgram = <Self as #rt::gpu::GpuNetwork>::GPU_PROGRAM;
            /// The layer table (`NetworkSpec::summary`).
            pub fn summary() -> &'static str {
                #spec::summary()
            }
            /// Every parameter and statistic tensor (`NetworkSpec::tensors`).
            pub fn tensors() -> &'static [#rt::TensorSpec] {
                #spec::tensors()
            }
            /// Every layer (`NetworkSpec::layers`).
            pub fn layers() -> &'static [#rt::LayerInfo] {
                #spec::layers()
            }
            /// The inference graph, node by node (`NetworkSpec::graph`).
            pub fn graph() -> &'static [#rt::GraphNode] {
                #spec::graph()
            }
        }
    }
}
