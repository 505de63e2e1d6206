//! Feature Pyramid Network with Detectron2's semantics and parameter names
//! (`fpn_lateral{stage}`, `fpn_output{stage}`, `top_block.p6/p7`, the wrapped backbone
//! under `bottom_up`), built from the bottom-up backbone's `output_shape()`.
//!
//! Top-down: each lateral 1x1 output is summed with the 2x nearest upsampling of the level
//! above, then smoothed by the output 3x3 conv (or a depthwise 3x3 + pointwise 1x1 for
//! light models). Inputs are padded to the size divisibility, so sizes halve exactly.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::backbone::{register_builder, Backbone, BackboneBuilder};
use super::build::build_backbone_named;
use crate::config::Config;
use crate::layers::{Activation, Conv2d, Conv2dConfig, NormKind, ShapeSpec};
use crate::onnx::{Attr, OnnxGraph};
use crate::ops::upsample_nearest_2x;
use crate::utils::registry::Registry;

/// FPN levels above the last input (the config's choice, used as is).
pub use crate::config::TopBlock as TopBlockKind;

#[derive(Debug, Clone)]
enum OutputConv {
    Plain(Conv2d),
    Separable(Conv2d, Conv2d),
}

impl OutputConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Plain(c) => c.forward_t(x, train),
            Self::Separable(dw, pw) => pw.forward_t(&dw.forward_t(x, train)?, train),
        }
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<String> {
        match self {
            Self::Plain(c) => c.export_onnx(g, x),
            Self::Separable(dw, pw) => {
                let y = dw.export_onnx(g, x)?;
                pw.export_onnx(g, &y)
            }
        }
    }

    fn fused(&self) -> Result<Self> {
        Ok(match self {
            Self::Plain(c) => Self::Plain(c.fused()?),
            Self::Separable(d, p) => Self::Separable(d.fused()?, p.fused()?),
        })
    }
}

pub struct Fpn {
    bottom_up: Box<dyn Backbone>,
    in_features: Vec<String>,
    lateral: Vec<Conv2d>,
    output: Vec<OutputConv>,
    top_block: TopBlockKind,
    p6p7: Option<(Conv2d, Conv2d)>,
    shapes: BTreeMap<String, ShapeSpec>,
    /// Output names, finest first.
    names: Vec<String>,
    /// Per input level: whether the coarser level above it is upsampled 2x before the
    /// sum (false where a dilated backbone keeps both at one stride).
    upsample: Vec<bool>,
}

/// `x[:, :, ::2, ::2]` (Detectron2's `max_pool2d(kernel 1, stride 2)`), from a reshape
/// and slices: Candle cannot differentiate a max-pool whose kernel differs from its stride.
pub fn subsample_2x(x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    x.pad_with_zeros(2, 0, 2 * ho - h)?
        .pad_with_zeros(3, 0, 2 * wo - w)?
        .reshape((n, c, ho, 2, wo, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, ho, wo))
}

fn stage(stride: usize) -> usize {
    stride.trailing_zeros() as usize
}

