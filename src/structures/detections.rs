//! Detections of one image.

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
        let mut keep = super::boxes::batched_nms(boxes, scores, classes, nms_thresh);
        keep.truncate(cap);
        Self {
            boxes: keep.iter().map(|&j| boxes[j]).collect(),
            scores: keep.iter().map(|&j| scores[j]).collect(),
            classes: keep.iter().map(|&j| classes[j]).collect(),
        }
    }
}
