//! SSDLite's prediction head: per level, a classification and a box branch, each a few
//! depthwise-separable blocks (3x3 depthwise + BN + ReLU6, 1x1 pointwise + BN + ReLU6)
//! then a predictor (3x3 depthwise + BN + ReLU6, 1x1 conv with bias), as torchvision's
//! `SSDLiteHead`. One head can serve every level (Detectron2 RetinaNet style) when the
//! levels have equal channels.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::layers::{autocast, Activation, Conv2d, Conv2dConfig, NormKind, ShapeSpec};
use crate::onnx::{Attr, OnnxGraph};

/// 3x3 depthwise conv + norm + ReLU6 under `vb.depthwise`.
fn depthwise(c: usize, norm: Option<NormKind>, vb: &VarBuilder) -> Result<Conv2d> {
    Conv2dConfig::new(c, c, 3)
        .depthwise()
        .with_bias(norm.is_none())
        .with_norm(norm)
        .with_activation(Activation::ReLU6)
        .init(vb.pp("depthwise"))
}

fn separable(
    c: usize,
    out: usize,
    norm: Option<NormKind>,
    vb: &VarBuilder,
) -> Result<(Conv2d, Conv2d)> {
    let dw = depthwise(c, norm, vb)?;
    let pw = Conv2dConfig::new(c, out, 1)
        .with_bias(norm.is_none())
        .with_norm(norm)
        .with_activation(Activation::ReLU6)
        .init(vb.pp("pointwise"))?;
    Ok((dw, pw))
}

#[derive(Debug, Clone)]
struct Branch {
    blocks: Vec<(Conv2d, Conv2d)>,
    pred_dw: Conv2d,
    pred: Conv2d,
}

