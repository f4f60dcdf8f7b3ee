//! The macro's core on `proc_macro2` streams: parse, validate, plan, emit.
//! It calls the two emitters side by side on the same plan, [`emit`] for the
//! CPU model and [`emit_gpu`] for the GPU program, and assembles their items;
//! neither emitter knows the other.

use crate::ast::Invocation;
use crate::errors::Errors;
use crate::{config, cost_check, emit, emit_gpu, facade, plan, summary, wrap};
use proc_macro2::TokenStream;

pub fn expand(input: TokenStream) -> TokenStream {
    match try_expand(input) {
        Ok(ts) => ts,
        Err(e) => e.to_compile_error(),
    }
}

pub fn try_expand(input: TokenStream) -> syn::Result<TokenStream> {
    try_expand_with(input, cfg!(feature = "expansion"))
}

/// [`try_expand`], with `Name::EXPANSION` only when `with_expansion` (and
/// the feature compiled in): the macro's own snapshot tests expand without
/// it, so that they do not depend on which features a workspace build
/// happened to unify.
pub fn try_expand_with(input: TokenStream, with_expansion: bool) -> syn::Result<TokenStream> {
    let inv: Invocation = syn::parse2(input)?;
    let mut errors = Errors::default();
    // Two declarations of one name would each emit the same type and impls:
    // say so once, at the second name, instead of rustc's errors over both.
    let mut seen = std::collections::BTreeMap::new();
    for decl in &inv.nets {
        let name = decl.ident.to_string();
        if seen.insert(name.clone(), ()).is_some() {
            errors.push(
                decl.ident.span(),
                format!(
                    "a network named `{name}` is already declared in this invocation: give each network its own name"
                ),
            );
        }
    }
    let configs: Vec<_> = inv
        .nets
        .into_iter()
        .filter_map(|decl| config::resolve(decl, &mut errors))
        .collect();
    // Each valid declaration's plan, and what only its cost can show: all
    // errors are reported before any code is emitted.
    let plans: Vec<_> = configs
        .iter()
        .map(|cfg| {
            let plan = plan::build(cfg);
            cost_check::check(cfg, &plan, &mut errors);
            plan
        })
        .collect();
    errors.finish()?;
    let mut out = TokenStream::new();
    for (cfg, plan) in configs.iter().zip(&plans) {
        let table = summary::render(cfg, plan);
        // The CPU model and the GPU program, from the same plan, and the
        // items that reach both without naming the element type.
        let cpu = emit::emit(cfg, plan, &table);
        let gpu = emit_gpu::emit_gpu(&cfg.ident, plan);
        let facade = facade::emit_facade(&cfg.ident);
        let (type_and_spec, model) = (cpu.type_and_spec, cpu.model);
        let code = quote::quote!(#type_and_spec #gpu #facade #model);
        let expansion = if with_expansion {
            expansion_const(&cfg.ident, &code)
        } else {
            TokenStream::new()
        };
        out.extend(wrap::wrap(cfg, quote::quote!(#code #expansion)));
    }
    Ok(out)
}

/// Without the `expansion` feature, no `Name::EXPANSION`.
#[cfg(not(feature = "expansion"))]
fn expansion_const(_: &syn::Ident, _: &TokenStream) -> TokenStream {
    TokenStream::new()
}

/// With the `expansion` feature: `Name::EXPANSION`, the network's generated
/// items (all of them but this constant, without the module `wrap` puts
/// them in, whose name changes with every change of the declaration)
/// formatted by prettyplease, so that a user's test can snapshot it (insta)
/// and see any change of the expansion as a diff of readable Rust.
#[cfg(feature = "expansion")]
fn expansion_const(name: &syn::Ident, code: &TokenStream) -> TokenStream {
    let text = match syn::parse2::<syn::File>(code.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        // Cannot happen for code the macro emits; if it did, the raw tokens
        // still show what changed.
        Err(_) => code.to_string(),
    };
    quote::quote! {
        impl #name<f32> {
            /// The Rust code `sparsenet!` generated for this network (all of
            /// it but this constant and the private module that holds it,
            /// re-exported under the declared name), formatted by
            /// prettyplease: snapshot it
            /// (`insta::assert_snapshot!(Name::EXPANSION)`) to see any change
            /// of the expansion. Present with sparsenet's `expansion` feature.
            pub const EXPANSION: &'static str = #text;
        }
    }
}
