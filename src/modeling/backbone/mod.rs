//! Backbones: image in, named multi-scale feature maps out. Each is one file that
//! registers its builder by name; `build_backbone` picks `MODEL.BACKBONE.NAME`.

#[allow(clippy::module_inception)] // backbone/backbone.rs, as in Detectron2
mod backbone;
mod build;
pub mod fpn;
pub mod mobilenet_v2;
mod registry;

pub use backbone::{register_builder, Backbone, BackboneBuilder};
pub use build::{build_backbone, build_backbone_named};
pub use fpn::Fpn;
pub use mobilenet_v2::MobileNetV2;
pub use registry::BACKBONE_REGISTRY;
