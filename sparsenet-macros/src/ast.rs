//! Syntax of an invocation: `$(#[attr])* $vis struct Name { key: value, ... }`,
//! repeated. Values are untyped here; [`crate::config`] gives them meaning.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
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
    Call(Ident, Span, Vec<Value>),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Int(l) => l.span(),
            Value::Float(l) => l.span(),
            Value::Bool(l) => l.span,
            Value::OtherLit(l) => l.span(),
            Value::Ident(i) => i.span(),
            Value::List(s, _) => *s,
            Value::Call(i, s, _) => i.span().join(*s).unwrap_or(i.span()),
        }
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
            Value::Call(i, ..) => format!("`{i}(...)`"),
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
            return Err(input.error("expected `struct`: a network is declared as `struct Name { key: value, ... }`"));
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
        let fields = Punctuated::<Field, Token![,]>::parse_terminated(&content)?;
        Ok(NetDecl {
            attrs,
            vis,
            ident,
            body_span: brace.span.join(),
            fields: fields.into_iter().collect(),
        })
    }
}

impl Parse for Field {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), "expected a setting name such as `depth` or `growth`"))?;
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
            let items = Punctuated::<Value, Token![,]>::parse_terminated(&content)?;
            return Ok(Value::List(bracket.span.join(), items.into_iter().collect()));
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
                let args = Punctuated::<Value, Token![,]>::parse_terminated(&content)?;
                return Ok(Value::Call(ident, paren.span.join(), args.into_iter().collect()));
            }
            return Ok(Value::Ident(ident));
        }
        if input.peek(Token![-]) {
            let minus: Token![-] = input.parse()?;
            return Err(syn::Error::new(
                minus.span(),
                "negative values are never valid here: expected a positive number",
            ));
        }
        Err(input.error("expected a value: a number, `true`/`false`, a name, a list `[...]` or a call such as `exponential(2)`"))
    }
}
