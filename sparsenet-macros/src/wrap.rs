//! Where a network's items go: a private module of its own, re-exported
//! under the declared name and visibility.
//!
//! Why: two declarations of one name in one invocation are caught by
//! `expand`, but not in two invocations (or a network named like another
//! item of the module), and there rustc reported a dozen errors: the name
//! twice, then every trait impl and inherent item of the type twice, all
//! resolving to the first struct. In modules of their own the two types
//! are distinct and their impls do not collide; the only error left is the
//! name re-exported twice, at the second declaration's name (the module
//! and the re-export carry the name's span for that; rustc then adds a
//! help to rename the import with `as`, shown on the declaration). The module's
//! name carries the declaration's fingerprint, so that two different
//! declarations of one name give different modules (byte-identical ones
//! still give a second error, at the same name).

use crate::config::Config;
use proc_macro2::{Ident, TokenStream};
use quote::quote;

/// The network's `items` in their module, and the re-export.
pub fn wrap(cfg: &Config, items: TokenStream) -> TokenStream {
    let name = &cfg.ident;
    let vis = &cfg.vis;
    let attrs = &cfg.item_attrs;
    let module = Ident::new(
        &format!("__sparsenet_{name}_{:016x}", cfg.fingerprint),
        name.span(),
    );
    quote! {
        #(#attrs)*
        #[allow(non_snake_case)]
        mod #module {
            // The declaring module's names, so that intra-doc links in the
            // network's doc comments resolve as written there.
            #[allow(unused_imports)]
            use super::*;
            #items
        }
        #(#attrs)*
        #[allow(unused_imports)]
        #vis use #module::#name;
    }
}
