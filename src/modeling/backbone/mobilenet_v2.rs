//! MobileNetV2 with torchvision's module layout and parameter names.
//!
//! `features.0` is the stem, `features.1..=17` the inverted residual blocks and
//! `features.18` the final 1x1 conv to `last_channel`; the multi-scale outputs are the
//! outputs of `features[3]`, `[6]`, `[13]` and `[17]` (strides 4, 8, 16, 32), named
//! `res2..res5` as Detectron2 names ResNet stages, plus `last` for `features[18]`,
//! which only the classifier asks for (so detectors do not carry its 400K parameters).

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::backbone::{register_builder, Backbone, BackboneBuilder};
use crate::config::Config;
use crate::layers::{Activation, Conv2d, Conv2dConfig, NormKind, ShapeSpec};
use crate::onnx::OnnxGraph;
use crate::utils::registry::Registry;

/// torchvision's inverted residual settings: expansion t, channels c, repeats n, stride s.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Output names and the `features` index they are taken after.
pub const OUTPUTS: [(&str, usize); 5] = [
    ("res2", 3),
    ("res3", 6),
    ("res4", 13),
    ("res5", 17),
    ("last", 18),
];

/// torchvision's `_make_divisible`: round to the nearest multiple of `divisor`, never
/// going more than 10% below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor;
    }
    new_v
}

#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV2Config {
    pub width_mult: f64,
    pub norm: NormKind,
    pub activation: Activation,
    pub out_features: Vec<String>,
    pub freeze_at: usize,
    pub in_channels: usize,
    /// 32 (torchvision), 16 or 8: strides past this one become dilations.
    pub output_stride: usize,
}

impl MobileNetV2Config {
    pub fn from_config(cfg: &Config, in_channels: usize) -> Result<Self> {
        let m = &cfg.model.mobilenet;
        Ok(Self {
            width_mult: m.width_mult,
            norm: m.norm,
            activation: m.activation,
            out_features: m.out_features.clone(),
            freeze_at: cfg.model.backbone.freeze_at,
            in_channels,
            output_stride: m.output_stride,
        })
    }
}

/// One entry of torchvision's `features`.
#[derive(Debug, Clone)]
struct InvertedResidual {
    convs: Vec<Conv2d>,
    use_residual: bool,
}

/// The shape of an inverted residual block: channels in and out, stride, expansion.
#[derive(Debug, Clone, Copy)]
struct BlockSpec {
    inp: usize,
    oup: usize,
    stride: usize,
    /// Of the depthwise 3x3 conv.
    dilation: usize,
    expand_ratio: usize,
}

impl InvertedResidual {
    fn new(spec: BlockSpec, cfg: &MobileNetV2Config, frozen: bool, vb: VarBuilder) -> Result<Self> {
        let BlockSpec {
            inp,
            oup,
            stride,
            dilation,
            expand_ratio,
        } = spec;
        // Every conv of the block: BN (or FrozenBN) and the block's activation.
        let conv = |cin, cout, k| {
            Conv2dConfig::new(cin, cout, k)
                .with_norm(Some(cfg.norm))
                .with_activation(cfg.activation)
                .with_frozen(frozen)
        };
        let hidden = (inp * expand_ratio) as f64;
        let hidden = hidden.round() as usize;
        let vb = vb.pp("conv");
        let mut convs = Vec::new();
        let mut idx = 0;
        if expand_ratio != 1 {
            let v = vb.pp(idx);
            convs.push(conv(inp, hidden, 1).init_with_norm_at(v.pp(0), v.pp(1))?);
            idx += 1;
        }
        let v = vb.pp(idx);
        let dw = conv(hidden, hidden, 3)
            .with_stride(stride)
            .with_dilation(dilation)
            .depthwise();
        convs.push(dw.init_with_norm_at(v.pp(0), v.pp(1))?);
        // The projection is a bare conv at `conv.{idx+1}` followed by its BN at `conv.{idx+2}`.
        let project = conv(hidden, oup, 1).with_activation(Activation::Identity);
        convs.push(project.init_with_norm_at(vb.pp(idx + 1), vb.pp(idx + 2))?);
        Ok(Self {
            convs,
            use_residual: stride == 1 && inp == oup,
        })
    }

