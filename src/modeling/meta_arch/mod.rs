//! Meta-architectures: a whole model (backbone + heads + losses) behind one interface.

pub mod classifier;
pub mod rcnn;
pub mod ssdlite;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::registry::Registry;
use crate::config::Config;

pub use classifier::Classifier;
pub use rcnn::GeneralizedRcnn;
pub use ssdlite::SsdLite;

use crate::data::augmentation::Instances;

/// Named losses; the total is their sum.
pub type LossMap = BTreeMap<String, Tensor>;

/// What training provides besides the images.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One class index per image (u32), for classifiers.
    Labels(Tensor),
    /// Boxes (in the batch's input pixels), classes and ignore flags per image, for detectors.
    Instances(Vec<Instances>),
}

/// A batch of images, already normalised (`(x - PIXEL_MEAN) / PIXEL_STD`), NCHW.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub targets: Option<Targets>,
    /// (height, width) of each image before padding; empty means the whole tensor.
    pub image_sizes: Vec<(usize, usize)>,
}

impl Batch {
    pub fn new(images: Tensor, targets: Option<Targets>) -> Self {
        Self {
            images,
            targets,
            image_sizes: Vec::new(),
        }
    }

    /// Image `i`'s unpadded (height, width).
    pub fn image_size(&self, i: usize) -> Result<(usize, usize)> {
        match self.image_sizes.get(i) {
            Some(&s) => Ok(s),
            None => {
                let (_, _, h, w) = self.images.dims4()?;
                Ok((h, w))
            }
        }
    }
}

/// One image's detections in the batch's input pixels (XYXY), best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceDetections {
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    pub classes: Vec<usize>,
}

impl InstanceDetections {
    /// Per-class NMS over candidate boxes, then the best `cap`.
    pub fn from_candidates(
        boxes: &[[f32; 4]],
        scores: &[f32],
        classes: &[usize],
        nms_thresh: f32,
        cap: usize,
    ) -> Self {
        let mut keep = crate::structures::boxes::batched_nms(boxes, scores, classes, nms_thresh);
        keep.truncate(cap);
        Self {
            boxes: keep.iter().map(|&j| boxes[j]).collect(),
            scores: keep.iter().map(|&j| scores[j]).collect(),
            classes: keep.iter().map(|&j| classes[j]).collect(),
        }
    }
}

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

pub static META_ARCH_REGISTRY: LazyLock<Registry<MetaArchBuilder>> = LazyLock::new(|| {
    let registry: Registry<MetaArchBuilder> = Registry::new("meta-architecture");
    registry.register(
        "Classifier",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(Classifier::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry.register(
        "GeneralizedRCNN",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(GeneralizedRcnn::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry.register(
        "SSDLite",
        Arc::new(|cfg: &Config, vb: VarBuilder| {
            Ok(Box::new(SsdLite::from_config(cfg, vb)?) as Box<dyn MetaArch>)
        }),
    );
    registry
});
