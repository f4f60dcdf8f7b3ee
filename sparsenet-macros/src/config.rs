//! Validation: turns a parsed [`NetDecl`] into a fully resolved [`Config`],
//! filling in the chosen style's defaults. Every mistake is reported at the
//! token it is about, with what was expected and, where it helps, what fits.

use crate::ast::{NetDecl, Value};
use crate::errors::Errors;
use proc_macro2::Span;
use std::collections::BTreeMap;
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
    /// Offsets that a layer at index `j` of its block reads (index 0 is the
    /// block input), smallest first: newest source first.
    pub fn offsets(&self, j: usize) -> Vec<usize> {
        match self {
            Aggregation::Exponential(c) => {
                let mut out = Vec::new();
                let mut i = 1;
                while i <= j {
                    out.push(i);
                    i *= c;
                }
                out
            }
            Aggregation::Dense => (1..=j).collect(),
            Aggregation::Offsets(list) => list.iter().copied().filter(|&o| o <= j).collect(),
        }
    }

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
pub struct Config {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
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
}

/// The keys an invocation may set, with what each expects (for messages).
const KEYS: &[(&str, &str)] = &[
    ("style", "`seed_2018_02_20`, `seed_2018_01_30` or `paper`"),
    ("input", "`[channels, height, width]`, e.g. `[3, 32, 32]`"),
    ("classes", "a positive integer"),
    (
        "depth",
        "a positive integer: total layers, units per stage = (depth - 4) / stages",
    ),
    (
        "blocks",
        "the number of stages (dense/sparse blocks), a positive integer",
    ),
    (
        "units",
        "units per stage: an integer (with `blocks`) or a list such as `[6, 12, 24, 16]`",
    ),
    (
        "growth",
        "the growth rate: an integer, or one per stage such as `[16, 32, 64]`",
    ),
    ("bottleneck", "`true` or `false`"),
    (
        "bottleneck_width",
        "a positive integer: the 1x1 convolution has width x growth channels",
    ),
    (
        "compression",
        "a number in (0, 1]: transitions keep floor(channels x compression)",
    ),
    (
        "reduction",
        "a number in (0, 1] (the seed's name for `compression`)",
    ),
    (
        "aggregation",
        "`exponential(2)`, `dense` or `offsets(1, 2, 4)`",
    ),
    (
        "stem",
        "`conv3x3(C)`, `bn_relu_conv3x3(C)` or `imagenet(C)`",
    ),
    (
        "bias",
        "`true` or `false`: whether convolutions have biases",
    ),
    ("dropout", "a dropout rate in [0, 1)"),
    ("bn_eps", "a positive number: BatchNorm epsilon"),
    (
        "bn_momentum",
        "a number in [0, 1): the fraction of the running statistics kept at each update",
    ),
];

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "; did you mean `x`?" for the candidate closest to `name`, if any is close.
fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .min()
        .filter(|(d, _)| *d <= 3.min(name.len().max(1) - 1).max(1))
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}

/// torchvision's DenseNet arguments and the settings they correspond to.
const PYTORCH_NAMES: &[(&str, &str)] = &[
    ("num_classes", "classes"),
    ("growth_rate", "growth"),
    ("block_config", "units"),
    ("num_init_features", "stem"),
    ("bn_size", "bottleneck_width"),
    ("drop_rate", "dropout"),
];

const STYLES: &[&str] = &["seed_2018_02_20", "seed_2018_01_30", "paper"];
const STEMS: &[&str] = &["conv3x3", "bn_relu_conv3x3", "imagenet"];
const AGGREGATIONS: &[&str] = &["exponential", "dense", "offsets"];

fn expected(key: &str) -> &'static str {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map(|(_, e)| *e)
        .unwrap_or("a value")
}

/// Typed reads of untyped values, each reporting a precise error.
struct Reader<'a> {
    errors: &'a mut Errors,
}

