//! Detectron2's region proposal network: anchors on every level scored for objectness
//! and regressed by a shared head; trained on a balanced sample of anchors (256 per
//! image, at most half positive) and turned into proposals by per-level top-k, NMS per
//! level and a per-image cap (`find_top_rpn_proposals`).
//!
//! Proposals are host boxes: they carry no gradient into the second stage, as in
//! Detectron2, where they are detached. On CUDA they are selected on the device and only
//! they are read back (`device_proposals`). The training targets are built on the host on
//! the CPU and on the device elsewhere (`dense_losses`), with the same sample and losses.

mod dense_losses;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;

use crate::config::Config;
use crate::layers::losses::binary_cross_entropy_with_logits;
use crate::layers::ShapeSpec;
use crate::modeling::anchor_generator::AnchorGenerator;
use crate::modeling::box_regression::{box_reg_loss, Box2BoxTransform, BoxLoss};
use crate::modeling::heads::RpnHead;
use crate::modeling::helpers::{reg_weights, select_features};
use crate::modeling::matcher::{LowQualityMatches, Matcher, FOREGROUND, IGNORE};
use crate::modeling::sampling::subsample_labels;
use crate::structures::boxes::Box4;
use crate::structures::Instances;
use crate::structures::LossMap;

use super::device_proposals::find_top_rpn_proposals_on_device;
use super::proposal_utils::{find_top_rpn_proposals, ProposalLimits, Proposals, RpnOutputs};

#[derive(Debug, Clone, PartialEq)]
pub struct RpnParams {
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    pub box_loss: BoxLoss,
    pub loss_weight: f64,
    /// (train, test) proposals per level before NMS.
    pub pre_nms_topk: (usize, usize),
    /// (train, test) proposals per image after NMS.
    pub post_nms_topk: (usize, usize),
    pub nms_thresh: f32,
    pub min_box_size: f32,
}

#[derive(Clone)]
pub struct Rpn {
    in_features: Vec<String>,
    head: RpnHead,
    anchors: AnchorGenerator,
    matcher: Matcher,
    coder: Box2BoxTransform,
    params: RpnParams,
}

impl Rpn {
    pub fn new(
        in_features: Vec<String>,
        head: RpnHead,
        anchors: AnchorGenerator,
        matcher: Matcher,
        coder: Box2BoxTransform,
        params: RpnParams,
    ) -> Self {
        Self {
            in_features,
            head,
            anchors,
            matcher,
            coder,
            params,
        }
    }

    pub fn from_config(
        cfg: &Config,
        shapes: &BTreeMap<String, ShapeSpec>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = &cfg.model.rpn;
        let specs = select_features("MODEL.RPN.IN_FEATURES", &c.in_features, shapes)?;
        let strides: Vec<usize> = specs.iter().map(|s| s.stride).collect();
        let anchors = AnchorGenerator::from_config(cfg, &strides)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let head = RpnHead::new(&specs, &anchors.num_cell_anchors(), vb.pp("rpn_head"))?;
        let matcher = Matcher::new(&c.iou_thresholds, LowQualityMatches::Relabel)
            .map_err(|e| candle_core::Error::Msg(format!("MODEL.RPN.IOU_THRESHOLDS: {e}")))?;
        let coder = Box2BoxTransform::new(reg_weights(
            "MODEL.RPN.BBOX_REG_WEIGHTS",
            &c.bbox_reg_weights,
        )?);
        if !(0.0..=1.0).contains(&c.positive_fraction) {
            candle_core::bail!("MODEL.RPN.POSITIVE_FRACTION must be in [0, 1]");
        }
        let params = RpnParams {
            batch_size_per_image: c.batch_size_per_image,
            positive_fraction: c.positive_fraction,
            box_loss: BoxLoss::new(c.bbox_reg_loss_type, c.smooth_l1_beta),
            loss_weight: c.loss_weight,
            pre_nms_topk: (c.pre_nms_topk_train, c.pre_nms_topk_test),
            post_nms_topk: (c.post_nms_topk_train, c.post_nms_topk_test),
            nms_thresh: c.nms_thresh as f32,
            min_box_size: c.min_box_size as f32,
        };
        Ok(Self::new(
            c.in_features.clone(),
            head,
            anchors,
            matcher,
            coder,
            params,
        ))
    }

