//! SSDLite: a one-stage detector of depthwise-separable heads on (FPN) feature levels,
//! with anchors, IoU matching, the (10, 10, 5, 5) box coder, softmax cross-entropy with
//! 3:1 hard negative mining or sigmoid focal loss, smooth-L1 or GIoU box loss, and
//! inference by score threshold, per-level top-k, per-class NMS and a per-image cap.
//!
//! On the CPU, matching runs on the host (anchors and ground truth are host values) and
//! the losses are built from the positives' rows (`index_select`/`gather`); on a GPU the
//! targets are built there and the losses are masked sums over all anchors
//! (`dense_losses`), with the same values and gradients. Hard-negative mining runs where
//! the scores are, as the `top_k_mask` op on the detached background losses, so a
//! training step reads nothing back for it.

mod dense_losses;
mod export;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::meta_arch::{MetaArch, Outputs};
use crate::config::Config;
use crate::layers::losses::sigmoid_focal_loss;
use crate::modeling::anchor_generator::AnchorGenerator;
use crate::modeling::backbone::{build_backbone, Backbone};
pub use crate::modeling::box_regression::BoxLoss;
use crate::modeling::box_regression::{box_reg_loss, Box2BoxTransform};
use crate::modeling::heads::ssdlite_head::SsdLiteHeadConfig;
use crate::modeling::heads::SsdLiteHead;
use crate::modeling::helpers::{reg_weights, select_features};
use crate::modeling::matcher::{LowQualityMatches, Matcher, FOREGROUND, IGNORE};
use crate::modeling::OnnxExportSpec;
use crate::onnx::OnnxGraph;
use crate::ops::host;
use crate::structures::boxes::{clip, Box4};
use crate::structures::Instances;
use crate::structures::{Batch, InstanceDetections, LossMap, Targets};

pub use crate::config::ClsLoss;

/// Loss and inference settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SsdLiteParams {
    pub num_classes: usize,
    pub cls_loss: ClsLoss,
    pub neg_pos_ratio: f32,
    pub focal_alpha: f32,
    pub focal_gamma: f32,
    pub box_loss: BoxLoss,
    pub box_loss_weight: f32,
    pub score_thresh: f32,
    pub topk_candidates: usize,
    pub nms_thresh: f32,
    pub detections_per_image: usize,
}

pub struct SsdLite {
    backbone: Box<dyn Backbone>,
    in_features: Vec<String>,
    head: SsdLiteHead,
    anchors: AnchorGenerator,
    matcher: Matcher,
    coder: Box2BoxTransform,
    params: SsdLiteParams,
}

/// Focal-loss prior: initial foreground probability of every anchor.
const PRIOR_PROB: f64 = 0.01;

impl SsdLite {
    pub fn new(
        backbone: Box<dyn Backbone>,
        in_features: Vec<String>,
        head: SsdLiteHead,
        anchors: AnchorGenerator,
        matcher: Matcher,
        coder: Box2BoxTransform,
        params: SsdLiteParams,
    ) -> Self {
        Self {
            backbone,
            in_features,
            head,
            anchors,
            matcher,
            coder,
            params,
        }
    }