impl Fpn {
    /// `vb` is the FPN's own prefix (`backbone`); the bottom-up network lives under
    /// `backbone.bottom_up`.
    pub fn new(
        bottom_up: Box<dyn Backbone>,
        in_features: &[String],
        out_channels: usize,
        norm: Option<NormKind>,
        top_block: TopBlockKind,
        depthwise: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let shapes_in = bottom_up.output_shape();
        let mut specs = Vec::new();
        for f in in_features {
            let Some(s) = shapes_in.get(f) else {
                candle_core::bail!(
                    "MODEL.FPN.IN_FEATURES: the backbone has no output `{f}` (it has {:?})",
                    shapes_in.keys().collect::<Vec<_>>()
                );
            };
            specs.push(*s);
        }
        // Consecutive levels double the stride, or keep it where a dilated backbone
        // (MODEL.MOBILENET.OUTPUT_STRIDE) stopped downsampling. Levels are numbered by
        // position from the first one's stride, so names and parameters stay those of
        // the undilated network.
        if specs
            .windows(2)
            .any(|w| w[1].stride != 2 * w[0].stride && w[1].stride != w[0].stride)
        {
            candle_core::bail!("MODEL.FPN.IN_FEATURES must be consecutive levels (strides doubling, or equal under a dilated backbone), got {specs:?}");
        }
        let first_level = stage(specs.first().map_or(1, |s| s.stride));
        let mut upsample: Vec<bool> = specs
            .windows(2)
            .map(|w| w[1].stride != w[0].stride)
            .collect();
        upsample.push(false);
        // Every FPN conv: the configured norm, or a bias without one.
        let conv = |cin, cout, k| {
            Conv2dConfig::new(cin, cout, k)
                .with_bias(norm.is_none())
                .with_norm(norm)
        };
        let mut lateral = Vec::new();
        let mut output = Vec::new();
        let mut shapes = BTreeMap::new();
        let mut names = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let st = first_level + i;
            lateral
                .push(conv(s.channels, out_channels, 1).init(vb.pp(format!("fpn_lateral{st}")))?);
            let v = vb.pp(format!("fpn_output{st}"));
            output.push(if depthwise {
                let dw = conv(out_channels, out_channels, 3)
                    .depthwise()
                    .with_activation(Activation::ReLU)
                    .init(v.pp("depthwise"))?;
                let pw = conv(out_channels, out_channels, 1).init(v.pp("pointwise"))?;
                OutputConv::Separable(dw, pw)
            } else {
                OutputConv::Plain(conv(out_channels, out_channels, 3).init(v)?)
            });
            let name = format!("p{st}");
            shapes.insert(
                name.clone(),
                ShapeSpec {
                    channels: out_channels,
                    stride: s.stride,
                },
            );
            names.push(name);
        }
        let last_stride = specs.last().map(|s| s.stride).unwrap_or(1);
        let last_level = first_level + specs.len().saturating_sub(1);
        let mut p6p7 = None;
        match top_block {
            TopBlockKind::None => {}
            TopBlockKind::LastLevelMaxPool => {
                let st = last_level + 1;
                shapes.insert(
                    format!("p{st}"),
                    ShapeSpec {
                        channels: out_channels,
                        stride: last_stride * 2,
                    },
                );
                names.push(format!("p{st}"));
            }
            TopBlockKind::P6P7 => {
                let cin = specs.last().map(|s| s.channels).unwrap_or(out_channels);
                let tb = vb.pp("top_block");
                let stride2 = |cin| {
                    Conv2dConfig::new(cin, out_channels, 3)
                        .with_stride(2)
                        .with_bias(true)
                };
                let p6 = stride2(cin).init(tb.pp("p6"))?;
                let p7 = stride2(out_channels).init(tb.pp("p7"))?;
                p6p7 = Some((p6, p7));
                for (j, k) in [2, 4].into_iter().enumerate() {
                    let st = last_level + 1 + j;
                    shapes.insert(
                        format!("p{st}"),
                        ShapeSpec {
                            channels: out_channels,
                            stride: last_stride * k,
                        },
                    );
                    names.push(format!("p{st}"));
                }
            }
        }
        Ok(Self {
            bottom_up,
            in_features: in_features.to_vec(),
            lateral,
            output,
            top_block,
            p6p7,
            shapes,
            names,
            upsample,
        })
    }

    pub fn from_config(cfg: &Config, vb: VarBuilder, _input: ShapeSpec) -> Result<Self> {
        let f = &cfg.model.fpn;
        let bottom_up = build_backbone_named(
            cfg,
            &cfg.located("MODEL.BACKBONE.BOTTOM_UP"),
            &cfg.model.backbone.bottom_up,
            vb.pp("bottom_up"),
        )?;
        let (norm, top) = (f.norm, f.top_block);
        Self::new(
            bottom_up,
            &f.in_features,
            f.out_channels,
            norm,
            top,
            f.depthwise,
            vb,
        )
    }
}

