//! `bottleneck`, `bottleneck_width` and `compression` (or the seed's
//! `reduction`): the 1x1 convolution before each unit's 3x3, and how many
//! channels a transition keeps.

use super::keys;
use super::{Resolver, Style};

impl Resolver<'_> {
    /// Whether units have a bottleneck, and its width as a multiple of the
    /// growth rate (meaningful only with one).
    pub(super) fn bottleneck(&mut self, style: Style) -> (bool, usize) {
        let flag = match self.value(keys::BOTTLENECK) {
            None => style == Style::Seed20180130,
            Some(v) => self.bool(keys::BOTTLENECK, v).unwrap_or(false),
        };
        let width = match self.get(keys::BOTTLENECK_WIDTH) {
            None => {
                if style == Style::Seed20180130 {
                    1
                } else {
                    4
                }
            }
            Some((k, v)) => {
                if !flag {
                    self.push(
                        k.span(),
                        "`bottleneck_width` sets the width of bottleneck units, and this network has none: add `bottleneck: true` or remove `bottleneck_width`",
                    );
                }
                self.positive(keys::BOTTLENECK_WIDTH, v).unwrap_or(4)
            }
        };
        (flag, width)
    }

    /// The fraction of channels a transition keeps.
    pub(super) fn compression(&mut self, style: Style, bottleneck: bool) -> f64 {
        // Under either name; both given is reported with the unknown keys.
        let given = [keys::COMPRESSION, keys::REDUCTION]
            .into_iter()
            .find_map(|key| Some((key, self.value(key)?)));
        let Some((key, v)) = given else {
            return match style {
                Style::Seed20180130 => 0.5,
                _ => {
                    if bottleneck {
                        0.5
                    } else {
                        1.0
                    }
                }
            };
        };
        match self.f64(key, v) {
            Some(c) if c > 0.0 && c <= 1.0 => {
                if style == Style::Seed20180220 && !bottleneck && c != 1.0 {
                    self.at(v, format!(
                        "style `seed_2018_02_20` forces `{key}` to 1 without a bottleneck (as the seed does): set `bottleneck: true`, remove `{key}`, or use style `paper`"
                    ));
                }
                c
            }
            Some(_) => {
                self.at(v, format!(
                    "`{key}` must be in (0, 1], found {}: transitions keep floor(channels x {key}) channels, e.g. `{key}: 0.5`",
                    v.text()
                ));
                1.0
            }
            None => 1.0,
        }
    }
}
