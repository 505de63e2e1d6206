//! What a meta-architecture is: a whole model (backbone + heads + losses) behind one
//! interface.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::modeling::OnnxExportSpec;
use crate::onnx::OnnxGraph;
use crate::structures::{Batch, InstanceDetections, LossMap};

#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Filled in training.
    pub losses: LossMap,
    /// Training statistics that are not losses (Detectron2's `put_scalar`), e.g. a
    /// classifier's batch `accuracy`: logged and averaged per epoch, never differentiated.
    pub scalars: std::collections::BTreeMap<String, Tensor>,
    /// Class scores (N, classes) before softmax, for classifiers.
    pub logits: Option<Tensor>,
    /// Per image, in inference, for detectors.
    pub detections: Option<Vec<InstanceDetections>>,
}

pub trait MetaArch: Send + Sync {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs>;
    /// Parameter-name prefixes that receive no gradient and are kept out of the optimizer.
    fn frozen_prefixes(&self) -> Vec<String>;
    /// Inputs are padded to a multiple of this.
    fn size_divisibility(&self) -> usize;
    /// An inference-only copy with norms folded into convolutions; fuse again after
    /// the weights change.
    fn fused(&self) -> Result<Box<dyn MetaArch>>;
    /// The network's outputs before any post-processing, named as a raw ONNX export
    /// names them (a detector's head outputs; a classifier's logits).
    fn raw_outputs(&self, _images: &Tensor) -> Result<Vec<(String, Tensor)>> {
        candle_core::bail!("this meta-architecture does not expose raw outputs")
    }
    /// Adds the inference computation after `x` (the normalised images) and the graph
    /// outputs to `g`; returns a description of the outputs for the file's metadata.
    fn export_onnx(&self, _g: &mut OnnxGraph, _x: &str, _spec: &OnnxExportSpec) -> Result<String> {
        candle_core::bail!("this meta-architecture has no ONNX export")
    }
}

pub type MetaArchBuilder = dyn Fn(&Config, VarBuilder) -> Result<Box<dyn MetaArch>> + Send + Sync;
