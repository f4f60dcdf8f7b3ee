//! Every key a declaration may set, each a named constant with what it
//! expects. [`ALL`] is the one list: the lookup of a declaration's settings,
//! the unknown-key message and its "did you mean", and the test that keeps
//! `docs/declaring.md`'s key table in step all read it.

use std::fmt;

/// A key of a declaration (`name: value`) and what it expects, as messages
/// say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub expects: &'static str,
}

/// A key reads as its name in messages: "`{key}` expects ...".
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

pub const STYLE: Key = Key {
    name: "style",
    expects: "`seed_2018_02_20`, `seed_2018_01_30` or `paper`",
};
pub const INPUT: Key = Key {
    name: "input",
    expects: "`[channels, height, width]`, e.g. `[3, 32, 32]`",
};
pub const CLASSES: Key = Key {
    name: "classes",
    expects: "the number of output classes, an integer of at least 2",
};
pub const DEPTH: Key = Key {
    name: "depth",
    expects: "a positive integer: total layers, units per stage = (depth - 4) / stages",
};
pub const BLOCKS: Key = Key {
    name: "blocks",
    expects: "the number of stages (dense/sparse blocks), a positive integer",
};
pub const UNITS: Key = Key {
    name: "units",
    expects: "units per stage: an integer (with `blocks`) or a list such as `[6, 12, 24, 16]`",
};
pub const GROWTH: Key = Key {
    name: "growth",
    expects: "the growth rate: an integer, or one per stage such as `[16, 32, 64]`",
};
pub const BOTTLENECK: Key = Key {
    name: "bottleneck",
    expects: "`true` or `false`",
};
pub const BOTTLENECK_WIDTH: Key = Key {
    name: "bottleneck_width",
    expects: "a positive integer: the 1x1 convolution has width x growth channels",
};
pub const COMPRESSION: Key = Key {
    name: "compression",
    expects: "a number in (0, 1]: transitions keep floor(channels x compression)",
};
/// The seed's name for [`COMPRESSION`].
pub const REDUCTION: Key = Key {
    name: "reduction",
    expects: "a number in (0, 1] (the seed's name for `compression`)",
};
pub const AGGREGATION: Key = Key {
    name: "aggregation",
    expects: "`exponential(2)`, `dense` or `offsets(1, 2, 4)`",
};
pub const STEM: Key = Key {
    name: "stem",
    expects: "`conv3x3(C)`, `bn_relu_conv3x3(C)` or `imagenet(C)`",
};
pub const BIAS: Key = Key {
    name: "bias",
    expects: "`true` or `false`: whether convolutions have biases",
};
pub const DROPOUT: Key = Key {
    name: "dropout",
    expects: "a dropout rate in [0, 1)",
};
pub const BN_EPS: Key = Key {
    name: "bn_eps",
    expects: "a positive number: BatchNorm epsilon",
};
pub const BN_MOMENTUM: Key = Key {
    name: "bn_momentum",
    expects: "a number in [0, 1): the fraction of the running statistics kept at each update",
};

pub const LARGE_INPUT: Key = Key {
    name: "large_input",
    expects: "`allow` (keeps an input larger than 64x64 with a stride-1 stem)",
};

/// Every key, in the order messages list them.
pub const ALL: &[Key] = &[
    STYLE,
    INPUT,
    CLASSES,
    DEPTH,
    BLOCKS,
    UNITS,
    GROWTH,
    BOTTLENECK,
    BOTTLENECK_WIDTH,
    COMPRESSION,
    REDUCTION,
    AGGREGATION,
    STEM,
    BIAS,
    DROPOUT,
    BN_EPS,
    BN_MOMENTUM,
    LARGE_INPUT,
];

/// The keys whose value may be a list `[...]`.
pub const TAKE_LISTS: &[Key] = &[INPUT, UNITS, GROWTH];

/// The key called `name`, if there is one.
pub fn named(name: &str) -> Option<Key> {
    ALL.iter().copied().find(|k| k.name == name)
}

/// torchvision's DenseNet arguments and the keys they correspond to.
pub const PYTORCH_NAMES: &[(&str, Key)] = &[
    ("num_classes", CLASSES),
    ("growth_rate", GROWTH),
    ("block_config", UNITS),
    ("num_init_features", STEM),
    ("bn_size", BOTTLENECK_WIDTH),
    ("drop_rate", DROPOUT),
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
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .min()
        .filter(|(d, _)| *d <= 3.min(name.len().max(1) - 1).max(1))
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}
