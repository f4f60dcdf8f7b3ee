//! The convolutions behind the layer kernels.
//!
//! * [`direct`]: f32 stride-1 convolution with AVX2 + FMA, no im2col.
//! * [`winograd`]: F(2x2, 3x3) and F(4x4, 3x3) for the 3x3 layers, on the
//!   direct kernel's products.
//! * [`pointwise_wgrad`]: the weight gradient of 1x1 convolutions.
//! * [`matmul`]: a strided matrix product over the `gemm` crate, for `f64`
//!   and for the convolutions the direct kernel does not take.

pub mod direct;
pub mod matmul;
pub mod pointwise_wgrad;
pub mod winograd;
