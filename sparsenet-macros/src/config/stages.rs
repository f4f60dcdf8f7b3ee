//! `depth` or `units`, `blocks` and `growth`: how many units each stage
//! (dense/sparse block) has and how many channels each unit adds.

use super::keys;
use super::{Resolver, Stage, Style};
use crate::ast::Value;
use proc_macro2::Span;

impl Resolver<'_> {
    /// The stages, and the first stage's growth rate (which the stems'
    /// defaults follow; 12 when `growth` is wrong).
    pub(super) fn stages(&mut self, style: Style, bottleneck: bool) -> (Option<Vec<Stage>>, usize) {
        let blocks = match self.get(keys::BLOCKS) {
            None => None,
            Some((k, v)) => self.positive(keys::BLOCKS, v).map(|b| (b, k.span())),
        };
        let units = self.units(style, bottleneck, blocks);
        let growth: Option<Vec<(usize, Span)>> = match self.value(keys::GROWTH) {
            None => Some(vec![(12, self.body_span)]),
            Some(v) => self.positive_or_list(keys::GROWTH, v),
        };
        let growth0 = growth.as_ref().map(|g| g[0].0).unwrap_or(12);
        let (Some(units), Some(growth)) = (units, growth) else {
            return (None, growth0);
        };
        if growth.len() != 1 && growth.len() != units.len() {
            let span = self
                .fields
                .value_span(keys::GROWTH)
                .unwrap_or(self.ident.span());
            self.push(
                span,
                format!(
                    "`growth` lists {} rates but the network has {} stages: give one rate, or one per stage",
                    growth.len(),
                    units.len()
                ),
            );
            return (None, growth0);
        }
        let stages = units
            .iter()
            .enumerate()
            .map(|(i, &u)| Stage {
                units: u,
                growth: if growth.len() == 1 {
                    growth[0].0
                } else {
                    growth[i].0
                },
            })
            .collect();
        (Some(stages), growth0)
    }

    /// Units per stage, from `depth` or `units` (and `blocks`, given with
    /// the span of its key).
    fn units(
        &mut self,
        style: Style,
        bottleneck: bool,
        blocks: Option<(usize, Span)>,
    ) -> Option<Vec<usize>> {
        match (self.get(keys::DEPTH), self.get(keys::UNITS)) {
            (Some((dk, _)), Some(_)) => {
                self.push(
                    dk.span(),
                    "give either `depth` or `units`, not both: `depth` derives the units per stage",
                );
                None
            }
            (None, None) if self.fields.named_in_pytorch(keys::UNITS) => None,
            (None, None) => {
                self.push(
                    self.ident.span(),
                    format!(
                        "missing setting `depth` or `units` in `{}`: expected e.g. `depth: 40` or `units: [6, 12, 24, 16]`",
                        self.ident
                    ),
                );
                None
            }
            (Some((dk, v)), None) => {
                if style == Style::Seed20180130 {
                    self.push(dk.span(), "style `seed_2018_01_30` has no depth rule: give the units per stage instead, e.g. `units: 12` with `blocks: 3`");
                    None
                } else {
                    let blocks = blocks.map(|(b, _)| b).unwrap_or(3);
                    self.units_from_depth(v, blocks, bottleneck)
                }
            }
            (None, Some((_, v))) => match v {
                Value::List(..) => {
                    if let Some((_, span)) = blocks {
                        self.push(
                            span,
                            "`blocks` is implied by the length of the `units` list: remove `blocks`",
                        );
                    }
                    self.positive_or_list(keys::UNITS, v)
                        .map(|l| l.into_iter().map(|(n, _)| n).collect())
                }
                _ => self
                    .positive(keys::UNITS, v)
                    .map(|n| vec![n; blocks.map(|(b, _)| b).unwrap_or(3)]),
            },
        }
    }

    /// Units per stage from `depth` (value `v`): depth - 4 convolutions
    /// shared evenly by `blocks` stages, two per unit with a bottleneck.
    fn units_from_depth(
        &mut self,
        v: &Value,
        blocks: usize,
        bottleneck: bool,
    ) -> Option<Vec<usize>> {
        // Not `positive`: the rule below explains a depth of 0 better.
        let depth = self.usize(keys::DEPTH, v)?;
        let b = blocks;
        let per = if bottleneck { 2 * b } else { b };
        if depth > 4 && (depth - 4) % per == 0 {
            return Some(vec![(depth - 4) / per; b]);
        }
        let below = if depth > 4 {
            4 + (depth - 4) / per * per
        } else {
            0
        };
        let above = 4 + ((depth.saturating_sub(4)) / per + 1) * per;
        let fits = if below > 4 {
            format!("{below} or {above}")
        } else {
            format!("{above}")
        };
        self.at(
            v,
            format!(
                "depth {depth} does not fit {b} stages{}: depth - 4 must be a positive multiple of {per}{}; nearest depths that fit: {fits}",
                if bottleneck { " of bottleneck units" } else { "" },
                if bottleneck { format!(" (2 convolutions per unit x {b} stages)") } else { String::new() },
            ),
        );
        None
    }
}