    fn fused(&self) -> Result<Self> {
        Ok(Self {
            convs: self
                .convs
                .iter()
                .map(Conv2d::fused)
                .collect::<Result<_>>()?,
            use_residual: self.use_residual,
        })
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<String> {
        let mut y = x.to_string();
        for c in &self.convs {
            y = c.export_onnx(g, &y)?;
        }
        Ok(if self.use_residual {
            g.node("Add", &[&y, x], vec![])
        } else {
            y
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = crate::layers::forward_chain_t(&self.convs, x, train)?;
        if self.use_residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

#[derive(Debug, Clone)]
enum Feature {
    Conv(Conv2d),
    Block(InvertedResidual),
}

impl Feature {
    fn fused(&self) -> Result<Self> {
        Ok(match self {
            Self::Conv(c) => Self::Conv(c.fused()?),
            Self::Block(b) => Self::Block(b.fused()?),
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Conv(c) => c.forward_t(x, train),
            Self::Block(b) => b.forward_t(x, train),
        }
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<String> {
        match self {
            Self::Conv(c) => c.export_onnx(g, x),
            Self::Block(b) => b.export_onnx(g, x),
        }
    }
}

pub struct MobileNetV2 {
    features: Vec<Feature>,
    /// (name, features index) of the requested outputs, in depth order.
    outputs: Vec<(String, usize)>,
    shapes: BTreeMap<String, ShapeSpec>,
    frozen_prefixes: Vec<String>,
}

impl MobileNetV2 {
    pub fn new(cfg: &MobileNetV2Config, vb: VarBuilder) -> Result<Self> {
        if cfg.width_mult <= 0.0 || !cfg.width_mult.is_finite() {
            candle_core::bail!(
                "MODEL.MOBILENET.WIDTH_MULT must be positive, got {}",
                cfg.width_mult
            );
        }
        if ![8, 16, 32].contains(&cfg.output_stride) {
            candle_core::bail!(
                "MODEL.MOBILENET.OUTPUT_STRIDE must be 8, 16 or 32, got {}",
                cfg.output_stride
            );
        }
        let mut outputs = Vec::new();
        for name in &cfg.out_features {
            let Some(&(_, idx)) = OUTPUTS.iter().find(|(n, _)| n == name) else {
                candle_core::bail!(
                    "MODEL.MOBILENET.OUT_FEATURES: unknown output `{name}`; MobileNetV2 has {}",
                    OUTPUTS.map(|(n, _)| n).join(", ")
                );
            };
            outputs.push((name.clone(), idx));
        }
        if outputs.is_empty() {
            candle_core::bail!("MODEL.MOBILENET.OUT_FEATURES must name at least one output");
        }
        outputs.sort_by_key(|(_, idx)| *idx);
        let deepest = outputs.last().map(|(_, i)| *i).unwrap_or(0);
        if cfg.freeze_at > deepest + 1 {
            candle_core::bail!(
                "MODEL.BACKBONE.FREEZE_AT = {} but the backbone only builds features[0..{}]",
                cfg.freeze_at,
                deepest + 1
            );
        }

        let fvb = vb.pp("features");
        let frozen = |i: usize| i < cfg.freeze_at;
        let mut features = Vec::new();
        let mut channels = Vec::new();
        let mut strides = Vec::new();
        let mut input_channel = make_divisible(32.0 * cfg.width_mult, 8);
        let last_channel = make_divisible(1280.0 * cfg.width_mult.max(1.0), 8);
        let conv = |cin, cout, k, idx| {
            Conv2dConfig::new(cin, cout, k)
                .with_norm(Some(cfg.norm))
                .with_activation(cfg.activation)
                .with_frozen(frozen(idx))
        };
        let stem_vb = fvb.pp(0);
        let stem = conv(cfg.in_channels, input_channel, 3, 0).with_stride(2);
        features.push(Feature::Conv(
            stem.init_with_norm_at(stem_vb.pp(0), stem_vb.pp(1))?,
        ));
        channels.push(input_channel);
        strides.push(2);
        // DeepLab's output stride (TF-slim's `mobilenet_base`, torchvision's
        // `replace_stride_with_dilation`): once the stride reaches OUTPUT_STRIDE, a block
        // that would downsample keeps the resolution and dilates at the rate so far; the
        // blocks after it dilate by the rate times its stride.
        let (mut current, mut rate) = (2usize, 1usize);
        'build: for (t, c, n, s) in SETTINGS {
            let output_channel = make_divisible(c as f64 * cfg.width_mult, 8);
            for i in 0..n {
                let idx = features.len();
                if idx > deepest {
                    break 'build;
                }
                let nominal = if i == 0 { s } else { 1 };
                let (stride, dilation) = if nominal > 1 && current >= cfg.output_stride {
                    let d = rate;
                    rate *= nominal;
                    (1, d)
                } else {
                    current *= nominal;
                    (nominal, rate)
                };
                let spec = BlockSpec {
                    inp: input_channel,
                    oup: output_channel,
                    stride,
                    dilation,
                    expand_ratio: t,
                };
                features.push(Feature::Block(InvertedResidual::new(
                    spec,
                    cfg,
                    frozen(idx),
                    fvb.pp(idx),
                )?));
                input_channel = output_channel;
                channels.push(output_channel);
                strides.push(strides[idx - 1] * stride);
            }
        }
        if deepest == 18 {
            let v = fvb.pp(18);
            let last = conv(input_channel, last_channel, 1, 18);
            features.push(Feature::Conv(last.init_with_norm_at(v.pp(0), v.pp(1))?));
            channels.push(last_channel);
            strides.push(strides[17]);
        }
        let shapes = outputs
            .iter()
            .map(|(name, idx)| {
                (
                    name.clone(),
                    ShapeSpec {
                        channels: channels[*idx],
                        stride: strides[*idx],
                    },
                )
            })
            .collect();
        let prefix = fvb.prefix();
        let frozen_prefixes = (0..cfg.freeze_at)
            .map(|i| format!("{prefix}.{i}."))
            .collect();
        Ok(Self {
            features,
            outputs,
            shapes,
            frozen_prefixes,
        })
    }

    pub fn from_config(cfg: &Config, vb: VarBuilder, input: ShapeSpec) -> Result<Self> {
        Self::new(&MobileNetV2Config::from_config(cfg, input.channels)?, vb)
    }
}

impl Backbone for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        let mut y = x.clone();
        let mut next = 0;
        for (idx, feature) in self.features.iter().enumerate() {
            y = feature.forward_t(&y, train)?;
            while next < self.outputs.len() && self.outputs[next].1 == idx {
                out.insert(self.outputs[next].0.clone(), y.clone());
                next += 1;
            }
            if next == self.outputs.len() {
                break;
            }
        }
        Ok(out)
    }

    fn output_shape(&self) -> BTreeMap<String, ShapeSpec> {
        self.shapes.clone()
    }

    fn size_divisibility(&self) -> usize {
        32
    }

    fn fused(&self) -> Result<Box<dyn Backbone>> {
        Ok(Box::new(Self {
            features: self
                .features
                .iter()
                .map(Feature::fused)
                .collect::<Result<_>>()?,
            outputs: self.outputs.clone(),
            shapes: self.shapes.clone(),
            frozen_prefixes: self.frozen_prefixes.clone(),
        }))
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        self.frozen_prefixes.clone()
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut y = x.to_string();
        let mut next = 0;
        for (idx, feature) in self.features.iter().enumerate() {
            if next == self.outputs.len() {
                break;
            }
            y = feature.export_onnx(g, &y)?;
            while next < self.outputs.len() && self.outputs[next].1 == idx {
                out.insert(self.outputs[next].0.clone(), y.clone());
                next += 1;
            }
        }
        Ok(out)
    }
}

pub(crate) fn register(registry: &Registry<BackboneBuilder>) {
    register_builder(registry, "build_mobilenet_v2_backbone", |cfg, vb, input| {
        Ok(Box::new(MobileNetV2::from_config(cfg, vb, input)?))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values from torchvision's _make_divisible.
        assert_eq!(make_divisible(32.0, 8), 32);
        assert_eq!(make_divisible(32.0 * 0.5, 8), 16);
        assert_eq!(make_divisible(24.0 * 0.35, 8), 8);
        assert_eq!(make_divisible(96.0 * 0.75, 8), 72);
        assert_eq!(make_divisible(160.0 * 1.4, 8), 224);
        assert_eq!(make_divisible(1280.0 * 1.4, 8), 1792);
        assert_eq!(make_divisible(11.0, 8), 16);
        assert_eq!(make_divisible(13.0 * 0.5, 8), 8);
    }
}
