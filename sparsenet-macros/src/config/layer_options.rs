//! `bias`, `dropout`, `bn_eps` and `bn_momentum`: options of every layer,
//! each defaulting to the style's.

use super::keys;
use super::{Resolver, Style};

/// The resolved per-layer options.
pub(super) struct LayerOptions {
    pub conv_bias: bool,
    pub dropout: f64,
    pub bn_eps: f64,
    /// The head's BatchNorm epsilon (the seed's 2018-02-20 version uses
    /// another one there).
    pub head_bn_eps: f64,
    pub bn_momentum: f64,
}

impl Resolver<'_> {
    pub(super) fn layer_options(&mut self, style: Style) -> LayerOptions {
        let conv_bias = match self.value(keys::BIAS) {
            None => style != Style::Paper,
            Some(v) => self.bool(keys::BIAS, v).unwrap_or(true),
        };
        let dropout = match self.value(keys::DROPOUT) {
            None => 0.0,
            Some(v) => match self.f64(keys::DROPOUT, v) {
                Some(p) if (0.0..1.0).contains(&p) => p,
                Some(_) => {
                    self.at(v, format!("`dropout` must be in [0, 1), found {}: it is the probability of zeroing a value, e.g. `dropout: 0.2`", v.text()));
                    0.0
                }
                None => 0.0,
            },
        };
        let (default_eps, default_head_eps) = match style {
            Style::Seed20180220 => (2e-5, 1e-5),
            _ => (1e-5, 1e-5),
        };
        let (bn_eps, head_bn_eps) = match self.value(keys::BN_EPS) {
            None => (default_eps, default_head_eps),
            Some(v) => match self.f64(keys::BN_EPS, v) {
                Some(e) if e > 0.0 && e.is_finite() => (e, e),
                Some(_) => {
                    self.at(v, format!("`bn_eps` must be a positive number, found {}: BatchNorm adds it to the variance, e.g. `bn_eps: 1e-5`", v.text()));
                    (default_eps, default_head_eps)
                }
                None => (default_eps, default_head_eps),
            },
        };
        let bn_momentum = match self.value(keys::BN_MOMENTUM) {
            None => 0.9,
            Some(v) => match self.f64(keys::BN_MOMENTUM, v) {
                Some(m) if (0.0..1.0).contains(&m) => m,
                Some(_) => {
                    self.at(v, format!("`bn_momentum` must be in [0, 1) (the fraction of the running statistics kept), found {}, e.g. `bn_momentum: 0.9`", v.text()));
                    0.9
                }
                None => 0.9,
            },
        };
        LayerOptions {
            conv_bias,
            dropout,
            bn_eps,
            head_bn_eps,
            bn_momentum,
        }
    }
}
