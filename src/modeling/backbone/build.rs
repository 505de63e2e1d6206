//! `build_backbone`: a config to a backbone, through the registry.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::backbone::Backbone;
use super::registry::BACKBONE_REGISTRY;
use crate::config::Config;
use crate::layers::ShapeSpec;

/// Builds `MODEL.BACKBONE.NAME` from the registry.
pub fn build_backbone(cfg: &Config, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
    let key = cfg.located("MODEL.BACKBONE.NAME");
    build_backbone_named(cfg, &key, &cfg.model.backbone.name, vb)
}

/// Builds the backbone registered as `name`, the value of config key `key` (which an
/// unknown name's error names, with its file:line from [`Config::located`]).
pub fn build_backbone_named(
    cfg: &Config,
    key: &str,
    name: &str,
    vb: VarBuilder,
) -> Result<Box<dyn Backbone>> {
    let builder = BACKBONE_REGISTRY.get_for(key, name)?;
    let input = ShapeSpec {
        channels: cfg.model.pixel_mean.len(),
        stride: 1,
    };
    builder(cfg, vb, input)
}
