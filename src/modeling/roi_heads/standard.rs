//! Detectron2's `StandardROIHeads` (box branch): in training, ground truth joins the
//! proposals, each proposal is matched (IoU 0.5) and a balanced sample (512 per image,
//! at most a quarter foreground) is pooled and scored; in inference all proposals are.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;

use super::box_head::{BoxHeadConfig, FastRcnnConvFcHead};
use super::fast_rcnn::{FastRcnnOutputLayers, FastRcnnParams};
use crate::config::Config;
use crate::config::PoolerType;
use crate::layers::ShapeSpec;
use crate::modeling::box_regression::{Box2BoxTransform, BoxLoss};
use crate::modeling::helpers::{reg_weights, select_features};
use crate::modeling::matcher::{LowQualityMatches, Matcher, FOREGROUND, IGNORE};
use crate::modeling::poolers::RoiPooler;
use crate::modeling::sampling::subsample_labels;
use crate::structures::boxes::Box4;
use crate::structures::Instances;
use crate::structures::{InstanceDetections, LossMap};

/// Proposals chosen for the losses, with their targets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampledRois {
    /// Per image, the sampled boxes.
    pub boxes: Vec<Vec<Box4>>,
    /// Concatenated over images: class (K = background) and matched box.
    pub gt_classes: Vec<usize>,
    pub gt_boxes: Vec<Box4>,
}

pub struct StandardRoiHeads {
    in_features: Vec<String>,
    pooler: RoiPooler,
    box_head: FastRcnnConvFcHead,
    box_predictor: FastRcnnOutputLayers,
    sampling: ProposalSampling,
}

/// How training picks the proposals the box head learns from (Detectron2's
/// `MODEL.ROI_HEADS` matcher and sampling settings).
#[derive(Debug, Clone)]
pub struct ProposalSampling {
    pub matcher: Matcher,
    /// Proposals sampled per image, and the foreground share at most.
    pub batch_size_per_image: usize,
    pub positive_fraction: f64,
    /// Ground-truth boxes join the proposals.
    pub append_gt: bool,
}

impl StandardRoiHeads {
    pub fn new(
        in_features: Vec<String>,
        pooler: RoiPooler,
        box_head: FastRcnnConvFcHead,
        box_predictor: FastRcnnOutputLayers,
        sampling: ProposalSampling,
    ) -> Self {
        Self {
            in_features,
            pooler,
            box_head,
            box_predictor,
            sampling,
        }
    }

    pub fn from_config(
        cfg: &Config,
        shapes: &BTreeMap<String, ShapeSpec>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = &cfg.model.roi_heads;
        let b = &cfg.model.roi_box_head;
        let msg = candle_core::Error::Msg;
        let specs = select_features("MODEL.ROI_HEADS.IN_FEATURES", &c.in_features, shapes)?;
        if specs.iter().any(|s| s.channels != specs[0].channels) {
            candle_core::bail!(
                "MODEL.ROI_HEADS.IN_FEATURES: pooled levels need equal channels, got {specs:?}"
            );
        }
        let strides: Vec<usize> = specs.iter().map(|s| s.stride).collect();
        let aligned = b.pooler_type == PoolerType::RoiAlignV2;
        if b.pooler_resolution == 0 {
            candle_core::bail!("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION must be positive");
        }
        let pooler = RoiPooler::new(
            b.pooler_resolution,
            &strides,
            b.pooler_sampling_ratio,
            aligned,
            224.0,
            4,
        )
        .map_err(|e| msg(format!("MODEL.ROI_HEADS.IN_FEATURES: {e}")))?;
        let norm = b.norm;
        let head_cfg = BoxHeadConfig {
            num_conv: b.num_conv,
            conv_dim: b.conv_dim,
            norm,
            num_fc: b.num_fc,
            fc_dim: b.fc_dim,
        };
        let box_head =
            FastRcnnConvFcHead::new(specs[0], b.pooler_resolution, &head_cfg, vb.pp("box_head"))?;
        let params = FastRcnnParams {
            num_classes: c.num_classes,
            cls_agnostic_bbox_reg: b.cls_agnostic_bbox_reg,
            box_loss: BoxLoss::new(b.bbox_reg_loss_type, b.smooth_l1_beta),
            score_thresh: c.score_thresh_test as f32,
            nms_thresh: c.nms_thresh_test as f32,
            detections_per_image: cfg.test.detections_per_image,
        };
        let coder = Box2BoxTransform::new(reg_weights(
            "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
            &b.bbox_reg_weights,
        )?);
        let box_predictor = FastRcnnOutputLayers::new(
            box_head.output_size(),
            coder,
            params,
            vb.pp("box_predictor"),
        )?;
        let matcher = Matcher::new(&c.iou_thresholds, LowQualityMatches::Off)
            .map_err(|e| msg(format!("MODEL.ROI_HEADS.IOU_THRESHOLDS: {e}")))?;
        if !(0.0..=1.0).contains(&c.positive_fraction) {
            candle_core::bail!("MODEL.ROI_HEADS.POSITIVE_FRACTION must be in [0, 1]");
        }
        let sampling = ProposalSampling {
            matcher,
            batch_size_per_image: c.batch_size_per_image,
            positive_fraction: c.positive_fraction,
            append_gt: c.proposal_append_gt,
        };
        Ok(Self::new(
            c.in_features.clone(),
            pooler,
            box_head,
            box_predictor,
            sampling,
        ))
    }

