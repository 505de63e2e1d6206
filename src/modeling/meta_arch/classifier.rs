//! An image classifier on any registered backbone: global average pool, dropout, linear.
//!
//! With MobileNetV2 its parameters are torchvision's `mobilenet_v2` names exactly
//! (`features.*`, `classifier.1.*`), so ImageNet checkpoints load and can be checked end
//! to end, and the backbone can be fine-tuned as a classifier.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use super::meta_arch::{MetaArch, Outputs};
use crate::config::{ClassifierLoss, Config};
use crate::layers::autocast;
use crate::layers::dropout::dropout_rows;
use crate::layers::losses::{
    binary_cross_entropy_with_logits, cross_entropy_smoothed, sigmoid_focal_loss,
};
use crate::modeling::backbone::{build_backbone, Backbone};
use crate::modeling::OnnxExportSpec;
use crate::onnx::{Attr, DataType, Dim, OnnxGraph};
use crate::structures::{Batch, Targets};

/// The training loss and its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassifierLossSpec {
    CrossEntropy { label_smoothing: f64 },
    Bce,
    Focal { alpha: f32, gamma: f32 },
}

impl ClassifierLossSpec {
    pub fn from_config(cfg: &Config) -> Self {
        let c = &cfg.model.classifier;
        match c.loss {
            ClassifierLoss::CrossEntropy => Self::CrossEntropy {
                label_smoothing: c.label_smoothing,
            },
            ClassifierLoss::Bce => Self::Bce,
            ClassifierLoss::Focal => Self::Focal {
                alpha: c.focal_alpha as f32,
                gamma: c.focal_gamma as f32,
            },
        }
    }
}

pub struct Classifier {
    backbone: Box<dyn Backbone>,
    feature: String,
    dropout: f32,
    linear: Linear,
    loss: ClassifierLossSpec,
}

impl Classifier {
    pub fn new(
        backbone: Box<dyn Backbone>,
        feature: &str,
        num_classes: usize,
        dropout: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let Some(spec) = backbone.output_shape().get(feature).copied() else {
            candle_core::bail!("Classifier: the backbone has no output `{feature}`");
        };
        let vb = vb.pp("classifier").pp(1);
        let weight = vb.get_with_hints(
            (num_classes, spec.channels),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01,
            },
        )?;
        let bias = vb.get_with_hints(num_classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            backbone,
            feature: feature.to_string(),
            dropout: dropout as f32,
            linear: Linear::new(weight, Some(bias)),
            loss: ClassifierLossSpec::CrossEntropy {
                label_smoothing: 0.0,
            },
        })
    }

    pub fn with_loss(mut self, loss: ClassifierLossSpec) -> Self {
        self.loss = loss;
        self
    }

    /// The backbone is built with only its last output (`last`), under no prefix.
    pub fn from_config(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let mut cfg = cfg.clone();
        cfg.model.mobilenet.out_features = vec!["last".to_string()];
        let backbone = build_backbone(&cfg, vb.clone())?;
        Ok(Self::new(
            backbone,
            "last",
            cfg.model.classifier.num_classes,
            cfg.model.classifier.dropout,
            vb,
        )?
        .with_loss(ClassifierLossSpec::from_config(&cfg)))
    }

    /// (N, C) 0/1 targets: the multi-hot of each image's classes (or of its one class).
    fn multi_hot(&self, targets: &Targets, n: usize) -> Result<Tensor> {
        let classes = self.linear.weight().dim(0)?;
        let mut hot = vec![0f32; n * classes];
        let sets: Vec<Vec<usize>> = match targets {
            Targets::Labels(l) => crate::ops::host::to_vec1::<u32>(l)?
                .into_iter()
                .map(|c| vec![c as usize])
                .collect(),
            Targets::MultiLabels(sets) => sets.clone(),
            Targets::Instances(_) => candle_core::bail!("Classifier training needs class labels"),
        };
        for (i, set) in sets.iter().enumerate() {
            for &c in set {
                if c >= classes {
                    candle_core::bail!("class {c} of image {i} is outside the {classes} classes");
                }
                hot[i * classes + c] = 1.0;
            }
        }
        Tensor::from_vec(hot, (n, classes), self.linear.weight().device())
    }

    /// `seeds`: one per image for a reproducible dropout mask in training (see
    /// [`dropout_rows`]).
    pub fn logits(&self, images: &Tensor, train: bool, seeds: &[u64]) -> Result<Tensor> {
        let features = self.backbone.forward_t(images, train)?;
        // Under autocast the pool averages in f32 and the linear layer runs narrow; the
        // logits leave in f32 for the loss.
        let x = autocast::to_f32(&features[&self.feature])?
            .mean(D::Minus1)?
            .mean(D::Minus1)?;
        let x = if train {
            dropout_rows(&x, self.dropout, seeds)?
        } else {
            x
        };
        let y = autocast::linear(&x, self.linear.weight(), self.linear.bias())?;
        autocast::to_f32(&y)
    }
}

