//! Error accumulation: report every mistake of an invocation at once, each
//! at the span of the token it is about (the pattern of serde_derive's Ctxt).

use proc_macro2::Span;
use std::fmt::Display;

#[derive(Default)]
pub struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    pub fn push(&mut self, span: Span, msg: impl Display) {
        self.errors.push(syn::Error::new(span, msg));
    }

    pub fn push_error(&mut self, e: syn::Error) {
        self.errors.push(e);
    }

    /// Ok if no error was pushed, else all of them combined into one.
    pub fn finish(self) -> syn::Result<()> {
        let mut iter = self.errors.into_iter();
        match iter.next() {
            None => Ok(()),
            Some(mut first) => {
                for e in iter {
                    first.combine(e);
                }
                Err(first)
            }
        }
    }
}

impl Errors {
    pub fn len(&self) -> usize {
        self.errors.len()
    }
}
