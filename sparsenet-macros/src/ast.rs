//! Syntax of an invocation: `$(#[attr])* $vis struct Name { key: value, ... }`,
//! repeated. Values are untyped here; [`crate::config`] gives them meaning.

use proc_macro2::{Punct, Spacing, Span, TokenStream, TokenTree};
use std::fmt::Display;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{braced, bracketed, parenthesized, Attribute, Ident, Lit, Token, Visibility};

pub struct Invocation {
    pub nets: Vec<NetDecl>,
}

pub struct NetDecl {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    /// Span of the `{ ... }` body, for "missing key" errors.
    pub body_span: Span,
    pub fields: Vec<Field>,
    /// A hash of the declaration as written (attributes, visibility, name
    /// and settings), which tells two declarations of one name apart (see
    /// `wrap`).
    pub fingerprint: u64,
}

/// FNV-1a over `text`: stable across Rust versions and platforms, unlike
/// std's `DefaultHasher`, so the names built from it are too.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub struct Field {
    pub key: Ident,
    pub value: Value,
}

/// An untyped value: `12`, `0.5`, `true`, `dense`, `[6, 12]`, `conv3x3(24)`.
pub enum Value {
    Int(syn::LitInt),
    Float(syn::LitFloat),
    Bool(syn::LitBool),
    /// Any other literal (a string, a char): always a type error later.
    OtherLit(Lit),
    Ident(Ident),
    List(Span, Vec<Value>),
    /// `(a, b, ...)`: never valid, but parsed so that the error can name
    /// the list it probably means (`input: (3, 32, 32)`).
    Tuple(Span, Vec<Value>),
    Call(Ident, Span, Vec<Value>),
    /// `-` (its span) before a number literal: never valid, but parsed so
    /// that the error can say so at the whole `-1e-5` and the other
    /// settings are still checked.
    Neg(Span, Box<Value>),
}

/// An error underlining everything from `start` to `end`. A single [`Span`]
/// cannot cover several tokens on stable Rust (`Span::join` is nightly-only),
/// but syn renders an error spanned by a token stream from its first token
/// to its last.
pub fn error_between(start: Span, end: Span, msg: impl Display) -> syn::Error {
    let mut a = Punct::new('-', Spacing::Alone);
    a.set_span(start);
    let mut b = Punct::new('-', Spacing::Alone);
    b.set_span(end);
    let tokens: TokenStream = [TokenTree::Punct(a), TokenTree::Punct(b)]
        .into_iter()
        .collect();
    syn::Error::new_spanned(tokens, msg)
}

/// `item, item, ...` with an optional trailing comma, up to the end of the
/// (delimited) stream; a missing comma is reported with `what` for context.
fn comma_separated<T>(
    input: ParseStream,
    mut item: impl FnMut(ParseStream) -> syn::Result<T>,
    what: impl Fn(&T) -> String,
) -> syn::Result<Vec<T>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let parsed = item(input)?;
        if !input.is_empty() && !input.peek(Token![,]) {
            return Err(input.error(format!("expected `,` after {}", what(&parsed))));
        }
        out.push(parsed);
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(out)
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Int(l) => l.span(),
            Value::Float(l) => l.span(),
            Value::Bool(l) => l.span,
            Value::OtherLit(l) => l.span(),
            Value::Ident(i) => i.span(),
            Value::List(s, _) | Value::Tuple(s, _) => *s,
            Value::Call(i, s, _) => i.span().join(*s).unwrap_or(i.span()),
            Value::Neg(minus, _) => *minus,
        }
    }

    /// The first and last span of the value as written (`exponential` and
    /// `(1)`, `-` and `1e-5`).
    pub fn span_range(&self) -> (Span, Span) {
        match self {
            Value::Call(i, s, _) => (i.span(), *s),
            Value::Neg(minus, v) => (*minus, v.span_range().1),
            other => (other.span(), other.span()),
        }
    }

    /// An error underlining the whole value.
    pub fn error(&self, msg: impl Display) -> syn::Error {
        let (start, end) = self.span_range();
        error_between(start, end, msg)
    }

    /// A number as written (`1.0`, `-1e-5`); other values as [`Value::describe`] reads them.
    pub fn text(&self) -> String {
        match self {
            Value::Int(l) => format!("`{l}`"),
            Value::Float(l) => format!("`{l}`"),
            Value::Neg(_, v) => format!("`-{}`", v.text().trim_matches('`')),
            other => other.describe(),
        }
    }

    /// Items as written, comma-separated (`3, 32, 32`); other than
    /// numbers and names as `...`.
    pub fn texts(items: &[Value]) -> String {
        items
            .iter()
            .map(|v| match v {
                Value::Int(_) | Value::Float(_) | Value::Neg(..) => {
                    v.text().trim_matches('`').to_string()
                }
                Value::Ident(i) => i.to_string(),
                _ => "...".to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How the value reads in an error message ("a list", "the string ...").
    pub fn describe(&self) -> String {
        match self {
            Value::Int(l) => format!("the integer `{}`", l.base10_digits()),
            Value::Float(l) => format!("the number `{}`", l.base10_digits()),
            Value::Bool(l) => format!("`{}`", l.value),
            Value::OtherLit(Lit::Str(s)) => format!("the string {:?}", s.value()),
            Value::OtherLit(_) => "a literal".to_string(),
            Value::Ident(i) => format!("`{i}`"),
            Value::List(..) => "a list".to_string(),
            Value::Tuple(_, items) => format!("the tuple `({})`", Value::texts(items)),
            Value::Call(i, ..) => format!("`{i}(...)`"),
            Value::Neg(..) => format!("the negative number {}", self.text()),
        }
    }
}

impl Parse for Invocation {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut nets = Vec::new();
        while !input.is_empty() {
            nets.push(input.parse()?);
        }
        if nets.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                "expected a network declaration: `pub struct Name { classes: 10, depth: 40, growth: 12 }`",
            ));
        }
        Ok(Invocation { nets })
    }
}

