//! The element types a generated model can run in.
//!
//! Models run in `f32`; the same generated code runs in `f64` so that tests can
//! compare against references and finite differences without rounding noise.

use std::fmt::{Debug, Display};

/// A floating-point element type usable by every kernel.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::MulAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + crate::weights::WeightElem
    + bytemuck::Pod
    + 'static
{
    /// Converts a compile-time constant (an epsilon, a momentum) to this type.
    fn from_f64c(v: f64) -> Self;
    /// Widens to f64 (for statistics and error reports).
    fn to_f64c(self) -> f64;
}

impl Float for f32 {
    #[inline]
    fn from_f64c(v: f64) -> Self {
        v as f32
    }
    #[inline]
    fn to_f64c(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    #[inline]
    fn from_f64c(v: f64) -> Self {
        v
    }
    #[inline]
    fn to_f64c(self) -> f64 {
        self
    }
}
