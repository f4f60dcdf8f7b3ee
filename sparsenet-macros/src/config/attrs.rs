//! The attributes of a declaration: doc comments go on the generated
//! struct; `#[cfg]` and lint levels on everything generated for the
//! network; anything else is refused at the attribute, a derive with what
//! the macro implements itself (a derived `Debug` would conflict with it).

use crate::errors::Errors;
use syn::{Attribute, Ident};

/// The traits the generated type implements, as messages list them.
const IMPLEMENTED: &str = "`Clone`, `Debug`, `Model`, `NetworkSpec` and `GpuNetwork`";
/// Derivable traits the macro implements itself.
const DERIVED_BY_THE_MACRO: [&str; 2] = ["Clone", "Debug"];
/// Lint levels, accepted on a declaration. (`forbid` is not: the generated
/// code allows some lints for its own items.)
const LINT_LEVELS: [&str; 4] = ["allow", "expect", "warn", "deny"];

/// A declaration's accepted attributes by where they go.
pub struct Attrs {
    /// Doc comments: on the struct.
    pub docs: Vec<Attribute>,
    /// `#[cfg]` and lint levels: on every item generated for the network.
    pub items: Vec<Attribute>,
}

/// Sorts `attrs` of network `ident`, reporting the ones not accepted.
pub fn sort(attrs: Vec<Attribute>, ident: &Ident, errors: &mut Errors) -> Attrs {
    let mut out = Attrs {
        docs: Vec::new(),
        items: Vec::new(),
    };
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("doc") {
            out.docs.push(attr);
        } else if path.is_ident("cfg") || LINT_LEVELS.iter().any(|l| path.is_ident(l)) {
            out.items.push(attr);
        } else if path.is_ident("derive") {
            errors.push_error(syn::Error::new_spanned(&attr, derive_message(&attr, ident)));
        } else {
            let name = path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("::");
            errors.push_error(syn::Error::new_spanned(
                &attr,
                format!("`#[{name}]` is not accepted on a network declaration: only doc comments, `#[cfg(...)]` and lint levels (`#[allow(...)]`, `#[expect(...)]`, `#[warn(...)]`, `#[deny(...)]`) are"),
            ));
        }
    }
    out
}

/// Why `#[derive(...)]` on network `ident` is refused: the traits the macro
/// already implements if the derive names one, else what it implements.
fn derive_message(attr: &Attribute, ident: &Ident) -> String {
    let mut derived = Vec::new();
    // A derive list that does not parse is still refused, by the second message.
    let _ = attr.parse_nested_meta(|meta| {
        if let Some(last) = meta.path.segments.last() {
            derived.push(last.ident.to_string());
        }
        Ok(())
    });
    let already: Vec<String> = derived
        .iter()
        .filter(|d| DERIVED_BY_THE_MACRO.contains(&d.as_str()))
        .map(|d| format!("`{d}`"))
        .collect();
    if already.is_empty() {
        format!("a network takes no derives: `sparsenet!` implements {IMPLEMENTED} for `{ident}`; implement other traits by hand on `{ident}<T>`")
    } else {
        format!(
            "`sparsenet!` already implements {} for `{ident}` (it implements {IMPLEMENTED}): remove this `#[derive]`",
            already.join(" and ")
        )
    }
}
