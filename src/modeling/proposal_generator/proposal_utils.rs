//! Detectron2's `find_top_rpn_proposals`: from every anchor's objectness and deltas to a
//! short list of boxes per image. Per image and level, the `pre_nms_topk` best anchors
//! by objectness are decoded, clipped to the image, freed of tiny boxes and suppressed
//! (NMS within each level); the best `post_nms_topk` over all levels remain.
//!
//! This runs on the host, between the two stages of a training step; on a GPU the device
//! waits for it, so the images are processed in parallel and the NMS is vectorised
//! (`benches/proposals.rs`).

use rayon::prelude::*;

use crate::modeling::box_regression::Box2BoxTransform;
use crate::structures::boxes::{batched_nms, clip, Box4};

/// One image's proposals, best objectness first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposals {
    pub boxes: Vec<Box4>,
    pub logits: Vec<f32>,
}

/// The RPN's outputs for a batch, as host values.
#[derive(Debug, Clone, Copy)]
pub struct RpnOutputs<'a> {
    /// (N, R) objectness logits, R the anchors of all levels, level by level.
    pub logits: &'a [f32],
    /// (N, R, 4) box deltas.
    pub deltas: &'a [f32],
    /// The R anchors, shared by the images.
    pub anchors: &'a [Box4],
    /// Anchors per level, summing to R.
    pub per_level: &'a [usize],
}

/// How many proposals survive each cut, and what counts as a box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposalLimits {
    /// Per level and image, before NMS.
    pub pre_nms_topk: usize,
    /// Per image, after NMS.
    pub post_nms_topk: usize,
    pub nms_thresh: f32,
    /// Boxes must be wider and taller than this (input pixels).
    pub min_box_size: f32,
}

/// Proposals per image of `image_sizes` ((height, width) each). Non-finite logits and
/// boxes are left out (Detectron2 raises on them in training; a diverging run is caught
/// by the trainer's loss check instead). Ties in objectness go to the lower anchor, so
/// the top k is one set, whatever the selection algorithm.
pub fn find_top_rpn_proposals(
    outputs: &RpnOutputs,
    image_sizes: &[(usize, usize)],
    coder: &Box2BoxTransform,
    limits: &ProposalLimits,
) -> Vec<Proposals> {
    let r = outputs.anchors.len();
    image_sizes
        .par_iter()
        .enumerate()
        .map(|(i, &(h, w))| {
            let logits = &outputs.logits[i * r..(i + 1) * r];
            let deltas = &outputs.deltas[i * r * 4..(i + 1) * r * 4];
            let mut boxes = Vec::new();
            let mut scores = Vec::new();
            let mut level_ids = Vec::new();
            let mut start = 0;
            for (l, &len) in outputs.per_level.iter().enumerate() {
                let mut idx: Vec<usize> = (start..start + len)
                    .filter(|&a| logits[a].is_finite())
                    .collect();
                let by_score =
                    |x: &usize, y: &usize| logits[*y].total_cmp(&logits[*x]).then(x.cmp(y));
                if idx.len() > limits.pre_nms_topk {
                    idx.select_nth_unstable_by(limits.pre_nms_topk, by_score);
                    idx.truncate(limits.pre_nms_topk);
                    // Back in anchor order: equal scores rank by anchor in the NMS and
                    // the final cut, as on the device.
                    idx.sort_unstable();
                }
                for a in idx {
                    let d = &deltas[a * 4..a * 4 + 4];
                    let mut b = coder.apply_deltas(&[d[0], d[1], d[2], d[3]], &outputs.anchors[a]);
                    if !b.iter().all(|v| v.is_finite()) {
                        continue;
                    }
                    clip(&mut b, w as f32, h as f32);
                    let m = limits.min_box_size;
                    if b[2] - b[0] > m && b[3] - b[1] > m {
                        boxes.push(b);
                        scores.push(logits[a]);
                        level_ids.push(l);
                    }
                }
                start += len;
            }
            let mut keep = batched_nms(&boxes, &scores, &level_ids, limits.nms_thresh);
            keep.truncate(limits.post_nms_topk);
            Proposals {
                boxes: keep.iter().map(|&k| boxes[k]).collect(),
                logits: keep.iter().map(|&k| scores[k]).collect(),
            }
        })
        .collect()
}