impl Parse for NetDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        if !input.peek(Token![struct]) {
            return Err(input.error(
                "expected `struct`: a network is declared as `struct Name { key: value, ... }`",
            ));
        }
        input.parse::<Token![struct]>()?;
        let ident: Ident = input.parse()?;
        if input.peek(Token![<]) {
            return Err(input.error(
                "a network takes no generic parameters: the element type parameter `T` (default f32) is added by the macro",
            ));
        }
        if !input.peek(syn::token::Brace) {
            return Err(input.error("expected `{` followed by the network's `key: value` settings"));
        }
        let content;
        let brace = braced!(content in input);
        let body: TokenStream = content.fork().parse()?;
        let fingerprint = fnv1a(&quote::quote!(#(#attrs)* #vis #ident { #body }).to_string());
        let fields = comma_separated(&content, Field::parse, |f: &Field| {
            format!("the `{}` setting", f.key)
        })?;
        Ok(NetDecl {
            attrs,
            vis,
            ident,
            body_span: brace.span.join(),
            fields,
            fingerprint,
        })
    }
}

impl Parse for Field {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a setting name such as `depth` or `growth`",
            )
        })?;
        if !input.peek(Token![:]) {
            return Err(input.error(format!("expected `:` after `{key}`, as in `{key}: value`")));
        }
        input.parse::<Token![:]>()?;
        let value = input.parse()?;
        Ok(Field { key, value })
    }
}

impl Parse for Value {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(syn::token::Bracket) {
            let content;
            let bracket = bracketed!(content in input);
            let items = comma_separated(&content, Value::parse, |_| "a list item".to_string())?;
            return Ok(Value::List(bracket.span.join(), items));
        }
        if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            let items = comma_separated(&content, Value::parse, |_| "a tuple item".to_string())?;
            return Ok(Value::Tuple(paren.span.join(), items));
        }
        if input.peek(Token![-]) {
            let minus: Token![-] = input.parse()?;
            if input.peek(syn::LitInt) || input.peek(syn::LitFloat) {
                let number: Value = input.parse()?;
                return Ok(Value::Neg(minus.span, Box::new(number)));
            }
            return Err(syn::Error::new(
                minus.span(),
                "negative values are never valid here: expected a positive number",
            ));
        }
        if input.peek(Lit) {
            return Ok(match input.parse::<Lit>()? {
                Lit::Int(l) => Value::Int(l),
                Lit::Float(l) => Value::Float(l),
                Lit::Bool(l) => Value::Bool(l),
                other => Value::OtherLit(other),
            });
        }
        if input.peek(Ident) {
            let ident: Ident = input.parse()?;
            if input.peek(syn::token::Paren) {
                let content;
                let paren = parenthesized!(content in input);
                let args = comma_separated(&content, Value::parse, |_| {
                    format!("an argument of `{ident}`")
                })?;
                return Ok(Value::Call(ident, paren.span.join(), args));
            }
            return Ok(Value::Ident(ident));
        }
        Err(input.error("expected a value: a number, `true`/`false`, a name, a list `[...]` or a call such as `exponential(2)`"))
    }
}
