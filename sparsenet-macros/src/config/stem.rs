//! `stem`: the layers before the first stage and the channels they produce.

use super::keys::{self, did_you_mean};
use super::{Resolver, Stem, StemKind, Style};
use crate::ast::Value;

impl Resolver<'_> {
    /// The declared stem, or the style's (whose channels follow the first
    /// stage's growth rate `growth0`).
    pub(super) fn stem(&mut self, style: Style, growth0: usize) -> Option<Stem> {
        let names = StemKind::ALL.map(StemKind::name);
        match self.value(keys::STEM) {
            None => Some(default_stem(style, growth0)),
            Some(Value::Call(i, span, args)) => {
                let name = i.to_string();
                let kind = StemKind::ALL.into_iter().find(|k| k.name() == name);
                if kind.is_none() {
                    self.push(
                        i.span(),
                        format!(
                            "unknown stem `{name}`: expected {}{}",
                            keys::STEM.expects,
                            did_you_mean(&name, names)
                        ),
                    );
                }
                if args.len() != 1 {
                    self.push(
                        *span,
                        format!(
                            "`{i}` takes one argument, the stem's output channels, e.g. `{i}(24)`"
                        ),
                    );
                    return None;
                }
                let channels = self.positive_as(keys::STEM, "the stem's channel count", &args[0]);
                Some(Stem {
                    kind: kind?,
                    channels: channels?,
                })
            }
            Some(Value::Ident(i)) if names.iter().any(|s| i == s) => {
                self.push(
                    i.span(),
                    format!("`{i}` needs the stem's output channels, e.g. `stem: {i}(24)`"),
                );
                None
            }
            Some(v) => {
                self.type_error(keys::STEM, v);
                None
            }
        }
    }
}

/// Each style's stem.
fn default_stem(style: Style, growth0: usize) -> Stem {
    match style {
        Style::Seed20180220 => Stem {
            kind: StemKind::Conv3x3,
            channels: growth0,
        },
        Style::Seed20180130 => Stem {
            kind: StemKind::BnReluConv3x3,
            channels: 16,
        },
        Style::Paper => Stem {
            kind: StemKind::Conv3x3,
            channels: 2 * growth0,
        },
    }
}
