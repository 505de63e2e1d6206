//! One image as a model takes it (Detectron2's per-image input dict).

use candle_core::Tensor;

use super::class_label::ClassLabel;
use super::instances::Instances;

/// An image after the data pipeline (decoded, resized, cropped), before the model's own
/// preprocessing (normalisation, padding), with what training or evaluation needs.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// RGB pixels in 0..255, (3, H, W), any float dtype and device.
    pub image: Tensor,
    /// Ground-truth boxes in `image`'s pixels, for training a detector.
    pub instances: Option<Instances>,
    /// The class (or classes), for training a classifier.
    pub label: Option<ClassLabel>,
    /// (height, width) to report detections in, usually the original image's; `None`
    /// reports them in `image`'s pixels.
    pub output_size: Option<(usize, usize)>,
    /// The training sample's seed, for randomness inside the model (dropout) that must
    /// not depend on the batch it is in.
    pub seed: Option<u64>,
}

impl ModelInput {
    /// An image alone, for inference in its own pixels.
    pub fn new(image: Tensor) -> Self {
        Self {
            image,
            instances: None,
            label: None,
            output_size: None,
            seed: None,
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub fn with_instances(mut self, instances: Instances) -> Self {
        self.instances = Some(instances);
        self
    }

    pub fn with_label(mut self, label: usize) -> Self {
        self.label = Some(ClassLabel::Single(label));
        self
    }

    pub fn with_class_label(mut self, label: ClassLabel) -> Self {
        self.label = Some(label);
        self
    }

    pub fn with_output_size(mut self, height: usize, width: usize) -> Self {
        self.output_size = Some((height, width));
        self
    }
}
