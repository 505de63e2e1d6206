//! Detectron2's `StandardRPNHead`: one 3x3 conv + ReLU shared by all levels, then 1x1
//! convs for an objectness logit and four box deltas per anchor.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::layers::{autocast, Conv2d, Conv2dConfig, ShapeSpec};

#[derive(Debug, Clone)]
pub struct RpnHead {
    conv: Conv2d,
    objectness_logits: Conv2d,
    anchor_deltas: Conv2d,
    num_anchors: usize,
}

impl RpnHead {
    /// All levels share the head, so they need the same channels and anchors per cell.
    pub fn new(inputs: &[ShapeSpec], num_anchors: &[usize], vb: VarBuilder) -> Result<Self> {
        let Some(first) = inputs.first() else {
            candle_core::bail!("MODEL.RPN.IN_FEATURES is empty");
        };
        if inputs.iter().any(|s| s.channels != first.channels) {
            candle_core::bail!("RPN head: every level needs the same channels, got {inputs:?}");
        }
        if num_anchors.windows(2).any(|w| w[0] != w[1]) {
            candle_core::bail!(
                "RPN head: every level needs the same number of anchors per cell \
                 (MODEL.ANCHOR_GENERATOR sizes x ratios), got {num_anchors:?}"
            );
        }
        let (c, a) = (first.channels, num_anchors[0]);
        // Detectron2 initialises all three with N(0, 0.01) and zero bias.
        let small = || Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let conv = |out: usize, k: usize, name: &str| {
            Conv2d::with_init(
                &Conv2dConfig::new(c, out, k),
                small(),
                Some(Init::Const(0.0)),
                vb.pp(name),
            )
        };
        Ok(Self {
            conv: conv(c, 3, "conv")?,
            objectness_logits: conv(a, 1, "objectness_logits")?,
            anchor_deltas: conv(a * 4, 1, "anchor_deltas")?,
            num_anchors: a,
        })
    }

    pub fn num_anchors(&self) -> usize {
        self.num_anchors
    }

    /// Per level in, (N, R) logits and (N, R, 4) deltas out, concatenated over levels
    /// with R in (level, y, x, anchor) order, the anchor generator's order.
    pub fn forward(&self, features: &[Tensor]) -> Result<(Tensor, Tensor)> {
        let mut logits = Vec::with_capacity(features.len());
        let mut deltas = Vec::with_capacity(features.len());
        for f in features {
            let n = f.dim(0)?;
            let t = self.conv.forward_t(f, true)?.relu()?;
            logits.push(
                self.objectness_logits
                    .forward_t(&t, true)?
                    .permute((0, 2, 3, 1))?
                    .contiguous()?
                    .reshape((n, ()))?,
            );
            deltas.push(
                self.anchor_deltas
                    .forward_t(&t, true)?
                    .permute((0, 2, 3, 1))?
                    .contiguous()?
                    .reshape((n, (), 4))?,
            );
        }
        // In f32 for the losses and proposal selection (autocast).
        Ok((
            autocast::to_f32(&Tensor::cat(&logits, 1)?)?,
            autocast::to_f32(&Tensor::cat(&deltas, 1)?)?,
        ))
    }
}