    /// Matches each image's proposals (plus its ground truth) and samples them.
    pub fn label_and_sample(
        &self,
        proposals: &[Vec<Box4>],
        targets: &[Instances],
        rngs: &mut [StdRng],
    ) -> SampledRois {
        let k = self.box_predictor.params().num_classes;
        let mut out = SampledRois::default();
        for ((props, inst), rng) in proposals.iter().zip(targets).zip(rngs.iter_mut()) {
            let mut boxes = props.clone();
            if self.sampling.append_gt {
                boxes.extend(
                    (0..inst.len())
                        .filter(|&i| !inst.ignore[i])
                        .map(|i| inst.boxes[i]),
                );
            }
            let (matched, flags) =
                self.sampling
                    .matcher
                    .match_boxes(&boxes, &inst.boxes, &inst.ignore);
            let labels: Vec<i64> = flags
                .iter()
                .zip(&matched)
                .map(|(&f, &m)| match f {
                    FOREGROUND => inst.classes[m] as i64,
                    IGNORE => -1,
                    _ => k as i64,
                })
                .collect();
            let (fg, bg) = subsample_labels(
                &labels,
                self.sampling.batch_size_per_image,
                self.sampling.positive_fraction,
                k as i64,
                rng,
            );
            let mut sampled = Vec::with_capacity(fg.len() + bg.len());
            for &i in fg.iter().chain(&bg) {
                sampled.push(boxes[i]);
                out.gt_classes.push(labels[i] as usize);
                out.gt_boxes
                    .push(inst.boxes.get(matched[i]).copied().unwrap_or_default());
            }
            out.boxes.push(sampled);
        }
        out
    }

