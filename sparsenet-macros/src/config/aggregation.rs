//! `aggregation`: which earlier layers a layer reads, as declared
//! (`exponential(c)`, `dense`, `offsets(...)`). The offsets a given layer
//! reads follow from it in the plan.

use super::keys::{self, did_you_mean};
use super::{Aggregation, Resolver};
use crate::ast::Value;
use proc_macro2::Span;

/// The names an aggregation is declared by.
const EXPONENTIAL: &str = "exponential";
const DENSE: &str = "dense";
const OFFSETS: &str = "offsets";
const NAMES: [&str; 3] = [EXPONENTIAL, DENSE, OFFSETS];

impl Resolver<'_> {
    /// The declared aggregation, `exponential(2)` by default (and when it
    /// is wrong, so that the other keys are still checked).
    pub(super) fn aggregation(&mut self) -> Aggregation {
        let fallback = Aggregation::Exponential(2);
        let Some(v) = self.value(keys::AGGREGATION) else {
            return fallback;
        };
        match v {
            Value::Ident(i) if i == DENSE => Aggregation::Dense,
            Value::Ident(i) if i == EXPONENTIAL => Aggregation::Exponential(2),
            Value::Call(i, span, args) if i == EXPONENTIAL => self.exponential(*span, args),
            Value::Call(i, span, args) if i == OFFSETS => self.offsets(*span, args),
            Value::Ident(i) if i == OFFSETS => {
                self.push(
                    i.span(),
                    "`offsets` needs the offsets it reads, e.g. `offsets(1, 2, 4)`",
                );
                fallback
            }
            Value::Call(i, span, _) if i == DENSE => {
                self.push(
                    *span,
                    "`dense` takes no arguments: write `aggregation: dense`",
                );
                fallback
            }
            Value::Ident(i) | Value::Call(i, ..) => {
                self.push(
                    i.span(),
                    format!(
                        "unknown aggregation `{i}`: expected {}{}",
                        keys::AGGREGATION.expects,
                        did_you_mean(&i.to_string(), NAMES)
                    ),
                );
                fallback
            }
            Value::List(..) => {
                self.at(v, format!(
                    "`aggregation` expects {}, found a list: for explicit offsets write `offsets(1, 2, 4)`",
                    keys::AGGREGATION.expects
                ));
                fallback
            }
            other => {
                self.type_error(keys::AGGREGATION, other);
                fallback
            }
        }
    }

    /// `exponential(c)`, its arguments' parentheses at `span`.
    fn exponential(&mut self, span: Span, args: &[Value]) -> Aggregation {
        if args.len() != 1 {
            self.push(span, "`exponential` takes one argument, the base c (offsets 1, c, c^2, ...), e.g. `exponential(2)`");
            return Aggregation::Exponential(2);
        }
        match self.usize(keys::AGGREGATION, &args[0]) {
            Some(c) if c >= 2 => Aggregation::Exponential(c),
            Some(c) => {
                self.at(&args[0], format!("the exponential base must be at least 2, found {c}: offsets are 1, c, c^2, ...; for every earlier layer use `dense`"));
                Aggregation::Exponential(2)
            }
            None => Aggregation::Exponential(2),
        }
    }

    /// `offsets(...)`, its arguments' parentheses at `span`: strictly
    /// increasing, starting at 1.
    fn offsets(&mut self, span: Span, args: &[Value]) -> Aggregation {
        let mut list = Vec::new();
        if args.is_empty() {
            self.push(
                span,
                "`offsets` needs at least one offset, e.g. `offsets(1, 2, 4)`",
            );
        }
        for a in args {
            if let Some(o) = self.positive_as(
                keys::AGGREGATION,
                "an offset (1 is the layer right before)",
                a,
            ) {
                if let Some(&last) = list.last() {
                    if o <= last {
                        self.at(a, format!("offsets must be strictly increasing, but {o} follows {last}, e.g. `offsets(1, 3, 9)`"));
                    }
                }
                list.push(o);
            }
        }
        if !list.is_empty() && list[0] != 1 {
            self.at(&args[0], format!(
                "the first offset must be 1, found {}: each layer reads the layer right before it, e.g. `offsets(1, {})`",
                list[0],
                list.iter().filter(|&&o| o > 1).map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        Aggregation::Offsets(list)
    }
}
