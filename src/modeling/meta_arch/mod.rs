//! Meta-architectures: a whole model (backbone + heads + losses) behind one interface.

pub mod classifier;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::registry::Registry;
use crate::config::Config;

pub use classifier::Classifier;

/// Named losses; the total is their sum.
pub type LossMap = BTreeMap<String, Tensor>;

/// What training provides besides the images.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One class index per image (u32), for classifiers.
    Labels(Tensor),
}

/// A batch of images, already normalised (`(x - PIXEL_MEAN) / PIXEL_STD`), NCHW.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub targets: Option<Targets>,
}

#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Filled in training.
    pub losses: LossMap,
    /// Class scores (N, classes) before softmax, for classifiers.
    pub logits: Option<Tensor>,
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

pub static META_ARCH_REGISTRY: LazyLock<Registry<MetaArchBuilder>> = LazyLock::new(|| {
    let registry: Registry<MetaArchBuilder> = Registry::new("meta-architecture");
    registry.register(
        "Classifier",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(Classifier::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry
});
