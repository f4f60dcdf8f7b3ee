//! `style`: the family of layer forms, whose defaults the other keys take.

use super::keys::{self, did_you_mean};
use super::{Resolver, Style};
use crate::ast::Value;

impl Resolver<'_> {
    /// The declared style, `paper` when none is given (or it is wrong).
    pub(super) fn style(&mut self) -> Style {
        match self.value(keys::STYLE) {
            None => Style::Paper,
            Some(Value::Ident(i)) => {
                let name = i.to_string();
                match Style::ALL.into_iter().find(|s| s.name() == name) {
                    Some(style) => style,
                    None => {
                        self.push(
                            i.span(),
                            format!(
                                "unknown style `{name}`: expected {}{}",
                                keys::STYLE.expects,
                                did_you_mean(&name, Style::ALL.map(Style::name))
                            ),
                        );
                        Style::Paper
                    }
                }
            }
            Some(v) => {
                self.type_error(keys::STYLE, v);
                Style::Paper
            }
        }
    }
}
