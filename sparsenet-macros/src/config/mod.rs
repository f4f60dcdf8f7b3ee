//! Validation: turns a parsed [`NetDecl`] into a fully resolved [`Config`],
//! filling in the chosen style's defaults. Every mistake is reported at the
//! token it is about, with what was expected and, where it helps, what fits.
//!
//! [`resolve`] reads the keys group by group, one module each: [`style`],
//! [`shape`] (input, classes), [`stages`] (depth, units, blocks, growth),
//! [`bottleneck`] (bottleneck, its width, compression), [`aggregation`],
//! [`stem`], [`layer_options`] (biases, dropout, BatchNorm), then
//! [`geometry`] checks that the input survives the network's poolings. The
//! keys themselves are named constants in [`keys`]; [`fields`] sorts a
//! declaration's settings by key and [`reader`] reads typed values;
//! [`attrs`] sorts its attributes.

mod aggregation;
mod attrs;
mod bottleneck;
mod fields;
pub mod geometry;
pub mod keys;
mod layer_options;
mod reader;
mod shape;
mod stages;
mod stem;
mod style;

use crate::ast::{NetDecl, Value};
use crate::errors::Errors;
use fields::Fields;
use proc_macro2::Span;
use syn::{Attribute, Ident, Visibility};

/// The family of layer forms a network follows; each key the user leaves
/// out takes the style's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The seed notebook's latest version (2018-02-20).
    Seed20180220,
    /// The seed notebook's version before 2018-01-30.
    Seed20180130,
    /// The paper's and the official PyTorch code's form (DenseNet-like).
    Paper,
}

impl Style {
    pub const ALL: [Style; 3] = [Style::Seed20180220, Style::Seed20180130, Style::Paper];

