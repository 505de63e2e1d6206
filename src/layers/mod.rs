//! Modules shared by backbones and heads: Conv2d with its norm and activation, the
//! norms, `ShapeSpec`, losses. The kernels they run live in [`crate::ops`].

pub mod autocast;
pub mod batch_norm;
pub mod conv;
pub mod dropout;
pub mod losses;
pub mod params;
pub mod shape_spec;

pub use crate::ops::Activation;
pub use batch_norm::{BatchNorm2d, FrozenBatchNorm2d, Norm, NormKind};
pub use conv::{forward_chain_t, kaiming_fan_out, Conv2d, Conv2dConfig};
pub use shape_spec::ShapeSpec;
