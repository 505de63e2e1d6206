//! What a backbone is: image in, named multi-scale feature maps out, described by
//! `output_shape()` (Detectron2's `Backbone`).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::layers::ShapeSpec;
use crate::onnx::OnnxGraph;
use crate::utils::registry::Registry;

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
    /// The inference computation as ONNX nodes after `x` (the normalised images), one
    /// value per output feature, as `forward_t(x, false)` returns them.
    fn export_onnx(&self, _g: &mut OnnxGraph, _x: &str) -> Result<BTreeMap<String, String>> {
        candle_core::bail!("this backbone has no ONNX export")
    }
}

/// `build(cfg, vb, input_shape)`, as Detectron2's backbone builders.
pub type BackboneBuilder =
    dyn Fn(&Config, VarBuilder, ShapeSpec) -> Result<Box<dyn Backbone>> + Send + Sync;

/// Used by builders to register themselves.
pub fn register_builder(
    registry: &Registry<BackboneBuilder>,
    name: &str,
    f: impl Fn(&Config, VarBuilder, ShapeSpec) -> Result<Box<dyn Backbone>> + Send + Sync + 'static,
) {
    registry.register(name, Arc::new(f));
}
