//! A batch's ground truth as tensors, padded to its largest box count, so that targets
//! can be built for all images at once where the model's outputs are.

use candle_core::{Device, Result, Tensor};

use super::Instances;

pub struct PaddedInstances {
    /// (N, G, 4) boxes; padding rows are zero.
    pub boxes: Tensor,
    /// (N, G) 1 for a box matched as usual, else 0.
    pub kept: Tensor,
    /// (N, G) 1 for an ignored box (crowd, invalid face), else 0.
    pub ignored: Tensor,
    /// (N, G) the boxes' classes as f32 (exact below 2^24).
    pub classes: Tensor,
    /// Each image's box count (host values), G their maximum or 1.
    pub counts: Vec<usize>,
}

impl PaddedInstances {
    /// G is at least one, so every reduction over boxes has a value even for a batch
    /// without boxes.
    pub fn new(targets: &[Instances], device: &Device) -> Result<Self> {
        let n = targets.len();
        let g = targets.iter().map(Instances::len).max().unwrap_or(0).max(1);
        let mut boxes = vec![0f32; n * g * 4];
        let mut kept = vec![0f32; n * g];
        let mut ignored = vec![0f32; n * g];
        let mut classes = vec![0f32; n * g];
        for (i, inst) in targets.iter().enumerate() {
            for (j, b) in inst.boxes.iter().enumerate() {
                let at = i * g + j;
                boxes[at * 4..at * 4 + 4].copy_from_slice(b);
                kept[at] = (!inst.ignore[j]) as u8 as f32;
                ignored[at] = inst.ignore[j] as u8 as f32;
                classes[at] = inst.classes[j] as f32;
            }
        }
        Ok(Self {
            boxes: Tensor::from_vec(boxes, (n, g, 4), device)?,
            kept: Tensor::from_vec(kept, (n, g), device)?,
            ignored: Tensor::from_vec(ignored, (n, g), device)?,
            classes: Tensor::from_vec(classes, (n, g), device)?,
            counts: targets.iter().map(Instances::len).collect(),
        })
    }
}
