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

    /// From `input` (height, width) pixels to `output` ones (Detectron2's
    /// `detector_postprocess`): boxes scaled per axis, then clipped to the output image.
    pub fn rescale(&mut self, input: (usize, usize), output: (usize, usize)) {
        if input == output {
            return;
        }
        let sx = output.1 as f32 / input.1 as f32;
        let sy = output.0 as f32 / input.0 as f32;
        let (w, h) = (output.1 as f32, output.0 as f32);
        for b in &mut self.boxes {
            *b = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
            super::boxes::clip(b, w, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_maps_input_pixels_to_output_pixels_and_clips() {
        let mut d = InstanceDetections {
            boxes: vec![[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 48.0]],
            scores: vec![0.9, 0.5],
            classes: vec![0, 1],
        };
        // A 64x48 input of a 128x96 (w x h) original: everything doubles.
        d.rescale((48, 64), (96, 128));
        assert_eq!(
            d.boxes,
            vec![[20.0, 40.0, 60.0, 80.0], [0.0, 0.0, 128.0, 96.0]]
        );
        // Different scales per axis; a box past the output edge is clipped.
        let mut d = InstanceDetections {
            boxes: vec![[10.0, 10.0, 110.0, 50.0]],
            scores: vec![1.0],
            classes: vec![0],
        };
        d.rescale((50, 100), (100, 50));
        assert_eq!(d.boxes, vec![[5.0, 20.0, 50.0, 100.0]]);
    }
}
