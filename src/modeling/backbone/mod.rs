//! Backbones: image in, named multi-scale feature maps out, described by `output_shape()`.

pub mod fpn;
pub mod mobilenet_v2;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::registry::Registry;
use crate::config::Config;
use crate::layers::ShapeSpec;

pub use fpn::Fpn;
pub use mobilenet_v2::MobileNetV2;

pub trait Backbone: Send + Sync {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<BTreeMap<String, Tensor>>;
    fn output_shape(&self) -> BTreeMap<String, ShapeSpec>;
    /// Inputs must be padded to a multiple of this (0: any size).
    fn size_divisibility(&self) -> usize {
        0
    }
    /// An inference-only copy with norms folded into convolutions (see `Conv2d::fused`).
    fn fused(&self) -> Result<Box<dyn Backbone>>;
    /// Parameter-name prefixes that are frozen: no gradient, not given to the optimizer.
    fn frozen_prefixes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// `build(cfg, vb, input_shape)`, as Detectron2's backbone builders.
pub type BackboneBuilder =
    dyn Fn(&Config, VarBuilder, ShapeSpec) -> Result<Box<dyn Backbone>> + Send + Sync;

pub static BACKBONE_REGISTRY: LazyLock<Registry<BackboneBuilder>> = LazyLock::new(|| {
    let registry = Registry::new("backbone");
    mobilenet_v2::register(&registry);
    fpn::register(&registry);
    registry
});

/// Builds `MODEL.BACKBONE.NAME` from the registry.
pub fn build_backbone(cfg: &Config, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
    let builder = BACKBONE_REGISTRY.get(&cfg.model.backbone.name)?;
    let input = ShapeSpec {
        channels: cfg.model.pixel_mean.len(),
        stride: 1,
    };
    builder(cfg, vb, input)
}

/// Used by builders to register themselves.
pub(crate) fn register_builder(
    registry: &Registry<BackboneBuilder>,
    name: &str,
    f: impl Fn(&Config, VarBuilder, ShapeSpec) -> Result<Box<dyn Backbone>> + Send + Sync + 'static,
) {
    registry.register(name, Arc::new(f));
}