impl MetaArch for Classifier {
    fn forward(&self, batch: &Batch, train: bool) -> Result<Outputs> {
        let logits = self.logits(&batch.images, train, &batch.seeds)?;
        let mut out = Outputs::default();
        if train {
            let Some(targets) = &batch.targets else {
                candle_core::bail!("Classifier training needs class labels");
            };
            let n = logits.dim(0)?;
            let loss = match (self.loss, targets) {
                (ClassifierLossSpec::CrossEntropy { label_smoothing }, Targets::Labels(l)) => {
                    cross_entropy_smoothed(&logits, l, label_smoothing)?
                }
                (ClassifierLossSpec::CrossEntropy { .. }, _) => candle_core::bail!(
                    "MODEL.CLASSIFIER.LOSS ce needs one class per image; multi-label data \
                     trains with bce or focal"
                ),
                (ClassifierLossSpec::Bce, t) => {
                    binary_cross_entropy_with_logits(&logits, &self.multi_hot(t, n)?)?.mean_all()?
                }
                (ClassifierLossSpec::Focal { alpha, gamma }, t) => {
                    sigmoid_focal_loss(&logits, &self.multi_hot(t, n)?, alpha, gamma)?.mean_all()?
                }
            };
            out.losses.insert("loss_cls".to_string(), loss);
            let accuracy = match targets {
                Targets::Labels(l) => Some(logits.detach().argmax(D::Minus1)?.eq(l)?),
                // Multi-label: the share of (image, class) decisions right at p = 0.5.
                Targets::MultiLabels(_) => {
                    let hot = self.multi_hot(targets, n)?;
                    Some(logits.detach().ge(0.0)?.to_dtype(hot.dtype())?.eq(&hot)?)
                }
                Targets::Instances(_) => None,
            };
            if let Some(hits) = accuracy {
                out.scalars.insert(
                    "accuracy".to_string(),
                    hits.to_dtype(candle_core::DType::F32)?.mean_all()?,
                );
            }
        }
        out.logits = Some(logits);
        Ok(out)
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        self.backbone.frozen_prefixes()
    }

    fn size_divisibility(&self) -> usize {
        self.backbone.size_divisibility()
    }

    fn raw_outputs(&self, images: &Tensor) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![("logits".into(), self.logits(images, false, &[])?)])
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str, spec: &OnnxExportSpec) -> Result<String> {
        let feats = self.backbone.export_onnx(g, x)?;
        let Some(f) = feats.get(&self.feature) else {
            candle_core::bail!("Classifier: the backbone export has no `{}`", self.feature);
        };
        let pooled = g.node("GlobalAveragePool", &[f], vec![]);
        let flat = g.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))]);
        let w = g.tensor("classifier.1.weight", self.linear.weight())?;
        let Some(b) = self.linear.bias() else {
            candle_core::bail!("Classifier: the linear layer has no bias");
        };
        let b = g.tensor("classifier.1.bias", b)?;
        let logits = g.node("Gemm", &[&flat, &w, &b], vec![("transB", Attr::Int(1))]);
        let classes = self.linear.weight().dim(0)?;
        g.output(
            &logits,
            "logits",
            DataType::Float,
            vec![spec.batch.dim(), Dim::Fixed(classes)],
        );
        Ok(format!(
            "logits: float32 (batch, {classes}), before softmax"
        ))
    }

    fn fused(&self) -> Result<Box<dyn MetaArch>> {
        Ok(Box::new(Self {
            backbone: self.backbone.fused()?,
            feature: self.feature.clone(),
            dropout: self.dropout,
            linear: self.linear.clone(),
            loss: self.loss,
        }))
    }
}
