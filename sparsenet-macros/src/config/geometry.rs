//! Whether the input survives the network: the `imagenet` stem's two
//! stride-2 steps, every transition's 2x2/2 average pool, and a last stage
//! larger than 1x1. Errors point at the key that can fix them: the input,
//! or what set the number of stages, or the stem.

use super::keys;
use super::{Resolver, Stage, Stem, StemKind};
use crate::ast::Value;
use proc_macro2::Span;

/// A side's size after the `imagenet` stem's 7x7/2 convolution and 3x3/2
/// max-pool (both padded), `None` below 7.
fn after_imagenet_stem(d: usize) -> Option<usize> {
    (d >= 7).then(|| ((d - 1) / 2) / 2 + 1)
}

/// A side of `d` pixels in the last stage, if it halves evenly `pools`
/// times after the stem.
fn last_stage_side(d: usize, imagenet: bool, pools: usize) -> Option<usize> {
    let mut x = if imagenet { after_imagenet_stem(d)? } else { d };
    for _ in 0..pools {
        if x < 2 || x % 2 != 0 {
            return None;
        }
        x /= 2;
    }
    Some(x)
}

/// Whether a side of `d` pixels halves evenly `pools` times after the stem.
fn side_fits(d: usize, imagenet: bool, pools: usize) -> bool {
    last_stage_side(d, imagenet, pools).is_some()
}

/// Whether an input passes [`Resolver::check_geometry`] with `n_stages`
/// stages and the `imagenet` stem or a stride-1 one: for suggesting a stem
/// that is known to fit.
pub fn fits(input: [usize; 3], n_stages: usize, imagenet: bool) -> bool {
    [input[1], input[2]]
        .into_iter()
        .all(|d| last_stage_side(d, imagenet, n_stages - 1).is_some_and(|x| x >= 2))
}

impl Resolver<'_> {
    /// Reports an input the network cannot take; `start` is the count of
    /// errors before this declaration's (the last-stage check runs only
    /// when there are none).
    pub(super) fn check_geometry(
        &mut self,
        input: [usize; 3],
        stages: &[Stage],
        stem: &Stem,
        start: usize,
    ) {
        let imagenet = stem.kind == StemKind::ImageNet;
        let stem_span = self.fields.value_span(keys::STEM);
        let (mut h, mut w) = (input[1], input[2]);
        if imagenet {
            if h < 7 || w < 7 {
                let span = self
                    .fields
                    .value_span(keys::INPUT)
                    .or(stem_span)
                    .unwrap_or(self.ident.span());
                self.push(
                    span,
                    format!(
                        "the `imagenet` stem's 7x7/2 convolution needs an input of at least 7x7, found {}x{}",
                        input[1], input[2]
                    ),
                );
            } else {
                h = (h - 1) / 2 + 1;
                w = (w - 1) / 2 + 1;
                h = (h - 1) / 2 + 1;
                w = (w - 1) / 2 + 1;
            }
        }
        let pools = stages.len() - 1;
        for t in 0..pools {
            if h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2 {
                self.report_pooling(input, stages.len(), imagenet, (t, h, w));
                break;
            }
            h /= 2;
            w /= 2;
        }
        // The last stage at 1x1 (e.g. the `imagenet` stem on 32x32 input
        // with four stages): its 3x3 convolutions see their centre tap only
        // and the rest is padding. Reported unless a pooling error above
        // already stopped the walk.
        if self.errors.len() == start && (h == 1 || w == 1) && (input[1] > 1 || input[2] > 1) {
            let span = self
                .fields
                .value_span(keys::INPUT)
                .or(stem_span)
                .or(self.stages_span())
                .unwrap_or(self.ident.span());
            self.push(
                span,
                format!(
                    "input {}x{} leaves the last of the {} stages at {h}x{w}{}: its 3x3 convolutions would see only their centre taps; use a larger input, fewer stages{}",
                    input[1],
                    input[2],
                    stages.len(),
                    if imagenet { " after the `imagenet` stem's two stride-2 steps" } else { "" },
                    if imagenet { " or a `conv3x3` stem" } else { "" },
                ),
            );
        }
    }

    /// Where to point when the default input does not fit: at what set
    /// the number of stages (a `units` list or `blocks`).
    fn stages_span(&self) -> Option<Span> {
        match (self.value(keys::UNITS), self.value(keys::BLOCKS)) {
            (Some(v @ Value::List(..)), _) => Some(v.span()),
            (_, Some(v)) => Some(v.span()),
            _ => None,
        }
    }

    /// Reports that transition `t` meets an `h`x`w` it cannot halve, with
    /// the rule and the nearest inputs that fit.
    fn report_pooling(
        &mut self,
        input: [usize; 3],
        n_stages: usize,
        imagenet: bool,
        (t, h, w): (usize, usize, usize),
    ) {
        let pools = n_stages - 1;
        let input_items = match self.value(keys::INPUT) {
            Some(Value::List(_, items)) => Some(items),
            _ => None,
        };
        let (h_fits, w_fits) = (
            side_fits(input[1], imagenet, pools),
            side_fits(input[2], imagenet, pools),
        );
        let span = match input_items {
            Some(items) if h_fits && !w_fits => items[2].span(),
            Some(items) if !h_fits && w_fits => items[1].span(),
            Some(_) => self
                .fields
                .value_span(keys::INPUT)
                .unwrap_or(self.ident.span()),
            None => self
                .stages_span()
                .or(self.fields.value_span(keys::STEM))
                .unwrap_or(self.ident.span()),
        };
        let multiple = u32::try_from(pools)
            .ok()
            .and_then(|p| 1usize.checked_shl(p))
            .and_then(|m| m.checked_mul(if imagenet { 4 } else { 1 }));
        let rule = match multiple {
            Some(m) if imagenet => format!(
                "with {n_stages} stages, height and width after the `imagenet` stem's two stride-2 steps must be multiples of {} (inputs that are multiples of {m} are)",
                m / 4
            ),
            Some(m) => format!("with {n_stages} stages height and width must be multiples of {m}"),
            None => format!("{n_stages} stages are too many for any input"),
        };
        let suggest = multiple
            .map(|m| {
                suggest_inputs(
                    input,
                    m,
                    |d| side_fits(d, imagenet, pools),
                    input_items.is_some(),
                )
            })
            .unwrap_or_default();
        let which = if input_items.is_some() {
            "input"
        } else {
            "the default input"
        };
        self.push(
            span,
            format!(
                "{which} {}x{} reaches transition {t} at {h}x{w}, which its 2x2/2 average pool cannot halve: {rule}{suggest}",
                input[1], input[2],
            ),
        );
    }
}

/// "; e.g. `input: [c, a, b]` or ..." with each side that does not `fit`
/// rounded down and up to a multiple of `m`, or nothing when neither
/// rounding gives a size; `given` says whether the input was written (else
/// fewer stages are suggested too).
fn suggest_inputs(
    input: [usize; 3],
    m: usize,
    fits: impl Fn(usize) -> bool,
    given: bool,
) -> String {
    let side = |d: usize, up: bool| {
        if fits(d) {
            Some(d)
        } else if up {
            (d / m + 1).checked_mul(m)
        } else {
            Some(d / m * m).filter(|&x| x > 0)
        }
    };
    let mut out = Vec::new();
    for up in [false, true] {
        if let (Some(a), Some(b)) = (side(input[1], up), side(input[2], up)) {
            out.push(format!("`input: [{}, {a}, {b}]`", input[0]));
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!(
            "; e.g. {}{}",
            out.join(" or "),
            if given { "" } else { ", or use fewer stages" }
        )
    }
}
