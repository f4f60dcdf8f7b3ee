//! The macro's core on `proc_macro2` streams: parse, validate, plan, emit.

use crate::ast::Invocation;
use crate::errors::Errors;
use crate::{config, emit, plan, summary};
use proc_macro2::TokenStream;

pub fn expand(input: TokenStream) -> TokenStream {
    match try_expand(input) {
        Ok(ts) => ts,
        Err(e) => e.to_compile_error(),
    }
}

pub fn try_expand(input: TokenStream) -> syn::Result<TokenStream> {
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
    errors.finish()?;
    let mut out = TokenStream::new();
    for cfg in &configs {
        let plan = plan::build(cfg);
        let table = summary::render(cfg, &plan);
        out.extend(emit::emit(cfg, &plan, &table));
    }
    Ok(out)
}