impl Branch {
    /// `out` predictions per position, their bias starting at `bias_init`; the head's
    /// blocks as `cfg` says.
    fn new(
        c: usize,
        (out, bias_init): (usize, f64),
        cfg: &SsdLiteHeadConfig,
        vb: VarBuilder,
        name: &str,
    ) -> Result<Self> {
        let (num_convs, norm) = (cfg.num_convs, cfg.norm);
        let blocks = (0..num_convs)
            .map(|i| separable(c, c, norm, &vb.pp(format!("{name}_subnet")).pp(i)))
            .collect::<Result<_>>()?;
        let pvb = vb.pp(format!("{name}_pred"));
        let pred_dw = depthwise(c, norm, &pvb)?;
        let pred = Conv2d::with_init(
            &Conv2dConfig::new(c, out, 1),
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
            Some(Init::Const(bias_init)),
            pvb.pp("pointwise"),
        )?;
        Ok(Self {
            blocks,
            pred_dw,
            pred,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (dw, pw) in &self.blocks {
            x = pw.forward_t(&dw.forward_t(&x, train)?, train)?;
        }
        self.pred
            .forward_t(&self.pred_dw.forward_t(&x, train)?, train)
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<String> {
        let mut y = x.to_string();
        for (dw, pw) in &self.blocks {
            let d = dw.export_onnx(g, &y)?;
            y = pw.export_onnx(g, &d)?;
        }
        let d = self.pred_dw.export_onnx(g, &y)?;
        self.pred.export_onnx(g, &d)
    }

    fn fused(&self) -> Result<Self> {
        Ok(Self {
            blocks: self
                .blocks
                .iter()
                .map(|(a, b)| Ok((a.fused()?, b.fused()?)))
                .collect::<Result<_>>()?,
            pred_dw: self.pred_dw.fused()?,
            pred: self.pred.fused()?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SsdLiteHead {
    /// One (cls, box) pair for all levels, or one per level.
    branches: Vec<(Branch, Branch)>,
    num_anchors: Vec<usize>,
    /// Class scores per anchor (K for sigmoid losses, K + 1 with background for softmax).
    num_scores: usize,
}

/// The head's settings (from `MODEL.SSDLITE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdLiteHeadConfig {
    /// Class scores per anchor (K for sigmoid losses, K + 1 with background for softmax).
    pub num_scores: usize,
    /// Initial bias of every score output (the prior-probability trick of sigmoid heads;
    /// 0 for softmax heads, where a shared constant would cancel).
    pub cls_bias: f64,
    /// Depthwise-separable blocks before each predictor.
    pub num_convs: usize,
    pub norm: Option<NormKind>,
    /// One head for all levels (equal channels and anchors) instead of one per level.
    pub share: bool,
}

impl SsdLiteHead {
    pub fn new(
        inputs: &[ShapeSpec],
        num_anchors: &[usize],
        cfg: &SsdLiteHeadConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (num_scores, share) = (cfg.num_scores, cfg.share);
        if share
            && (inputs.windows(2).any(|w| w[0].channels != w[1].channels)
                || num_anchors.windows(2).any(|w| w[0] != w[1]))
        {
            candle_core::bail!(
                "MODEL.SSDLITE.SHARE_HEADS needs the same channels and anchors on every level"
            );
        }
        let make = |spec: &ShapeSpec, a: usize, vb: VarBuilder| -> Result<(Branch, Branch)> {
            let cls = Branch::new(
                spec.channels,
                (a * num_scores, cfg.cls_bias),
                cfg,
                vb.clone(),
                "cls",
            )?;
            let bx = Branch::new(spec.channels, (a * 4, 0.0), cfg, vb, "bbox")?;
            Ok((cls, bx))
        };
        let branches = if share {
            vec![make(&inputs[0], num_anchors[0], vb)?]
        } else {
            inputs
                .iter()
                .zip(num_anchors)
                .enumerate()
                .map(|(i, (s, &a))| make(s, a, vb.pp(i)))
                .collect::<Result<_>>()?
        };
        let head = Self {
            branches,
            num_anchors: num_anchors.to_vec(),
            num_scores,
        };
        Ok(head)
    }

    /// Per level features in, (N, R, num_scores) scores and (N, R, 4) deltas out, with
    /// R = sum of H * W * A over levels in (level, y, x, anchor) order.
    pub fn forward_t(&self, features: &[Tensor], train: bool) -> Result<(Tensor, Tensor)> {
        let mut scores = Vec::new();
        let mut deltas = Vec::new();
        for (i, f) in features.iter().enumerate() {
            let (cls, bx) = &self.branches[if self.branches.len() == 1 { 0 } else { i }];
            let n = f.dim(0)?;
            let flat = |t: Tensor, k: usize| -> Result<Tensor> {
                t.permute((0, 2, 3, 1))?.contiguous()?.reshape((n, (), k))
            };
            scores.push(flat(cls.forward_t(f, train)?, self.num_scores)?);
            deltas.push(flat(bx.forward_t(f, train)?, 4)?);
        }
        // In f32 for the losses and post-processing (autocast).
        Ok((
            autocast::to_f32(&Tensor::cat(&scores, 1)?)?,
            autocast::to_f32(&Tensor::cat(&deltas, 1)?)?,
        ))
    }

    /// [`Self::forward_t`] as ONNX nodes: (scores, deltas) values of shapes (N, R, S)
    /// and (N, R, 4).
    pub fn export_onnx(&self, g: &mut OnnxGraph, features: &[String]) -> Result<(String, String)> {
        let mut scores = Vec::new();
        let mut deltas = Vec::new();
        for (i, f) in features.iter().enumerate() {
            let (cls, bx) = &self.branches[if self.branches.len() == 1 { 0 } else { i }];
            let flat = |g: &mut OnnxGraph, t: String, k: i64| {
                let p = g.node(
                    "Transpose",
                    &[&t],
                    vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))],
                );
                let shape = g.int_list("shape", &[0, -1, k]);
                g.node("Reshape", &[&p, &shape], vec![])
            };
            let c = cls.export_onnx(g, f)?;
            scores.push(flat(g, c, self.num_scores as i64));
            let b = bx.export_onnx(g, f)?;
            deltas.push(flat(g, b, 4));
        }
        let cat = |g: &mut OnnxGraph, v: &[String]| {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![("axis", Attr::Int(1))])
        };
        Ok((cat(g, &scores), cat(g, &deltas)))
    }

    pub fn fused(&self) -> Result<Self> {
        Ok(Self {
            branches: self
                .branches
                .iter()
                .map(|(a, b)| Ok((a.fused()?, b.fused()?)))
                .collect::<Result<_>>()?,
            num_anchors: self.num_anchors.clone(),
            num_scores: self.num_scores,
        })
    }

    pub fn num_scores(&self) -> usize {
        self.num_scores
    }
}