    fn pooled_predictions(
        &self,
        features: &BTreeMap<String, Tensor>,
        boxes: &[Vec<Box4>],
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let levels: Vec<Tensor> = self
            .in_features
            .iter()
            .map(|f| features[f].clone())
            .collect();
        let rois: Vec<(usize, Box4)> = boxes
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.iter().map(move |&b| (i, b)))
            .collect();
        let pooled = self.pooler.forward(&levels, &rois)?;
        let x = self.box_head.forward_t(&pooled, train)?;
        self.box_predictor.forward(&x)
    }

    /// Training: the box losses on a sample of `proposals`. Inference: detections.
    pub fn forward(
        &self,
        features: &BTreeMap<String, Tensor>,
        proposals: &[Vec<Box4>],
        image_sizes: &[(usize, usize)],
        targets: Option<&[Instances]>,
        rngs: &mut [StdRng],
    ) -> Result<(Option<Vec<InstanceDetections>>, LossMap)> {
        match targets {
            Some(t) => {
                let s = self.label_and_sample(proposals, t, rngs);
                let (scores, deltas) = self.pooled_predictions(features, &s.boxes, true)?;
                let flat: Vec<Box4> = s.boxes.concat();
                let losses = self.box_predictor.losses(
                    &scores,
                    &deltas,
                    &flat,
                    &s.gt_classes,
                    &s.gt_boxes,
                )?;
                Ok((None, losses))
            }
            None => {
                let (scores, deltas) = self.pooled_predictions(features, proposals, false)?;
                let dets =
                    self.box_predictor
                        .inference(&scores, &deltas, proposals, image_sizes)?;
                Ok((Some(dets), LossMap::new()))
            }
        }
    }

    pub fn fused(&self) -> Result<Self> {
        Ok(Self {
            in_features: self.in_features.clone(),
            pooler: self.pooler.clone(),
            box_head: self.box_head.fused()?,
            box_predictor: self.box_predictor.clone(),
            sampling: self.sampling.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::params::ParamStore;
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use std::sync::Arc;

    fn heads(batch: usize, append_gt: bool) -> StandardRoiHeads {
        let mut cfg = Config::default();
        cfg.model.roi_heads.num_classes = 2;
        cfg.model.roi_heads.batch_size_per_image = batch;
        cfg.model.roi_heads.proposal_append_gt = append_gt;
        cfg.model.roi_box_head.fc_dim = 8;
        let shapes = (2..6)
            .map(|l| {
                (
                    format!("p{l}"),
                    ShapeSpec {
                        channels: 4,
                        stride: 1 << l,
                    },
                )
            })
            .collect();
        let store = Arc::new(ParamStore::new(0));
        StandardRoiHeads::from_config(&cfg, &shapes, store.var_builder(DType::F32, &Device::Cpu))
            .unwrap()
    }

    #[test]
    fn sampling_edge_cases() {
        let mut rng = StdRng::seed_from_u64(0);
        let props = vec![vec![
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],
            [100.0, 100.0, 120.0, 120.0],
        ]];
        // No ground truth: everything sampled is background (class K = 2).
        let h = heads(16, true);
        let s = h.label_and_sample(
            &props,
            &[Instances::default()],
            std::slice::from_mut(&mut rng),
        );
        assert_eq!(s.boxes[0].len(), 4);
        assert!(s.gt_classes.iter().all(|&c| c == 2));
        // One box of class 1 (appended as a proposal too) and one ignored box: the
        // proposals on the ignored box are neither foreground nor background.
        let inst = Instances {
            boxes: vec![[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]],
            classes: vec![1, 0],
            ignore: vec![false, true],
        };
        let s = h.label_and_sample(
            &props,
            std::slice::from_ref(&inst),
            std::slice::from_mut(&mut rng),
        );
        let mut got: Vec<(Box4, usize)> = s.boxes[0]
            .iter()
            .copied()
            .zip(s.gt_classes.iter().copied())
            .collect();
        got.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
        assert_eq!(
            got,
            vec![
                ([0.0, 0.0, 10.0, 10.0], 1),
                ([0.0, 0.0, 10.0, 10.0], 1),
                ([1.0, 0.0, 11.0, 10.0], 1),
                ([100.0, 100.0, 120.0, 120.0], 2),
            ]
        );
        assert!(s.gt_boxes[..2].iter().all(|b| *b == inst.boxes[0]));
        // Without appended ground truth and a budget of 2 at 0.25 foreground: at most
        // int(0.5) = 0 foreground, so two background... but only one background exists.
        let h = heads(2, false);
        let s = h.label_and_sample(
            &props,
            std::slice::from_ref(&inst),
            std::slice::from_mut(&mut rng),
        );
        assert_eq!(s.gt_classes, vec![2]);
        // Everything ignored: nothing to learn from.
        let all_ignored = Instances {
            boxes: inst.boxes.clone(),
            classes: inst.classes.clone(),
            ignore: vec![true, true],
        };
        let only = vec![vec![[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]];
        let s =
            heads(8, true).label_and_sample(&only, &[all_ignored], std::slice::from_mut(&mut rng));
        assert!(s.boxes[0].is_empty() && s.gt_classes.is_empty());
    }
}