    pub fn from_config(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = &cfg.model.ssdlite;
        let msg = |e: String| candle_core::Error::Msg(e);
        let backbone = build_backbone(cfg, vb.pp("backbone"))?;
        let shapes = backbone.output_shape();
        let specs = select_features("MODEL.SSDLITE.IN_FEATURES", &c.in_features, &shapes)?;
        let strides: Vec<usize> = specs.iter().map(|s| s.stride).collect();
        let anchors =
            AnchorGenerator::from_config(cfg, &strides).map_err(|e| msg(e.to_string()))?;
        let cls_loss = c.cls_loss;
        let box_loss = BoxLoss::new(c.box_loss, c.smooth_l1_beta);
        if c.num_classes == 0 {
            candle_core::bail!("MODEL.SSDLITE.NUM_CLASSES must be at least 1");
        }
        let (num_scores, bias) = match cls_loss {
            ClsLoss::CrossEntropy => (c.num_classes + 1, 0.0),
            ClsLoss::Focal => (c.num_classes, -((1.0 - PRIOR_PROB) / PRIOR_PROB).ln()),
        };
        let norm = c.norm;
        let head_cfg = SsdLiteHeadConfig {
            num_scores,
            cls_bias: bias,
            num_convs: c.num_convs,
            norm,
            share: c.share_heads,
        };
        let head = SsdLiteHead::new(
            &specs,
            &anchors.num_cell_anchors(),
            &head_cfg,
            vb.pp("head"),
        )?;
        let matcher = Matcher::new(
            &c.iou_thresholds,
            if c.allow_low_quality_matches {
                LowQualityMatches::Assign
            } else {
                LowQualityMatches::Off
            },
        )
        .map_err(|e| msg(format!("MODEL.SSDLITE.IOU_THRESHOLDS: {e}")))?;
        let coder = Box2BoxTransform::new(reg_weights(
            "MODEL.SSDLITE.BBOX_REG_WEIGHTS",
            &c.bbox_reg_weights,
        )?);
        let params = SsdLiteParams {
            num_classes: c.num_classes,
            cls_loss,
            neg_pos_ratio: c.neg_pos_ratio as f32,
            focal_alpha: c.focal_alpha as f32,
            focal_gamma: c.focal_gamma as f32,
            box_loss,
            box_loss_weight: c.box_loss_weight as f32,
            score_thresh: c.score_thresh_test as f32,
            topk_candidates: c.topk_candidates_test,
            nms_thresh: c.nms_thresh_test as f32,
            detections_per_image: cfg.test.detections_per_image,
        };
        Ok(Self::new(
            backbone,
            c.in_features.clone(),
            head,
            anchors,
            matcher,
            coder,
            params,
        ))
    }

    /// Head outputs, anchors, and the number of anchors per level.
    fn run(&self, images: &Tensor, train: bool) -> Result<(Tensor, Tensor, Vec<Box4>, Vec<usize>)> {
        let feats = self.backbone.forward_t(images, train)?;
        let levels: Vec<Tensor> = self.in_features.iter().map(|f| feats[f].clone()).collect();
        let sizes: Vec<(usize, usize)> = levels
            .iter()
            .map(|t| Ok((t.dim(2)?, t.dim(3)?)))
            .collect::<Result<_>>()?;
        let per_level: Vec<usize> = sizes
            .iter()
            .zip(self.anchors.num_cell_anchors())
            .map(|(&(h, w), a)| h * w * a)
            .collect();
        let (scores, deltas) = self.head.forward_t(&levels, train)?;
        Ok((scores, deltas, self.anchors.grid_anchors(&sizes), per_level))
    }

    /// Per anchor: -1 ignore, K background, else the class; and the matched box.
    fn label_anchors(&self, anchors: &[Box4], inst: &Instances) -> (Vec<i64>, Vec<Box4>) {
        let k = self.params.num_classes as i64;
        let (matched, flags) = self.matcher.match_boxes(anchors, &inst.boxes, &inst.ignore);
        let mut labels = vec![k; anchors.len()];
        let mut boxes = vec![[0f32; 4]; anchors.len()];
        for a in 0..anchors.len() {
            match flags[a] {
                FOREGROUND => {
                    labels[a] = inst.classes[matched[a]] as i64;
                    boxes[a] = inst.boxes[matched[a]];
                }
                IGNORE => labels[a] = -1,
                _ => {}
            }
        }
        (labels, boxes)
    }