    /// Proposals per image, and in training the RPN losses.
    pub fn forward(
        &self,
        features: &BTreeMap<String, Tensor>,
        image_sizes: &[(usize, usize)],
        targets: Option<&[Instances]>,
        rngs: &mut [StdRng],
    ) -> Result<(Vec<Proposals>, LossMap)> {
        let levels: Vec<Tensor> = self
            .in_features
            .iter()
            .map(|f| features[f].clone())
            .collect();
        let sizes: Vec<(usize, usize)> = levels
            .iter()
            .map(|t| Ok((t.dim(2)?, t.dim(3)?)))
            .collect::<Result<_>>()?;
        let a = self.head.num_anchors();
        let per_level: Vec<usize> = sizes.iter().map(|&(h, w)| h * w * a).collect();
        let anchors = self.anchors.grid_anchors(&sizes);
        let (logits, deltas) = self.head.forward(&levels)?;
        let train = targets.is_some();
        let (pre_nms_topk, post_nms_topk) = if train {
            (self.params.pre_nms_topk.0, self.params.post_nms_topk.0)
        } else {
            (self.params.pre_nms_topk.1, self.params.post_nms_topk.1)
        };
        let limits = ProposalLimits {
            pre_nms_topk,
            post_nms_topk,
            nms_thresh: self.params.nms_thresh,
            min_box_size: self.params.min_box_size,
        };
        // On a GPU the proposals are found there and only they are read back; elsewhere
        // (and past the CUDA top-k's limit) every anchor's outputs come to the host.
        let proposals = if logits.device().is_cuda()
            && pre_nms_topk.max(post_nms_topk) <= crate::ops::top_k_mask::CUDA_TOP_K_MAX
        {
            find_top_rpn_proposals_on_device(
                &logits,
                &deltas,
                &anchors,
                &per_level,
                image_sizes,
                &self.coder,
                &limits,
            )?
        } else {
            // Objectness and deltas in one read: on a GPU each read waits for the device.
            let flat = |t: &Tensor| t.detach().to_dtype(DType::F32)?.flatten_all();
            let both = crate::ops::host::to_vec1::<f32>(
                &Tensor::cat(&[flat(&logits)?, flat(&deltas)?], 0)?.to_device(&Device::Cpu)?,
            )?;
            let (host_logits, host_deltas) = both.split_at(logits.elem_count());
            let outputs = RpnOutputs {
                logits: host_logits,
                deltas: host_deltas,
                anchors: &anchors,
                per_level: &per_level,
            };
            find_top_rpn_proposals(&outputs, image_sizes, &self.coder, &limits)
        };
        let losses = match targets {
            Some(t) => self.losses(&logits, &deltas, &anchors, t, rngs)?,
            None => LossMap::new(),
        };
        Ok((proposals, losses))
    }

    /// Per anchor: 1 object, 0 background, -1 ignored; and the matched box.
    pub fn label_anchors(&self, anchors: &[Box4], inst: &Instances) -> (Vec<i64>, Vec<Box4>) {
        let (matched, flags) = self.matcher.match_boxes(anchors, &inst.boxes, &inst.ignore);
        let labels = flags
            .iter()
            .map(|&f| match f {
                FOREGROUND => 1,
                IGNORE => -1,
                _ => 0,
            })
            .collect();
        let boxes = matched
            .iter()
            .map(|&m| inst.boxes.get(m).copied().unwrap_or_default())
            .collect();
        (labels, boxes)
    }

