//! Typed reads of untyped values, each reporting a precise error at the
//! value and returning `None` when it is wrong.

use super::keys::{self, Key};
use super::Resolver;
use crate::ast::Value;
use proc_macro2::Span;

impl Resolver<'_> {
    /// An error at `span`.
    pub(super) fn push(&mut self, span: Span, msg: impl std::fmt::Display) {
        self.errors.push(span, msg);
    }

    /// An error underlining the whole value `v`.
    pub(super) fn at(&mut self, v: &Value, msg: impl std::fmt::Display) {
        self.errors.push_error(v.error(msg));
    }

    pub(super) fn type_error(&mut self, key: Key, v: &Value) {
        // A tuple where a list fits: the brackets are the only mistake.
        let fix = match v {
            Value::Tuple(_, items) if keys::TAKE_LISTS.contains(&key) => format!(
                ": a list is written in square brackets, `{key}: [{}]`",
                Value::texts(items)
            ),
            _ => String::new(),
        };
        self.at(
            v,
            format!(
                "`{key}` expects {}, found {}{fix}",
                key.expects,
                v.describe()
            ),
        );
    }

    pub(super) fn usize(&mut self, key: Key, v: &Value) -> Option<usize> {
        match v {
            Value::Int(l) => match l.base10_parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.at(
                        v,
                        format!("`{key}` expects {}, and `{l}` is too large", key.expects),
                    );
                    None
                }
            },
            _ => {
                self.type_error(key, v);
                None
            }
        }
    }

    pub(super) fn positive(&mut self, key: Key, v: &Value) -> Option<usize> {
        self.positive_as(key, &format!("`{key}`"), v)
    }

    /// A positive integer for `key`; `what` names it in the "at least 1"
    /// message (`the stem's channel count`).
    pub(super) fn positive_as(&mut self, key: Key, what: &str, v: &Value) -> Option<usize> {
        let n = self.usize(key, v)?;
        if n == 0 {
            self.at(v, format!("{what} must be at least 1, found `0`"));
            return None;
        }
        Some(n)
    }

    pub(super) fn f64(&mut self, key: Key, v: &Value) -> Option<f64> {
        match v {
            Value::Int(l) => l.base10_parse::<f64>().ok(),
            Value::Float(l) => l.base10_parse::<f64>().ok(),
            Value::Neg(_, inner) if matches!(**inner, Value::Int(_) | Value::Float(_)) => {
                self.f64(key, inner).map(|x| -x)
            }
            _ => {
                self.type_error(key, v);
                None
            }
        }
    }

    pub(super) fn bool(&mut self, key: Key, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(b.value),
            _ => {
                self.type_error(key, v);
                None
            }
        }
    }

    /// A positive integer, or a list of them (non-empty).
    pub(super) fn positive_or_list(&mut self, key: Key, v: &Value) -> Option<Vec<(usize, Span)>> {
        match v {
            Value::List(span, items) => {
                if items.is_empty() {
                    self.push(
                        *span,
                        format!("`{key}` needs at least one stage: expected {}", key.expects),
                    );
                    return None;
                }
                // Check every item, so that all bad ones are reported.
                let out: Vec<_> = items
                    .iter()
                    .map(|item| self.positive(key, item).map(|n| (n, item.span())))
                    .collect();
                out.into_iter().collect()
            }
            _ => Some(vec![(self.positive(key, v)?, v.span())]),
        }
    }
}
