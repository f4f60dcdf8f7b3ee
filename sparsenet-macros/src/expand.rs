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