    pub fn name(self) -> &'static str {
        match self {
            Style::Seed20180220 => "seed_2018_02_20",
            Style::Seed20180130 => "seed_2018_01_30",
            Style::Paper => "paper",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StemKind {
    /// A plain 3x3 convolution (seed 2018-02-20, paper).
    Conv3x3,
    /// BN-ReLU-3x3 convolution (seed before 2018-01-30).
    BnReluConv3x3,
    /// 7x7/2 convolution, BN-ReLU, 3x3/2 max-pool (ImageNet-sized inputs).
    ImageNet,
}

impl StemKind {
    pub const ALL: [StemKind; 3] = [
        StemKind::Conv3x3,
        StemKind::BnReluConv3x3,
        StemKind::ImageNet,
    ];

    /// The name a declaration gives it: `stem: conv3x3(16)`.
    pub fn name(self) -> &'static str {
        match self {
            StemKind::Conv3x3 => "conv3x3",
            StemKind::BnReluConv3x3 => "bn_relu_conv3x3",
            StemKind::ImageNet => "imagenet",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Stem {
    pub kind: StemKind,
    pub channels: usize,
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub units: usize,
    pub growth: usize,
}

/// The 1x1 convolution that starts a bottleneck unit.
#[derive(Clone, Copy, Debug)]
pub struct Bottleneck {
    /// Output channels of the 1x1 convolution, as a multiple of the growth rate.
    pub width: usize,
    /// Whether a ReLU follows the BN before it (the seed's 2018-02-20 version
    /// has none).
    pub relu: bool,
}

/// Which earlier layers a layer concatenates.
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregation {
    /// Offsets 1, c, c^2, ...
    Exponential(usize),
    /// Every earlier layer (DenseNet).
    Dense,
    /// Exactly these offsets (strictly increasing, >= 1).
    Offsets(Vec<usize>),
}

impl Aggregation {
    pub fn describe(&self) -> String {
        match self {
            Aggregation::Exponential(c) => format!("exponential({c})"),
            Aggregation::Dense => "dense".to_string(),
            Aggregation::Offsets(l) => format!(
                "offsets({})",
                l.iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A network, every choice made.
#[derive(Clone)]
pub struct Config {
    /// Doc comments, for the struct.
    pub attrs: Vec<Attribute>,
    /// `#[cfg]` and lint levels, for every item generated for the network.
    pub item_attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    /// The declaration's [`NetDecl::fingerprint`].
    pub fingerprint: u64,
    pub style: Style,
    /// [channels, height, width]
    pub input: [usize; 3],
    pub classes: usize,
    pub stem: Stem,
    pub stages: Vec<Stage>,
    pub bottleneck: Option<Bottleneck>,
    /// A BN after each unit's last convolution (seed 2018-02-20).
    pub trailing_bn: bool,
    /// Whether convolutions have biases (the dense layer always has one).
    pub conv_bias: bool,
    /// Transition output channels = floor(block output channels * compression).
    pub compression: f64,
    pub aggregation: Aggregation,
    /// BN-ReLU before the global average pool.
    pub head_bn: bool,
    pub bn_eps: f64,
    pub head_bn_eps: f64,
    /// Fraction of the old running statistic kept (MXNet convention).
    pub bn_momentum: f64,
    pub unbiased_running_var: bool,
    pub dropout: f64,
    /// Whether dropout follows unit convolutions too, not only transitions.
    pub dropout_in_units: bool,
    /// Where `input` is written, if it is (for the checks after planning).
    pub input_span: Option<Span>,
    /// `large_input: allow`, at its key, if the declaration says so.
    pub large_input: Option<Span>,
}

/// What every key group reads and where it reports: the declaration's
/// settings by key, its name and body (where errors about missing keys
/// point), and the invocation's errors.
struct Resolver<'a> {
    fields: &'a Fields,
    ident: &'a Ident,
    body_span: Span,
    errors: &'a mut Errors,
}

impl<'a> Resolver<'a> {
    /// The key as written and its value, if `key` is set.
    fn get(&self, key: keys::Key) -> Option<(&'a Ident, &'a Value)> {
        self.fields.get(key)
    }

    /// `key`'s value, if it is set.
    fn value(&self, key: keys::Key) -> Option<&'a Value> {
        self.fields.value(key)
    }
}

/// Resolves and validates one declaration. All errors are collected; the
/// groups are read in a fixed order, which is the order of their messages.
pub fn resolve(decl: NetDecl, errors: &mut Errors) -> Option<Config> {
    let start = errors.len();
    let attrs = attrs::sort(decl.attrs, &decl.ident, errors);
    let fields = Fields::collect(decl.fields, errors);
    if fields.contains(keys::COMPRESSION) {
        if let Some((k, _)) = fields.get(keys::REDUCTION) {
            errors.push(
                k.span(),
                "`reduction` and `compression` are the same setting: give only one",
            );
        }
    }
    let mut r = Resolver {
        fields: &fields,
        ident: &decl.ident,
        body_span: decl.body_span,
        errors,
    };
    let style = r.style();
    let input = r.input();
    let classes = r.classes();
    let (bottleneck_flag, bottleneck_width) = r.bottleneck(style);
    let (stages, growth0) = r.stages(style, bottleneck_flag);
    let compression = r.compression(style, bottleneck_flag);
    let aggregation = r.aggregation();
    let stem = r.stem(style, growth0);
    let options = r.layer_options(style);
    let large_input = r.large_input();
    if let (Some(input), Some(stages), Some(stem)) = (input, &stages, &stem) {
        r.check_geometry(input, stages, stem, start);
    }

    if r.errors.len() > start {
        return None;
    }
    let bottleneck = bottleneck_flag.then_some(Bottleneck {
        width: bottleneck_width,
        relu: style != Style::Seed20180220,
    });
    Some(Config {
        attrs: attrs.docs,
        item_attrs: attrs.items,
        vis: decl.vis,
        ident: decl.ident,
        fingerprint: decl.fingerprint,
        style,
        input: input?,
        classes: classes?,
        stem: stem?,
        stages: stages?,
        bottleneck,
        trailing_bn: style == Style::Seed20180220,
        conv_bias: options.conv_bias,
        compression,
        aggregation,
        head_bn: style != Style::Seed20180130,
        bn_eps: options.bn_eps,
        head_bn_eps: options.head_bn_eps,
        bn_momentum: options.bn_momentum,
        unbiased_running_var: style == Style::Paper,
        dropout: options.dropout,
        dropout_in_units: style != Style::Seed20180220,
        input_span: fields.value_span(keys::INPUT),
        large_input,
    })
}
