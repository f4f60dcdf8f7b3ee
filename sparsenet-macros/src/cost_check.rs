//! Checks that need the planned network's cost: an input too large for a
//! stride-1 stem. DenseNet-121 declared for 224x224 images without
//! `stem: imagenet(64)` compiles into a network of 43.5 G multiply-adds per
//! image (15 times the 2.9 G it has with the ImageNet stem), because the
//! first stage then convolves at the full input resolution; nothing about
//! it is invalid, so only a rule can catch the slip.
//!
//! The rule: a side over [`LARGE_SIDE`] with a stride-1 stem (`conv3x3`,
//! `bn_relu_conv3x3`) is refused at the `input` token, naming the cost and
//! the ImageNet stem, unless the declaration says `large_input: allow`.
//! 64 keeps every CIFAR, Fashion-MNIST and Tiny-ImageNet-sized (64x64)
//! input, the sizes stride-1 stems are made for, and refuses the ImageNet
//! (224), STL-10 (96) and larger ones.

use crate::config::{geometry, Config, Stem, StemKind};
use crate::errors::Errors;
use crate::plan::{self, Plan};

/// The largest side a stride-1 stem takes without `large_input: allow`.
pub const LARGE_SIDE: usize = 64;

/// Reports a large input with a stride-1 stem that the declaration does
/// not allow, and a `large_input: allow` that allows nothing.
pub fn check(cfg: &Config, plan: &Plan, errors: &mut Errors) {
    let [_, h, w] = cfg.input;
    let stride_1 = cfg.stem.kind != StemKind::ImageNet;
    let large = stride_1 && h.max(w) > LARGE_SIDE;
    match (large, cfg.large_input) {
        (true, None) => {
            let span = cfg.input_span.unwrap_or(cfg.ident.span());
            let stem = stem_text(cfg.stem);
            let imagenet = Stem {
                kind: StemKind::ImageNet,
                channels: cfg.stem.channels,
            };
            // The cost with the ImageNet stem, where the input fits it.
            let alternative = if geometry::fits(cfg.input, cfg.stages.len(), true) {
                let mut with_imagenet = cfg.clone();
                with_imagenet.stem = imagenet;
                let macs = plan::build(&with_imagenet).macs();
                format!(" first: {} multiply-adds", multiply_adds(macs))
            } else {
                " first".to_string()
            };
            errors.push(
                span,
                format!(
                    "input {h}x{w} with the `{stem}` stem costs {} multiply-adds per image: a stride-1 stem keeps the full {h}x{w} resolution into the first stage; for ImageNet-sized inputs use `stem: {}` (a 7x7/2 convolution and a 3x3/2 max-pool{alternative}), or keep this stem with `large_input: allow`",
                    multiply_adds(plan.macs()),
                    stem_text(imagenet),
                ),
            );
        }
        (false, Some(span)) => {
            let why = if stride_1 {
                format!("its input is {h}x{w}")
            } else {
                "its stem is `imagenet`".to_string()
            };
            errors.push(
                span,
                format!(
                    "`large_input: allow` keeps an input larger than {LARGE_SIDE}x{LARGE_SIDE} with a stride-1 stem, and this network has none ({why}): remove `large_input`"
                ),
            );
        }
        _ => {}
    }
}

/// `conv3x3(24)`: the stem as a declaration writes it.
fn stem_text(stem: Stem) -> String {
    format!("{}({})", stem.kind.name(), stem.channels)
}

/// A count of multiply-adds as people read it: `43.5 G`, `120.4 M`.
fn multiply_adds(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.1} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else {
        n.to_string()
    }
}