impl Backbone for Fpn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<BTreeMap<String, Tensor>> {
        let feats = self.bottom_up.forward_t(x, train)?;
        let n = self.in_features.len();
        let mut outs: Vec<Tensor> = Vec::with_capacity(n);
        let mut prev: Option<Tensor> = None;
        for i in (0..n).rev() {
            let lat = self.lateral[i].forward_t(&feats[&self.in_features[i]], train)?;
            let merged = match prev {
                None => lat,
                Some(p) if self.upsample[i] => (lat + upsample_nearest_2x(&p)?)?,
                Some(p) => (lat + p)?,
            };
            outs.push(self.output[i].forward_t(&merged, train)?);
            prev = Some(merged);
        }
        outs.reverse();
        match (self.top_block, &self.p6p7) {
            (TopBlockKind::LastLevelMaxPool, _) => {
                let last = outs.last().expect("at least one level").clone();
                outs.push(subsample_2x(&last)?);
            }
            (TopBlockKind::P6P7, Some((p6, p7))) => {
                let src = &feats[&self.in_features[n - 1]];
                let y6 = p6.forward_t(src, train)?;
                let y7 = p7.forward_t(&y6.relu()?, train)?;
                outs.push(y6);
                outs.push(y7);
            }
            _ => {}
        }
        Ok(self.names.iter().cloned().zip(outs).collect())
    }

    fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<BTreeMap<String, String>> {
        let feats = self.bottom_up.export_onnx(g, x)?;
        let n = self.in_features.len();
        let mut outs: Vec<String> = Vec::with_capacity(n);
        let mut prev: Option<String> = None;
        for i in (0..n).rev() {
            let Some(input) = feats.get(&self.in_features[i]) else {
                candle_core::bail!("FPN: the bottom-up export has no `{}`", self.in_features[i]);
            };
            let lat = self.lateral[i].export_onnx(g, input)?;
            let merged = match prev {
                None => lat,
                Some(p) if !self.upsample[i] => g.node("Add", &[&lat, &p], vec![]),
                Some(p) => {
                    // Nearest 2x: output pixel (y, x) reads input (y / 2, x / 2), as
                    // `upsample_nearest_2x` does.
                    let scales = g.floats("upsample_scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
                    let up = g.node(
                        "Resize",
                        &[&p, "", &scales],
                        vec![
                            ("mode", Attr::String("nearest".into())),
                            (
                                "coordinate_transformation_mode",
                                Attr::String("asymmetric".into()),
                            ),
                            ("nearest_mode", Attr::String("floor".into())),
                        ],
                    );
                    g.node("Add", &[&lat, &up], vec![])
                }
            };
            outs.push(self.output[i].export_onnx(g, &merged)?);
            prev = Some(merged);
        }
        outs.reverse();
        match (self.top_block, &self.p6p7) {
            (TopBlockKind::LastLevelMaxPool, _) => {
                let last = outs.last().expect("at least one level").clone();
                outs.push(g.node(
                    "MaxPool",
                    &[&last],
                    vec![
                        ("kernel_shape", Attr::Ints(vec![1, 1])),
                        ("strides", Attr::Ints(vec![2, 2])),
                    ],
                ));
            }
            (TopBlockKind::P6P7, Some((p6, p7))) => {
                let src = &feats[&self.in_features[n - 1]];
                let y6 = p6.export_onnx(g, src)?;
                let r = g.node("Relu", &[&y6], vec![]);
                let y7 = p7.export_onnx(g, &r)?;
                outs.push(y6);
                outs.push(y7);
            }
            _ => {}
        }
        Ok(self.names.iter().cloned().zip(outs).collect())
    }

    fn output_shape(&self) -> BTreeMap<String, ShapeSpec> {
        self.shapes.clone()
    }

    fn size_divisibility(&self) -> usize {
        let coarsest = self.shapes.values().map(|s| s.stride).max().unwrap_or(1);
        coarsest.max(self.bottom_up.size_divisibility())
    }

    fn fused(&self) -> Result<Box<dyn Backbone>> {
        Ok(Box::new(Self {
            bottom_up: self.bottom_up.fused()?,
            in_features: self.in_features.clone(),
            lateral: self
                .lateral
                .iter()
                .map(Conv2d::fused)
                .collect::<Result<_>>()?,
            output: self
                .output
                .iter()
                .map(OutputConv::fused)
                .collect::<Result<_>>()?,
            top_block: self.top_block,
            p6p7: match &self.p6p7 {
                Some((a, b)) => Some((a.fused()?, b.fused()?)),
                None => None,
            },
            shapes: self.shapes.clone(),
            names: self.names.clone(),
            upsample: self.upsample.clone(),
        }))
    }

    fn frozen_prefixes(&self) -> Vec<String> {
        self.bottom_up.frozen_prefixes()
    }
}

pub(crate) fn register(registry: &Registry<BackboneBuilder>) {
    register_builder(registry, "build_fpn_backbone", |cfg, vb, input| {
        Ok(Box::new(Fpn::from_config(cfg, vb, input)?))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn subsample_matches_strided_pool_and_has_gradient() {
        for (h, w) in [(6, 4), (5, 7), (1, 1)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap();
            let want = x.max_pool2d_with_stride(1, 2).unwrap();
            let got = subsample_2x(&x).unwrap();
            assert_eq!(got.dims(), want.dims());
            assert_eq!(crate::ops::max_abs_diff(&got, &want), 0.0);
        }
        // The gradient is 1 on the kept pixels, 0 elsewhere.
        let v = Var::new(
            &[[[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        let g = subsample_2x(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    }
}
