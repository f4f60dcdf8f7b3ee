//! One kernel per kind of layer, forward and backward, generic over
//! [`Float`](crate::Float): the calls the generated training pass makes.

pub mod backward;
pub mod forward;