impl Reader<'_> {
    /// An error underlining the whole value `v`.
    fn at(&mut self, v: &Value, msg: impl std::fmt::Display) {
        self.errors.push_error(v.error(msg));
    }

    fn type_error(&mut self, key: &str, v: &Value) {
        self.at(
            v,
            format!("`{key}` expects {}, found {}", expected(key), v.describe()),
        );
    }

    fn usize(&mut self, key: &str, v: &Value) -> Option<usize> {
        match v {
            Value::Int(l) => match l.base10_parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.at(
                        v,
                        format!("`{key}` expects {}, and `{l}` is too large", expected(key)),
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

    fn positive(&mut self, key: &str, v: &Value) -> Option<usize> {
        self.positive_as(key, &format!("`{key}`"), v)
    }

    /// A positive integer for `key`; `what` names it in the "at least 1"
    /// message (`the stem's channel count`).
    fn positive_as(&mut self, key: &str, what: &str, v: &Value) -> Option<usize> {
        let n = self.usize(key, v)?;
        if n == 0 {
            self.at(v, format!("{what} must be at least 1, found `0`"));
            return None;
        }
        Some(n)
    }

    fn f64(&mut self, key: &str, v: &Value) -> Option<f64> {
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

    fn bool(&mut self, key: &str, v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(b.value),
            _ => {
                self.type_error(key, v);
                None
            }
        }
    }

    /// A positive integer, or a list of them (non-empty).
    fn positive_or_list(&mut self, key: &str, v: &Value) -> Option<Vec<(usize, Span)>> {
        match v {
            Value::List(span, items) => {
                if items.is_empty() {
                    self.errors.push(
                        *span,
                        format!(
                            "`{key}` needs at least one stage: expected {}",
                            expected(key)
                        ),
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

/// Resolves and validates one declaration. All errors are collected.
pub fn resolve(decl: NetDecl, errors: &mut Errors) -> Option<Config> {
    let start = errors_len(errors);
    // Duplicate and unknown keys.
    let mut fields: BTreeMap<String, (Ident, Value)> = BTreeMap::new();
    // Our settings whose PyTorch names were given: already reported, so not
    // reported again as missing.
    let mut named_in_pytorch = Vec::new();
    for f in decl.fields {
        let name = f.key.to_string();
        if !KEYS.iter().any(|(k, _)| *k == name) {
            // PyTorch's (torchvision's DenseNet) names for the same settings.
            let best = match PYTORCH_NAMES.iter().find(|(theirs, _)| *theirs == name) {
                Some((_, ours)) => {
                    named_in_pytorch.push(*ours);
                    format!("; PyTorch's name: here it is `{ours}`")
                }
                None => did_you_mean(&name, KEYS.iter().map(|(k, _)| *k)),
            };
            let all: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            errors.push(
                f.key.span(),
                format!(
                    "unknown setting `{name}`{best} (expected one of: {})",
                    all.join(", ")
                ),
            );
            continue;
        }
        if let Some((_, first)) = fields.get(&name) {
            errors.push(
                f.key.span(),
                format!("duplicate setting `{name}`: it is already set above, to {}; give each setting once", first.describe()),
            );
            continue;
        }
        fields.insert(name, (f.key, f.value));
    }
    if fields.contains_key("compression") && fields.contains_key("reduction") {
        let (k, _) = &fields["reduction"];
        errors.push(
            k.span(),
            "`reduction` and `compression` are the same setting: give only one",
        );
    }

    let mut r = Reader { errors };
    let get = |k: &str| fields.get(k).map(|(key, v)| (key, v));

    // style
    let style = match get("style") {
        None => Style::Paper,
        Some((_, Value::Ident(i))) => match i.to_string().as_str() {
            "seed_2018_02_20" => Style::Seed20180220,
            "seed_2018_01_30" => Style::Seed20180130,
            "paper" => Style::Paper,
            other => {
                r.errors.push(
                    i.span(),
                    format!(
                        "unknown style `{other}`: expected {}{}",
                        expected("style"),
                        did_you_mean(other, STYLES.iter().copied())
                    ),
                );
                Style::Paper
            }
        },
        Some((_, v)) => {
            r.type_error("style", v);
            Style::Paper
        }
    };

    // input
    let input = match get("input") {
        None => Some([3, 32, 32]),
        Some((_, Value::List(span, items))) if items.len() == 3 => {
            let mut dims = [0usize; 3];
            let mut ok = true;
            for (d, item) in dims.iter_mut().zip(items) {
                match r.positive_as("input", "every `input` dimension", item) {
                    Some(n) => *d = n,
                    None => ok = false,
                }
            }
            let _ = span;
            ok.then_some(dims)
        }
        Some((_, Value::List(span, items))) => {
            let hint = match items.as_slice() {
                [Value::Int(h), Value::Int(w)] => {
                    format!(" (a one-channel {h}x{w} image is `[1, {h}, {w}]`, an RGB one `[3, {h}, {w}]`)")
                }
                _ => String::new(),
            };
            r.errors.push(
                *span,
                format!(
                    "`input` expects three dimensions `[channels, height, width]`, found {}{hint}",
                    items.len()
                ),
            );
            None
        }
        Some((_, v)) => {
            r.type_error("input", v);
            None
        }
    };

    let classes = match get("classes") {
        None if named_in_pytorch.contains(&"classes") => None,
        None => {
            r.errors.push(
                decl.ident.span(),
                format!("missing setting `classes` in `{}`: expected the number of output classes, e.g. `classes: 10`", decl.ident),
            );
            None
        }
        Some((_, v)) => match r.positive("classes", v) {
            // One class: softmax gives it probability 1 whatever the input,
            // so the loss and every gradient are zero and nothing trains.
            Some(1) => {
                r.at(
                    v,
                    "`classes` must be at least 2, found `1`: with one class the softmax is 1 for every input, so the loss and every gradient are zero and the network learns nothing",
                );
                None
            }
            c => c,
        },
    };

    let bottleneck_flag = match get("bottleneck") {
        None => style == Style::Seed20180130,
        Some((_, v)) => r.bool("bottleneck", v).unwrap_or(false),
    };
    let bottleneck_width = match get("bottleneck_width") {
        None => {
            if style == Style::Seed20180130 {
                1
            } else {
                4
            }
        }
        Some((k, v)) => {
            if !bottleneck_flag {
                r.errors.push(
                    k.span(),
                    "`bottleneck_width` sets the width of bottleneck units, and this network has none: add `bottleneck: true` or remove `bottleneck_width`",
                );
            }
            r.positive("bottleneck_width", v).unwrap_or(4)
        }
    };

    // blocks / depth / units
    let blocks = match get("blocks") {
        None => None,
        Some((k, v)) => r.positive("blocks", v).map(|b| (b, k.span())),
    };
    let units: Option<Vec<usize>> = match (get("depth"), get("units")) {
        (Some((dk, _)), Some(_)) => {
            r.errors.push(
                dk.span(),
                "give either `depth` or `units`, not both: `depth` derives the units per stage",
            );
            None
        }
        (None, None) if named_in_pytorch.contains(&"units") => None,
        (None, None) => {
            r.errors.push(
                decl.ident.span(),
                format!(
                    "missing setting `depth` or `units` in `{}`: expected e.g. `depth: 40` or `units: [6, 12, 24, 16]`",
                    decl.ident
                ),
            );
            None
        }
        (Some((dk, v)), None) => {
            if style == Style::Seed20180130 {
                r.errors.push(dk.span(), "style `seed_2018_01_30` has no depth rule: give the units per stage instead, e.g. `units: 12` with `blocks: 3`");
                None
            } else {
                // Not `positive`: the rule below explains a depth of 0 better.
                r.usize("depth", v).and_then(|depth| {
                    let b = blocks.map(|(b, _)| b).unwrap_or(3);
                    let per = if bottleneck_flag { 2 * b } else { b };
                    if depth > 4 && (depth - 4) % per == 0 {
                        Some(vec![(depth - 4) / per; b])
                    } else {
                        let below = if depth > 4 { 4 + (depth - 4) / per * per } else { 0 };
                        let above = 4 + ((depth.saturating_sub(4)) / per + 1) * per;
                        let fits = if below > 4 {
                            format!("{below} or {above}")
                        } else {
                            format!("{above}")
                        };
                        r.at(
                            v,
                            format!(
                                "depth {depth} does not fit {b} stages{}: depth - 4 must be a positive multiple of {per}{}; nearest depths that fit: {fits}",
                                if bottleneck_flag { " of bottleneck units" } else { "" },
                                if bottleneck_flag { format!(" (2 convolutions per unit x {b} stages)") } else { String::new() },
                            ),
                        );
                        None
                    }
                })
            }
        }
        (None, Some((_, v))) => {
            match v {
                Value::List(..) => {
                    if let Some((b, span)) = blocks {
                        let _ = b;
                        r.errors.push(span, "`blocks` is implied by the length of the `units` list: remove `blocks`");
                    }
                    r.positive_or_list("units", v)
                        .map(|l| l.into_iter().map(|(n, _)| n).collect())
                }
                _ => r
                    .positive("units", v)
                    .map(|n| vec![n; blocks.map(|(b, _)| b).unwrap_or(3)]),
            }
        }
    };

    let growth: Option<Vec<(usize, Span)>> = match get("growth") {
        None => Some(vec![(12, decl.body_span)]),
        Some((_, v)) => r.positive_or_list("growth", v),
    };
    let stages: Option<Vec<Stage>> = match (&units, &growth) {
        (Some(units), Some(growth)) => {
            if growth.len() != 1 && growth.len() != units.len() {
                let span = get("growth")
                    .map(|(_, v)| v.span())
                    .unwrap_or(decl.ident.span());
                r.errors.push(
                    span,
                    format!(
                        "`growth` lists {} rates but the network has {} stages: give one rate, or one per stage",
                        growth.len(),
                        units.len()
                    ),
                );
                None
            } else {
                Some(
                    units
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
                        .collect(),
                )
            }
        }
        _ => None,
    };
    let growth0 = growth.as_ref().map(|g| g[0].0).unwrap_or(12);

    // compression
    let comp_field = get("compression").or_else(|| get("reduction"));
    let compression = match comp_field {
        None => match style {
            Style::Seed20180130 => 0.5,
            _ => {
                if bottleneck_flag {
                    0.5
                } else {
                    1.0
                }
            }
        },
        Some((k, v)) => {
            let key = k.to_string();
            match r.f64(&key, v) {
                Some(c) if c > 0.0 && c <= 1.0 => {
                    if style == Style::Seed20180220 && !bottleneck_flag && c != 1.0 {
                        r.at(v, format!(
                            "style `seed_2018_02_20` forces `{key}` to 1 without a bottleneck (as the seed does): set `bottleneck: true`, remove `{key}`, or use style `paper`"
                        ));
                    }
                    c
                }
                Some(_) => {
                    r.at(v, format!(
                        "`{key}` must be in (0, 1], found {}: transitions keep floor(channels x {key}) channels, e.g. `{key}: 0.5`",
                        v.text()
                    ));
                    1.0
                }
                None => 1.0,
            }
        }
    };

    let aggregation = match get("aggregation") {
        None => Aggregation::Exponential(2),
        Some((_, v)) => match v {
            Value::Ident(i) if i == "dense" => Aggregation::Dense,
            Value::Ident(i) if i == "exponential" => Aggregation::Exponential(2),
            Value::Call(i, span, args) if i == "exponential" => {
                if args.len() != 1 {
                    r.errors.push(*span, "`exponential` takes one argument, the base c (offsets 1, c, c^2, ...), e.g. `exponential(2)`");
                    Aggregation::Exponential(2)
                } else {
                    match r.usize("aggregation", &args[0]) {
                        Some(c) if c >= 2 => Aggregation::Exponential(c),
                        Some(c) => {
                            r.at(&args[0], format!("the exponential base must be at least 2, found {c}: offsets are 1, c, c^2, ...; for every earlier layer use `dense`"));
                            Aggregation::Exponential(2)
                        }
                        None => Aggregation::Exponential(2),
                    }
                }
            }
            Value::Call(i, span, args) if i == "offsets" => {
                let mut list = Vec::new();
                if args.is_empty() {
                    r.errors.push(
                        *span,
                        "`offsets` needs at least one offset, e.g. `offsets(1, 2, 4)`",
                    );
                }
                for a in args {
                    if let Some(o) =
                        r.positive_as("aggregation", "an offset (1 is the layer right before)", a)
                    {
                        if let Some(&last) = list.last() {
                            if o <= last {
                                r.at(a, format!("offsets must be strictly increasing, but {o} follows {last}, e.g. `offsets(1, 3, 9)`"));
                            }
                        }
                        list.push(o);
                    }
                }
                if !list.is_empty() && list[0] != 1 {
                    r.at(&args[0], format!(
                        "the first offset must be 1, found {}: each layer reads the layer right before it, e.g. `offsets(1, {})`",
                        list[0],
                        list.iter().filter(|&&o| o > 1).map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
                Aggregation::Offsets(list)
            }
            Value::Ident(i) if i == "offsets" => {
                r.errors.push(
                    i.span(),
                    "`offsets` needs the offsets it reads, e.g. `offsets(1, 2, 4)`",
                );
                Aggregation::Exponential(2)
            }
            Value::Call(i, span, _) if i == "dense" => {
                r.errors.push(
                    *span,
                    "`dense` takes no arguments: write `aggregation: dense`",
                );
                Aggregation::Exponential(2)
            }
            Value::Ident(i) | Value::Call(i, ..) => {
                r.errors.push(
                    i.span(),
                    format!(
                        "unknown aggregation `{i}`: expected {}{}",
                        expected("aggregation"),
                        did_you_mean(&i.to_string(), AGGREGATIONS.iter().copied())
                    ),
                );
                Aggregation::Exponential(2)
            }
            Value::List(..) => {
                r.at(v, format!(
                    "`aggregation` expects {}, found a list: for explicit offsets write `offsets(1, 2, 4)`",
                    expected("aggregation")
                ));
                Aggregation::Exponential(2)
            }
            other => {
                r.type_error("aggregation", other);
                Aggregation::Exponential(2)
            }
        },
    };

    let stem = match get("stem") {
        None => Some(match style {
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
        }),
        Some((_, Value::Call(i, span, args))) => {
            let kind = match i.to_string().as_str() {
                "conv3x3" => Some(StemKind::Conv3x3),
                "bn_relu_conv3x3" => Some(StemKind::BnReluConv3x3),
                "imagenet" => Some(StemKind::ImageNet),
                other => {
                    r.errors.push(
                        i.span(),
                        format!(
                            "unknown stem `{other}`: expected {}{}",
                            expected("stem"),
                            did_you_mean(other, STEMS.iter().copied())
                        ),
                    );
                    None
                }
            };
            if args.len() != 1 {
                r.errors.push(
                    *span,
                    format!("`{i}` takes one argument, the stem's output channels, e.g. `{i}(24)`"),
                );
                None
            } else {
                let ch = r.positive_as("stem", "the stem's channel count", &args[0]);
                match (kind, ch) {
                    (Some(kind), Some(channels)) => Some(Stem { kind, channels }),
                    _ => None,
                }
            }
        }
        Some((_, Value::Ident(i))) if STEMS.iter().any(|s| i == s) => {
            r.errors.push(
                i.span(),
                format!("`{i}` needs the stem's output channels, e.g. `stem: {i}(24)`"),
            );
            None
        }
        Some((_, v)) => {
            r.type_error("stem", v);
            None
        }
    };

    let conv_bias = match get("bias") {
        None => style != Style::Paper,
        Some((_, v)) => r.bool("bias", v).unwrap_or(true),
    };
    let dropout = match get("dropout") {
        None => 0.0,
        Some((_, v)) => match r.f64("dropout", v) {
            Some(p) if (0.0..1.0).contains(&p) => p,
            Some(_) => {
                r.at(v, format!("`dropout` must be in [0, 1), found {}: it is the probability of zeroing a value, e.g. `dropout: 0.2`", v.text()));
                0.0
            }
            None => 0.0,
        },
    };
    let (default_eps, default_head_eps) = match style {
        Style::Seed20180220 => (2e-5, 1e-5),
        _ => (1e-5, 1e-5),
    };
    let (bn_eps, head_bn_eps) = match get("bn_eps") {
        None => (default_eps, default_head_eps),
        Some((_, v)) => match r.f64("bn_eps", v) {
            Some(e) if e > 0.0 && e.is_finite() => (e, e),
            Some(_) => {
                r.at(v, format!("`bn_eps` must be a positive number, found {}: BatchNorm adds it to the variance, e.g. `bn_eps: 1e-5`", v.text()));
                (default_eps, default_head_eps)
            }
            None => (default_eps, default_head_eps),
        },
    };
    let bn_momentum = match get("bn_momentum") {
        None => 0.9,
        Some((_, v)) => match r.f64("bn_momentum", v) {
            Some(m) if (0.0..1.0).contains(&m) => m,
            Some(_) => {
                r.at(v, format!("`bn_momentum` must be in [0, 1) (the fraction of the running statistics kept), found {}, e.g. `bn_momentum: 0.9`", v.text()));
                0.9
            }
            None => 0.9,
        },
    };

    // The input must survive every 2x2 pooling of the transitions.
    if let (Some(input), Some(stages), Some(stem)) = (input, &stages, &stem) {
        let imagenet = stem.kind == StemKind::ImageNet;
        let input_items = match get("input") {
            Some((_, Value::List(_, items))) => Some(items),
            _ => None,
        };
        // Where to point when the input is the default: at what set the
        // number of stages, or the stem.
        let stages_span = match (get("units"), get("blocks")) {
            (Some((_, v @ Value::List(..))), _) => Some(v.span()),
            (_, Some((_, v))) => Some(v.span()),
            _ => None,
        };
        let stem_span = get("stem").map(|(_, v)| v.span());
        let (mut h, mut w) = (input[1], input[2]);
        if imagenet {
            if h < 7 || w < 7 {
                let span = get("input")
                    .map(|(_, v)| v.span())
                    .or(stem_span)
                    .unwrap_or(decl.ident.span());
                r.errors.push(
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
        // A side fits when, after the stem, it halves evenly `pools` times.
        let fits = |d: usize| {
            let mut x = if imagenet {
                if d < 7 {
                    return false;
                }
                ((d - 1) / 2) / 2 + 1
            } else {
                d
            };
            for _ in 0..pools {
                if x < 2 || x % 2 != 0 {
                    return false;
                }
                x /= 2;
            }
            true
        };
        for t in 0..pools {
            if h % 2 != 0 || w % 2 != 0 || h < 2 || w < 2 {
                let (h_fits, w_fits) = (fits(input[1]), fits(input[2]));
                let span = match input_items {
                    Some(items) if h_fits && !w_fits => items[2].span(),
                    Some(items) if !h_fits && w_fits => items[1].span(),
                    Some(_) => get("input")
                        .map(|(_, v)| v.span())
                        .unwrap_or(decl.ident.span()),
                    None => stages_span.or(stem_span).unwrap_or(decl.ident.span()),
                };
                let multiple = u32::try_from(pools)
                    .ok()
                    .and_then(|p| 1usize.checked_shl(p))
                    .and_then(|m| m.checked_mul(if imagenet { 4 } else { 1 }));
                let rule = match multiple {
                    Some(m) if imagenet => format!(
                        "with {} stages, height and width after the `imagenet` stem's two stride-2 steps must be multiples of {} (inputs that are multiples of {m} are)",
                        stages.len(),
                        m / 4
                    ),
                    Some(m) => format!("with {} stages height and width must be multiples of {m}", stages.len()),
                    None => format!("{} stages are too many for any input", stages.len()),
                };
                // Nearest sizes that fit, rounding each bad side down and up.
                let suggest = multiple
                    .map(|m| {
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
                                if input_items.is_some() {
                                    ""
                                } else {
                                    ", or use fewer stages"
                                }
                            )
                        }
                    })
                    .unwrap_or_default();
                let which = if input_items.is_some() {
                    "input"
                } else {
                    "the default input"
                };
                r.errors.push(
                    span,
                    format!(
                        "{which} {}x{} reaches transition {t} at {h}x{w}, which its 2x2/2 average pool cannot halve: {rule}{suggest}",
                        input[1], input[2],
                    ),
                );
                break;
            }
            h /= 2;
            w /= 2;
        }
        // The last stage at 1x1 (e.g. the `imagenet` stem on 32x32 input
        // with four stages): its 3x3 convolutions see their centre tap only
        // and the rest is padding. Reported unless a pooling error above
        // already stopped the walk.
        if errors_len(r.errors) == start && (h == 1 || w == 1) && (input[1] > 1 || input[2] > 1) {
            let span = get("input")
                .map(|(_, v)| v.span())
                .or(stem_span)
                .or(stages_span)
                .unwrap_or(decl.ident.span());
            r.errors.push(
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

    if errors_len(r.errors) > start {
        return None;
    }
    let bottleneck = bottleneck_flag.then_some(Bottleneck {
        width: bottleneck_width,
        relu: style != Style::Seed20180220,
    });
    Some(Config {
        attrs: decl.attrs,
        vis: decl.vis,
        ident: decl.ident,
        style,
        input: input?,
        classes: classes?,
        stem: stem?,
        stages: stages?,
        bottleneck,
        trailing_bn: style == Style::Seed20180220,
        conv_bias,
        compression,
        aggregation,
        head_bn: style != Style::Seed20180130,
        bn_eps,
        head_bn_eps,
        bn_momentum,
        unbiased_running_var: style == Style::Paper,
        dropout,
        dropout_in_units: style != Style::Seed20180220,
    })
}

fn errors_len(e: &Errors) -> usize {
    e.len()
}
