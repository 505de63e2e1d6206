//! Detectron2's `FastRCNNOutputLayers`: class scores (K + background) and class-specific
//! box deltas per ROI; softmax cross-entropy over the sampled ROIs, box loss on the
//! foreground ones for their ground-truth class; inference by score threshold,
//! per-class NMS and a per-image cap.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::box_head::Fc;
use crate::layers::autocast;
use crate::modeling::box_regression::{box_reg_loss, Box2BoxTransform, BoxLoss};
use crate::structures::boxes::{clip, Box4};
use crate::structures::{InstanceDetections, LossMap};

#[derive(Debug, Clone, PartialEq)]
pub struct FastRcnnParams {
    pub num_classes: usize,
    /// One box per ROI instead of one per class.
    pub cls_agnostic_bbox_reg: bool,
    pub box_loss: BoxLoss,
    pub score_thresh: f32,
    pub nms_thresh: f32,
    pub detections_per_image: usize,
}

#[derive(Debug, Clone)]
pub struct FastRcnnOutputLayers {
    cls_score: Fc,
    bbox_pred: Fc,
    coder: Box2BoxTransform,
    params: FastRcnnParams,
}

impl FastRcnnOutputLayers {
    pub fn new(
        input_size: usize,
        coder: Box2BoxTransform,
        params: FastRcnnParams,
        vb: VarBuilder,
    ) -> Result<Self> {
        let k = params.num_classes;
        if k == 0 {
            candle_core::bail!("MODEL.ROI_HEADS.NUM_CLASSES must be at least 1");
        }
        let boxes = if params.cls_agnostic_bbox_reg { 1 } else { k };
        let normal = |s: f64| Init::Randn {
            mean: 0.0,
            stdev: s,
        };
        Ok(Self {
            cls_score: Fc::new(input_size, k + 1, normal(0.01), vb.pp("cls_score"))?,
            bbox_pred: Fc::new(input_size, boxes * 4, normal(0.001), vb.pp("bbox_pred"))?,
            coder,
            params,
        })
    }

    pub fn params(&self) -> &FastRcnnParams {
        &self.params
    }

    /// (R, D) -> (R, K + 1) scores and (R, K * 4) (or (R, 4)) deltas.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        // In f32 for the losses and post-processing (autocast).
        Ok((
            autocast::to_f32(&self.cls_score.forward(x)?)?,
            autocast::to_f32(&self.bbox_pred.forward(x)?)?,
        ))
    }

    /// Column of ROI `r`'s deltas for class `c` in the (R * boxes, 4) view.
    fn delta_row(&self, r: usize, c: usize) -> usize {
        if self.params.cls_agnostic_bbox_reg {
            r
        } else {
            r * self.params.num_classes + c
        }
    }

    /// `gt_classes`: per sampled ROI, its class or K for background; `gt_boxes`: its
    /// matched box (read for foreground only).
    pub fn losses(
        &self,
        scores: &Tensor,
        deltas: &Tensor,
        proposals: &[Box4],
        gt_classes: &[usize],
        gt_boxes: &[Box4],
    ) -> Result<LossMap> {
        let r = proposals.len();
        let dev = scores.device();
        let k = self.params.num_classes;
        let mut out = LossMap::new();
        // The mean over the sampled ROIs of the global batch (see `global_count`); every
        // rank counts, even one without ROIs.
        let total = crate::distributed::global_count(r, "sampled ROIs")?;
        let norm = total as f64 / crate::distributed::world_size() as f64;
        if r == 0 {
            out.insert("loss_cls".into(), (scores.sum_all()? * 0.0)?);
            out.insert("loss_box_reg".into(), (deltas.sum_all()? * 0.0)?);
            return Ok(out);
        }
        let log_p = candle_nn::ops::log_softmax(scores, 1)?;
        let cls: Vec<u32> = gt_classes.iter().map(|&c| c as u32).collect();
        let cls = Tensor::from_vec(cls, (r, 1), dev)?;
        let loss_cls = (log_p.gather(&cls, 1)?.sum_all()?.neg()? / norm)?;
        let fg: Vec<usize> = (0..r).filter(|&i| gt_classes[i] < k).collect();
        // Detectron2 divides the box loss by all sampled ROIs, so images with few
        // foreground ROIs weigh less.
        let loss_box = if fg.is_empty() {
            (deltas.sum_all()? * 0.0)?
        } else {
            let rows: Vec<u32> = fg
                .iter()
                .map(|&i| self.delta_row(i, gt_classes[i]) as u32)
                .collect();
            let m = rows.len();
            let pred = deltas
                .reshape(((), 4))?
                .index_select(&Tensor::from_vec(rows, m, dev)?, 0)?;
            let src: Vec<Box4> = fg.iter().map(|&i| proposals[i]).collect();
            let tgt: Vec<Box4> = fg.iter().map(|&i| gt_boxes[i]).collect();
            (box_reg_loss(&self.coder, self.params.box_loss, &pred, &src, &tgt)? / norm)?
        };
        out.insert("loss_cls".into(), loss_cls);
        out.insert("loss_box_reg".into(), loss_box);
        Ok(out)
    }

    /// Detections per image from the predictions for `proposals` (concatenated over
    /// images in order), clipped to each image's (height, width).
    pub fn inference(
        &self,
        scores: &Tensor,
        deltas: &Tensor,
        proposals: &[Vec<Box4>],
        image_sizes: &[(usize, usize)],
    ) -> Result<Vec<InstanceDetections>> {
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            crate::ops::host::to_vec1(
                &t.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?,
            )
        };
        let probs = host(&candle_nn::ops::softmax_last_dim(scores)?)?;
        let deltas = host(deltas)?;
        let k = self.params.num_classes;
        let mut out = Vec::with_capacity(proposals.len());
        let mut base = 0;
        for (props, &(h, w)) in proposals.iter().zip(image_sizes) {
            let mut boxes = Vec::new();
            let mut sc = Vec::new();
            let mut cls = Vec::new();
            for (j, p) in props.iter().enumerate() {
                let r = base + j;
                for c in 0..k {
                    let s = probs[r * (k + 1) + c];
                    if s <= self.params.score_thresh || !s.is_finite() {
                        continue;
                    }
                    let row = self.delta_row(r, c);
                    let d = &deltas[row * 4..row * 4 + 4];
                    let mut b = self.coder.apply_deltas(&[d[0], d[1], d[2], d[3]], p);
                    if !b.iter().all(|v| v.is_finite()) {
                        continue;
                    }
                    clip(&mut b, w as f32, h as f32);
                    if b[2] > b[0] && b[3] > b[1] {
                        boxes.push(b);
                        sc.push(s);
                        cls.push(c);
                    }
                }
            }
            base += props.len();
            out.push(InstanceDetections::from_candidates(
                &boxes,
                &sc,
                &cls,
                self.params.nms_thresh,
                self.params.detections_per_image,
            ));
        }
        Ok(out)
    }
}