    fn losses(
        &self,
        scores: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        targets: &[Instances],
    ) -> Result<LossMap> {
        let (n, r, c) = scores.dims3()?;
        if targets.len() != n {
            candle_core::bail!("SSDLite: {} images but {} targets", n, targets.len());
        }
        if !scores.device().is_cpu() {
            return self.dense_losses(scores, deltas, anchors, targets);
        }
        let dev = scores.device().clone();
        let k = self.params.num_classes as i64;
        let mut pos_idx: Vec<u32> = Vec::new();
        let mut pos_cls: Vec<i64> = Vec::new();
        let mut pos_anchors: Vec<Box4> = Vec::new();
        let mut pos_boxes: Vec<Box4> = Vec::new();
        let mut labels_all: Vec<Vec<i64>> = Vec::with_capacity(n);
        for (i, inst) in targets.iter().enumerate() {
            let (labels, boxes) = self.label_anchors(anchors, inst);
            for (a, &l) in labels.iter().enumerate() {
                if l >= 0 && l < k {
                    pos_idx.push((i * r + a) as u32);
                    pos_cls.push(l);
                    pos_anchors.push(anchors[a]);
                    pos_boxes.push(boxes[a]);
                }
            }
            labels_all.push(labels);
        }
        let num_pos = pos_idx.len();
        // Normalised by the positives of the global batch (summed over data-parallel
        // ranks, whose gradients are averaged), so the loss is that of one process.
        let total_pos = crate::distributed::global_count(num_pos, "SSDLite positive anchors")?;
        let norm = total_pos.max(1) as f64 / crate::distributed::world_size() as f64;
        let flat_scores = scores.reshape((n * r, c))?;
        let loss_cls = match self.params.cls_loss {
            ClsLoss::CrossEntropy => {
                let log_p = candle_nn::ops::log_softmax(&flat_scores, D::Minus1)?;
                // The background loss of every anchor; mining picks, per image, the
                // negatives where it is largest (on the detached values, on the device).
                let bg_loss = log_p.narrow(1, c - 1, 1)?.neg()?.reshape((n, r))?;
                let mut negatives: Vec<u8> = Vec::with_capacity(n * r);
                let mut keep: Vec<u32> = Vec::with_capacity(n);
                for labels in &labels_all {
                    let npos = labels.iter().filter(|&&l| l >= 0 && l < k).count();
                    let before = negatives.len();
                    negatives.extend(labels.iter().map(|&l| (l == k) as u8));
                    let nneg = negatives.len() - before;
                    let wanted = (self.params.neg_pos_ratio * npos.max(1) as f32) as usize;
                    keep.push(wanted.min(nneg) as u32);
                }
                let hard = crate::ops::top_k_mask(
                    &bg_loss.detach(),
                    &Tensor::from_vec(negatives, (n, r), &dev)?,
                    &Tensor::from_vec(keep, n, &dev)?,
                )?;
                let neg_loss = (bg_loss * hard)?.sum_all()?;
                let pos_loss = if pos_idx.is_empty() {
                    neg_loss.zeros_like()?
                } else {
                    let idx = Tensor::new(pos_idx.as_slice(), &dev)?;
                    let cls: Vec<u32> = pos_cls.iter().map(|&l| l as u32).collect();
                    let cls = Tensor::new(cls.as_slice(), &dev)?.unsqueeze(1)?;
                    log_p
                        .index_select(&idx, 0)?
                        .gather(&cls, 1)?
                        .sum_all()?
                        .neg()?
                };
                ((pos_loss + neg_loss)? / norm)?
            }
            ClsLoss::Focal => {
                let mut valid: Vec<u32> = Vec::new();
                let mut onehot: Vec<f32> = Vec::new();
                for (i, labels) in labels_all.iter().enumerate() {
                    for (a, &l) in labels.iter().enumerate() {
                        if l < 0 {
                            continue;
                        }
                        valid.push((i * r + a) as u32);
                        for j in 0..c as i64 {
                            onehot.push((j == l) as u8 as f32);
                        }
                    }
                }
                if valid.is_empty() {
                    (flat_scores.sum_all()? * 0.0)?
                } else {
                    let idx = Tensor::new(valid.as_slice(), &dev)?;
                    let x = flat_scores.index_select(&idx, 0)?;
                    let t = Tensor::from_vec(onehot, (valid.len(), c), &dev)?;
                    (sigmoid_focal_loss(&x, &t, self.params.focal_alpha, self.params.focal_gamma)?
                        .sum_all()?
                        / norm)?
                }
            }
        };
        let loss_box = if num_pos == 0 {
            (deltas.sum_all()? * 0.0)?
        } else {
            let idx = Tensor::new(pos_idx.as_slice(), &dev)?;
            let pred = deltas.reshape((n * r, 4))?.index_select(&idx, 0)?;
            let l = box_reg_loss(
                &self.coder,
                self.params.box_loss,
                &pred,
                &pos_anchors,
                &pos_boxes,
            )?;
            ((l / norm)? * self.params.box_loss_weight as f64)?
        };
        let mut out = BTreeMap::new();
        out.insert("loss_cls".to_string(), loss_cls);
        out.insert("loss_box_reg".to_string(), loss_box);
        Ok(out)
    }

