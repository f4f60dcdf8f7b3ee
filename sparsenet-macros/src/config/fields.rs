//! A declaration's settings by key: unknown keys (with torchvision's names
//! for ours pointed out) and keys given twice are reported here, once, so
//! that every key group below reads each known key at most once.

use super::keys::{self, Key};
use crate::ast::{Field, Value};
use crate::errors::Errors;
use proc_macro2::Span;
use std::collections::BTreeMap;
use syn::Ident;

pub struct Fields {
    given: BTreeMap<&'static str, (Ident, Value)>,
    /// Our keys whose PyTorch names were given: already reported, so not
    /// reported again as missing.
    named_in_pytorch: Vec<Key>,
}

impl Fields {
    /// Sorts `fields` by key, reporting unknown and repeated keys.
    pub fn collect(fields: Vec<Field>, errors: &mut Errors) -> Fields {
        let mut given: BTreeMap<&'static str, (Ident, Value)> = BTreeMap::new();
        let mut named_in_pytorch = Vec::new();
        for f in fields {
            let name = f.key.to_string();
            let Some(key) = keys::named(&name) else {
                // PyTorch's (torchvision's DenseNet) names for the same settings.
                let best = match keys::PYTORCH_NAMES
                    .iter()
                    .find(|(theirs, _)| *theirs == name)
                {
                    Some((_, ours)) => {
                        named_in_pytorch.push(*ours);
                        format!("; PyTorch's name: here it is `{ours}`")
                    }
                    None => keys::did_you_mean(&name, keys::ALL.iter().map(|k| k.name)),
                };
                let all: Vec<&str> = keys::ALL.iter().map(|k| k.name).collect();
                errors.push(
                    f.key.span(),
                    format!(
                        "unknown setting `{name}`{best} (expected one of: {})",
                        all.join(", ")
                    ),
                );
                continue;
            };
            if let Some((_, first)) = given.get(key.name) {
                errors.push(
                    f.key.span(),
                    format!("duplicate setting `{name}`: it is already set above, to {}; give each setting once", first.describe()),
                );
                continue;
            }
            given.insert(key.name, (f.key, f.value));
        }
        Fields {
            given,
            named_in_pytorch,
        }
    }

    /// The key as written and its value, if `key` is set.
    pub fn get(&self, key: Key) -> Option<(&Ident, &Value)> {
        self.given.get(key.name).map(|(k, v)| (k, v))
    }

    pub fn value(&self, key: Key) -> Option<&Value> {
        self.get(key).map(|(_, v)| v)
    }

    /// Where `key`'s value is written, if it is set.
    pub fn value_span(&self, key: Key) -> Option<Span> {
        self.value(key).map(Value::span)
    }

    pub fn contains(&self, key: Key) -> bool {
        self.given.contains_key(key.name)
    }

    /// Whether `key` was given under its PyTorch name (and so reported).
    pub fn named_in_pytorch(&self, key: Key) -> bool {
        self.named_in_pytorch.contains(&key)
    }
}
