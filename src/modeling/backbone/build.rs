//! `build_backbone`: a config to a backbone, through the registry.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::backbone::Backbone;
use super::registry::BACKBONE_REGISTRY;
use crate::config::Config;
use crate::layers::ShapeSpec;

/// Builds `MODEL.BACKBONE.NAME` from the registry.
pub fn build_backbone(cfg: &Config, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
    let builder = BACKBONE_REGISTRY.get(&cfg.model.backbone.name)?;
    let input = ShapeSpec {
        channels: cfg.model.pixel_mean.len(),
        stride: 1,
    };
    builder(cfg, vb, input)
}