    fn inference(
        &self,
        scores: &Tensor,
        deltas: &Tensor,
        anchors: &[Box4],
        per_level: &[usize],
        batch: &Batch,
    ) -> Result<Vec<InstanceDetections>> {
        let (n, r, c) = scores.dims3()?;
        let probs = match self.params.cls_loss {
            ClsLoss::CrossEntropy => candle_nn::ops::softmax_last_dim(scores)?,
            ClsLoss::Focal => candle_nn::ops::sigmoid(scores)?,
        };
        let host = |t: &Tensor| -> Result<Vec<f32>> {
            host::to_vec1(
                &t.to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?,
            )
        };
        let (probs, deltas) = (host(&probs)?, host(deltas)?);
        let k = self.params.num_classes;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (h, w) = batch.image_size(i)?;
            let mut boxes = Vec::new();
            let mut sc = Vec::new();
            let mut cls = Vec::new();
            let mut start = 0;
            for &len in per_level {
                // (score, anchor, class) over this level above the threshold, best first.
                let mut cand: Vec<(f32, usize, usize)> = Vec::new();
                for a in start..start + len {
                    let row = &probs[(i * r + a) * c..(i * r + a) * c + k];
                    for (j, &p) in row.iter().enumerate() {
                        if p > self.params.score_thresh {
                            cand.push((p, a, j));
                        }
                    }
                }
                cand.sort_by(|x, y| y.0.total_cmp(&x.0));
                cand.truncate(self.params.topk_candidates);
                for (p, a, j) in cand {
                    let d = &deltas[(i * r + a) * 4..(i * r + a) * 4 + 4];
                    let mut b = self
                        .coder
                        .apply_deltas(&[d[0], d[1], d[2], d[3]], &anchors[a]);
                    clip(&mut b, w as f32, h as f32);
                    if b[2] - b[0] > 0.0 && b[3] - b[1] > 0.0 {
                        boxes.push(b);
                        sc.push(p);
                        cls.push(j);
                    }
                }
                start += len;
            }
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

impl MetaArch for SsdLite {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let (scores, deltas, anchors, per_level) = self.run(&batch.images, train)?;
        let mut out = Outputs::default();
        if train {
            let Some(Targets::Instances(t)) = &batch.targets else {
                candle_core::bail!("SSDLite: training needs box targets (Targets::Instances)");
            };
            out.losses = self.losses(&scores, &deltas, &anchors, t)?;
        } else {
            out.detections = Some(self.inference(&scores, &deltas, &anchors, &per_level, batch)?);
        }
        Ok(out)
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        self.backbone.frozen_prefixes()
    }

    fn size_divisibility(&self) -> usize {
        self.backbone.size_divisibility()
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str, spec: &OnnxExportSpec) -> Result<String> {
        self.export(g, x, spec)
    }

    fn raw_outputs(&self, images: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let (scores, deltas, _, _) = self.run(images, false)?;
        Ok(vec![("scores".into(), scores), ("deltas".into(), deltas)])
    }

    fn fused(&self) -> Result<Box<dyn MetaArch>> {
        Ok(Box::new(Self {
            backbone: self.backbone.fused()?,
            in_features: self.in_features.clone(),
            head: self.head.fused()?,
            anchors: self.anchors.clone(),
            matcher: self.matcher.clone(),
            coder: self.coder,
            params: self.params.clone(),
        }))
    }
}

/// A small SSDLite of the synthetic-faces config (width 0.35, random weights) on the CPU.
#[cfg(test)]
fn small_test_model() -> SsdLite {
    let cfg = Config::from_args(
        Some(std::path::Path::new(
            "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml",
        )),
        &["MODEL.WEIGHTS", "", "MODEL.MOBILENET.WIDTH_MULT", "0.35"],
    )
    .unwrap();
    let store = std::sync::Arc::new(crate::layers::params::ParamStore::new(0));
    SsdLite::from_config(&cfg, store.var_builder(DType::F32, &Device::Cpu)).unwrap()
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    /// Mining on the device picks what mining on the host picked: per image the
    /// negatives by background loss, descending, ties to the lower anchor (a stable
    /// sort), `NEG_POS_RATIO` per positive (at least one positive's worth). Checked on the
    /// loss and on which anchors get a gradient, with scores quantised so that ties at the
    /// cut are common, and with an image without ground truth.
    #[test]
    fn device_mining_picks_the_host_minings_anchors_and_loss() {
        let dev = Device::Cpu;
        let model = small_test_model();
        let images = Tensor::zeros((3, 3, 96, 96), DType::F32, &dev).unwrap();
        let (scores, deltas, anchors, _) = model.run(&images, true).unwrap();
        let (n, r, c) = scores.dims3().unwrap();
        // Quantised random scores: many equal background losses.
        let q = (Tensor::randn(0f32, 1.0, (n, r, c), &dev).unwrap() * 2.0)
            .unwrap()
            .round()
            .unwrap();
        let scores = candle_core::Var::from_tensor(&q).unwrap();
        let gt = |a: &[usize]| Instances {
            boxes: a.iter().map(|&i| anchors[i]).collect(),
            classes: vec![0; a.len()],
            ignore: vec![false; a.len()],
        };
        let targets = vec![gt(&[10, r / 2]), gt(&[]), gt(&[r - 1])];
        let losses = model
            .losses(scores.as_tensor(), &deltas.detach(), &anchors, &targets)
            .unwrap();
        let got = losses["loss_cls"].to_scalar::<f32>().unwrap() as f64;

        // Host mining, as before the op.
        let log_p: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&q, D::Minus1)
            .unwrap()
            .reshape((n * r, c))
            .unwrap()
            .to_vec2()
            .unwrap();
        let k = model.params.num_classes as i64;
        let (mut sum, mut total_pos) = (0f64, 0usize);
        let mut picked = vec![false; n * r];
        for (i, inst) in targets.iter().enumerate() {
            let (labels, _) = model.label_anchors(&anchors, inst);
            let npos = labels.iter().filter(|&&l| l >= 0 && l < k).count();
            total_pos += npos;
            for (a, &l) in labels.iter().enumerate() {
                if l >= 0 && l < k {
                    sum -= log_p[i * r + a][l as usize] as f64;
                    picked[i * r + a] = true;
                }
            }
            let bg = |a: usize| -log_p[i * r + a][c - 1];
            let mut negs: Vec<usize> = (0..r).filter(|&a| labels[a] == k).collect();
            negs.sort_by(|&x, &y| bg(y).total_cmp(&bg(x)));
            let keep = ((model.params.neg_pos_ratio * npos.max(1) as f32) as usize).min(negs.len());
            for &a in &negs[..keep] {
                sum += bg(a) as f64;
                picked[i * r + a] = true;
            }
        }
        assert!(total_pos > 0);
        let expected = sum / total_pos as f64;
        assert!(
            (got - expected).abs() <= 1e-5 * expected.abs(),
            "loss_cls {got} vs host mining {expected}"
        );
        let grads = losses["loss_cls"].backward().unwrap();
        let g = grads.get(scores.as_tensor()).unwrap();
        let rows: Vec<f32> = g
            .abs()
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let differ: Vec<usize> = (0..n * r)
            .filter(|&a| (rows[a] > 0.0) != picked[a])
            .collect();
        assert!(
            differ.is_empty(),
            "{} anchors (image * {r} + anchor) have a gradient without being picked on the \
             host, or the other way round: {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        );
    }
}
