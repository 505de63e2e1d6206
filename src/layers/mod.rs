//! Building blocks shared by backbones and heads.

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod shape_spec;

pub use activation::Activation;
pub use batch_norm::{BatchNorm2d, FrozenBatchNorm2d, Norm, NormKind};
pub use conv::{Conv2d, Conv2dConfig};
pub use shape_spec::ShapeSpec;
pub mod depthwise;
pub mod fused;
pub mod upsample;
