//! `input` and `classes`: what the network reads and what it tells apart;
//! `large_input`, which keeps a large input with a stride-1 stem.

use super::keys;
use super::Resolver;
use crate::ast::Value;
use proc_macro2::Span;

/// The fewest classes a network can learn to tell apart.
const MIN_CLASSES: usize = 2;

impl Resolver<'_> {
    /// `input` as `[channels, height, width]`, `[3, 32, 32]` by default.
    pub(super) fn input(&mut self) -> Option<[usize; 3]> {
        match self.value(keys::INPUT) {
            None => Some([3, 32, 32]),
            Some(Value::List(_, items)) if items.len() == 3 => {
                let mut dims = [0usize; 3];
                let mut ok = true;
                for (d, item) in dims.iter_mut().zip(items) {
                    match self.positive_as(keys::INPUT, "every `input` dimension", item) {
                        Some(n) => *d = n,
                        None => ok = false,
                    }
                }
                ok.then_some(dims)
            }
            Some(Value::List(span, items)) => {
                let hint = match items.as_slice() {
                    [Value::Int(h), Value::Int(w)] => {
                        format!(" (a one-channel {h}x{w} image is `[1, {h}, {w}]`, an RGB one `[3, {h}, {w}]`)")
                    }
                    _ => String::new(),
                };
                self.push(
                    *span,
                    format!(
                        "`input` expects three dimensions `[channels, height, width]`, found {}{hint}",
                        items.len()
                    ),
                );
                None
            }
            Some(v) => {
                self.type_error(keys::INPUT, v);
                None
            }
        }
    }

    /// `classes`, which has no default.
    pub(super) fn classes(&mut self) -> Option<usize> {
        match self.value(keys::CLASSES) {
            None if self.fields.named_in_pytorch(keys::CLASSES) => None,
            None => {
                self.push(
                    self.ident.span(),
                    format!("missing setting `classes` in `{}`: expected the number of output classes, e.g. `classes: 10`", self.ident),
                );
                None
            }
            Some(v) => match self.usize(keys::CLASSES, v) {
                // One class: softmax gives it probability 1 whatever the input,
                // so the loss and every gradient are zero and nothing trains.
                // One bound for 0 and 1, so that fixing one message never
                // leads to the other.
                Some(n) if n < MIN_CLASSES => {
                    self.at(
                        v,
                        format!("`classes` must be at least {MIN_CLASSES}, found `{n}`: with fewer than two classes there is nothing to tell apart (with one, the softmax is 1 for every input, so the loss and every gradient are zero and the network learns nothing)"),
                    );
                    None
                }
                c => c,
            },
        }
    }

    /// `large_input: allow`, the only value, at its key: whether it is
    /// needed is checked once the network's cost is known
    /// ([`crate::cost_check`]).
    pub(super) fn large_input(&mut self) -> Option<Span> {
        let (k, v) = self.get(keys::LARGE_INPUT)?;
        match v {
            Value::Ident(i) if i == "allow" => Some(k.span()),
            _ => {
                self.type_error(keys::LARGE_INPUT, v);
                None
            }
        }
    }
}
