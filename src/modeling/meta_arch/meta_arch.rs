//! What a meta-architecture is: a whole model (backbone + heads + losses) behind one
//! interface.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::structures::{Batch, InstanceDetections, LossMap};

#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Filled in training.
    pub losses: LossMap,
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
}

pub type MetaArchBuilder = dyn Fn(&Config, VarBuilder) -> Result<Box<dyn MetaArch>> + Send + Sync;
