//! A batch of model inputs: images and, in training, their targets.

use candle_core::{Result, Tensor};

use super::instances::Instances;

/// What training provides besides the images.
#[derive(Debug, Clone)]
pub enum Targets {
    /// One class index per image (u32), for classifiers.
    Labels(Tensor),
    /// Boxes (in the batch's input pixels), classes and ignore flags per image, for detectors.
    Instances(Vec<Instances>),
    /// The classes present in each image, for multi-label classifiers.
    MultiLabels(Vec<Vec<usize>>),
}

/// A batch of images, already normalised (`(x - PIXEL_MEAN) / PIXEL_STD`), NCHW.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub targets: Option<Targets>,
    /// (height, width) of each image before padding; empty means the whole tensor.
    pub image_sizes: Vec<(usize, usize)>,
    /// Each image's training seed when every input has one (see `ModelInput::seed`).
    pub seeds: Vec<u64>,
}

impl Batch {
    pub fn new(images: Tensor, targets: Option<Targets>) -> Self {
        Self {
            images,
            targets,
            image_sizes: Vec::new(),
            seeds: Vec::new(),
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