    fn losses(
        &self,
        logits: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        targets: &[Instances],
        rngs: &mut [StdRng],
    ) -> Result<LossMap> {
        let (n, r) = logits.dims2()?;
        if targets.len() != n || rngs.len() != n {
            candle_core::bail!(
                "RPN: {n} images but {} targets and {} random generators",
                targets.len(),
                rngs.len()
            );
        }
        if !logits.device().is_cpu() {
            return self.dense_losses(logits, deltas, anchors, targets, rngs);
        }
        let dev = logits.device();
        let mut sampled: Vec<u32> = Vec::new();
        let mut objectness: Vec<f32> = Vec::new();
        let mut fg: Vec<u32> = Vec::new();
        let mut fg_anchors: Vec<Box4> = Vec::new();
        let mut fg_boxes: Vec<Box4> = Vec::new();
        for (i, inst) in targets.iter().enumerate() {
            let (labels, boxes) = self.label_anchors(anchors, inst);
            let (pos, neg) = subsample_labels(
                &labels,
                self.params.batch_size_per_image,
                self.params.positive_fraction,
                0,
                &mut rngs[i],
            );
            for &a in &pos {
                sampled.push((i * r + a) as u32);
                objectness.push(1.0);
                fg.push((i * r + a) as u32);
                fg_anchors.push(anchors[a]);
                fg_boxes.push(boxes[a]);
            }
            for &a in &neg {
                sampled.push((i * r + a) as u32);
                objectness.push(0.0);
            }
        }
        // Detectron2 normalises both terms by the sampling budget, not by what was found;
        // with the global batch split evenly over ranks it is the same on every rank.
        let norm = (self.params.batch_size_per_image * n).max(1) as f64;
        let w = self.params.loss_weight;
        let loss_cls = if sampled.is_empty() {
            (logits.sum_all()? * 0.0)?
        } else {
            let m = sampled.len();
            let x = logits
                .flatten_all()?
                .index_select(&Tensor::from_vec(sampled, m, dev)?, 0)?;
            let t = Tensor::from_vec(objectness, m, dev)?.to_dtype(x.dtype())?;
            (binary_cross_entropy_with_logits(&x, &t)?.sum_all()? * (w / norm))?
        };
        let loss_loc = if fg.is_empty() {
            (deltas.sum_all()? * 0.0)?
        } else {
            let m = fg.len();
            let pred = deltas
                .reshape((n * r, 4))?
                .index_select(&Tensor::from_vec(fg, m, dev)?, 0)?;
            (box_reg_loss(
                &self.coder,
                self.params.box_loss,
                &pred,
                &fg_anchors,
                &fg_boxes,
            )? * (w / norm))?
        };
        let mut out = LossMap::new();
        out.insert("loss_rpn_cls".into(), loss_cls);
        out.insert("loss_rpn_loc".into(), loss_loc);
        Ok(out)
    }
}

/// An RPN on one stride-8 level of 4 channels with anchors of `sizes`, on the CPU.
#[cfg(test)]
fn test_rpn(sizes: Vec<f64>) -> Rpn {
    let mut cfg = Config::default();
    cfg.model.rpn.in_features = vec!["p3".into()];
    cfg.model.anchor_generator.sizes = vec![sizes];
    let shapes = [(
        "p3".to_string(),
        ShapeSpec {
            channels: 4,
            stride: 8,
        },
    )]
    .into();
    let store = std::sync::Arc::new(crate::layers::params::ParamStore::new(0));
    Rpn::from_config(&cfg, &shapes, store.var_builder(DType::F32, &Device::Cpu)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_labels_edge_cases_and_proposal_limits() {
        let r = test_rpn(vec![16.0]);
        let anchors = [
            [0.0, 0.0, 16.0, 16.0],
            [8.0, 0.0, 24.0, 16.0],
            [40.0, 40.0, 56.0, 56.0],
        ];
        let (labels, _) = r.label_anchors(&anchors, &Instances::default());
        assert_eq!(labels, vec![0, 0, 0]);
        let inst = Instances {
            boxes: vec![[0.0, 0.0, 16.0, 16.0], [40.0, 40.0, 56.0, 56.0]],
            classes: vec![0, 0],
            ignore: vec![false, true],
        };
        let (labels, boxes) = r.label_anchors(&anchors, &inst);
        // Anchor 1 has IoU 1/3 with the box: between 0.3 and 0.7, ignored.
        assert_eq!(labels, vec![1, -1, -1]);
        assert_eq!(boxes[0], inst.boxes[0]);
        // Proposals: the two overlapping anchors with the highest logits collapse into
        // one by NMS; top-k and the image size bound the rest.
        let logits = [2.0, 1.0, 0.5];
        let deltas = [0f32; 12];
        let outputs = RpnOutputs {
            logits: &logits,
            deltas: &deltas,
            anchors: &anchors,
            per_level: &[3],
        };
        let limits = ProposalLimits {
            pre_nms_topk: r.params.pre_nms_topk.1,
            post_nms_topk: r.params.post_nms_topk.1,
            nms_thresh: r.params.nms_thresh,
            min_box_size: r.params.min_box_size,
        };
        let p = find_top_rpn_proposals(&outputs, &[(30, 30)], &r.coder, &limits);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].boxes,
            vec![[0.0, 0.0, 16.0, 16.0], [8.0, 0.0, 24.0, 16.0]]
        );
        // The third anchor lies outside the 30x30 image: clipped to nothing, dropped.
        assert_eq!(p[0].logits, vec![2.0, 1.0]);
    }
}
