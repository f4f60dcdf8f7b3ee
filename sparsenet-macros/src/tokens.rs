//! Token helpers that both emitters use.

use proc_macro2::TokenStream;
use quote::quote;

/// The runtime crate as generated code reaches it.
pub fn rt() -> TokenStream {
    quote!(::sparsenet::runtime)
}

/// `text` as a raw string literal (`r#"..."#`, enough `#`s), so that its
/// lines stay lines in the formatted expansion (`Name::EXPANSION`): a
/// change in a multi-line text then diffs line by line, not as one
/// escaped line. The same `&str` as a plain literal.
pub fn raw_str(text: &str) -> TokenStream {
    let mut hashes = 1;
    while text.contains(&format!("\"{}", "#".repeat(hashes))) {
        hashes += 1;
    }
    let h = "#".repeat(hashes);
    let lit: proc_macro2::Literal = format!("r{h}\"{text}\"{h}")
        .parse()
        .expect("a raw string literal parses");
    quote!(#lit)
}
