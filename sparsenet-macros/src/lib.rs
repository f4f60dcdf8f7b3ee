//! The `sparsenet!` macro. A thin entry point: the work happens on
//! `proc_macro2` token streams in [`expand`], so unit tests can call it.
//!
//! Data flow: [`ast`] parses the invocation, [`config`] validates it and
//! resolves the style's defaults, [`plan`] works out the whole network
//! (buffers, layers, parameters, shapes, MACs), and [`emit`] writes Rust code
//! from the plan alone. [`summary`] renders the plan as a table.
//! For the GPU path, [`gpu_plan`] places every buffer in device memory and
//! [`emit_gpu`] writes the CUDA C kernels and their launch sequences;
//! [`expand`] calls both emitters and assembles what they write, with
//! [`facade`]'s items (the traits' constants without naming the element
//! type) and [`wrap`]'s module around them; [`tokens`] holds the token
//! helpers the emitters share. [`cost_check`] refuses what only the
//! planned cost shows (a large input with a stride-1 stem).
//! (These modules are private: `cargo doc --document-private-items` shows
//! them to contributors; users see the macro's reference below.)
#![allow(rustdoc::private_intra_doc_links)]

mod ast;
mod config;
mod cost_check;
mod emit;
mod emit_gpu;
mod errors;
mod expand;
mod facade;
mod gpu_plan;
mod plan;
mod summary;
mod tokens;
mod wrap;

/// Declares one or more SparseNet-family networks; see the crate README for
/// the full reference.
///
/// ```ignore
/// sparsenet! {
///     /// The seed notebook's 2018-02-20 network, depth 40, growth 12.
///     pub struct SeedNet40 {
///         style: seed_2018_02_20,
///         input: [3, 32, 32],
///         classes: 10,
///         depth: 40,
///         growth: 12,
///     }
/// }
/// ```
#[proc_macro]
pub fn sparsenet(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand::expand(input.into()).into()
}

#[cfg(test)]
mod tests;
