//! Detectron2's `FastRCNNConvFCHead`: optional 3x3 convs, then fully connected layers
//! with ReLU on pooled ROI features (`conv1..`, `fc1..` as in Detectron2).

use candle_core::{Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use crate::layers::{autocast, Activation, Conv2d, Conv2dConfig, NormKind, ShapeSpec};

/// A fully connected layer with Caffe2's "Xavier" init (uniform, fan-in, gain 1), which
/// Detectron2 uses for its box-head FCs.
#[derive(Debug, Clone)]
pub struct Fc {
    weight: Tensor,
    bias: Tensor,
}

impl Fc {
    pub fn new(inp: usize, out: usize, weight_init: Init, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((out, inp), "weight", weight_init)?,
            bias: vb.get_with_hints(out, "bias", Init::Const(0.0))?,
        })
    }

    pub fn xavier(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let init = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::Linear,
        };
        Self::new(inp, out, init, vb)
    }

    /// (R, in) -> (R, out); in the compute dtype under autocast.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        autocast::linear(x, &self.weight, Some(&self.bias))
    }
}

#[derive(Debug, Clone)]
pub struct FastRcnnConvFcHead {
    convs: Vec<Conv2d>,
    fcs: Vec<Fc>,
    output_size: usize,
}

/// The box head's layers (Detectron2's `MODEL.ROI_BOX_HEAD.NUM_CONV`, `CONV_DIM`,
/// `NORM`, `NUM_FC`, `FC_DIM`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxHeadConfig {
    pub num_conv: usize,
    pub conv_dim: usize,
    pub norm: Option<NormKind>,
    pub num_fc: usize,
    pub fc_dim: usize,
}

impl FastRcnnConvFcHead {
    /// `input`: the pooled features' channels, `resolution`: their side.
    pub fn new(
        input: ShapeSpec,
        resolution: usize,
        cfg: &BoxHeadConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let BoxHeadConfig {
            num_conv,
            conv_dim,
            norm,
            num_fc,
            fc_dim,
        } = *cfg;
        if num_conv + num_fc == 0 {
            candle_core::bail!("MODEL.ROI_BOX_HEAD needs at least one conv or FC layer");
        }
        let mut c = input.channels;
        let mut convs = Vec::with_capacity(num_conv);
        for k in 0..num_conv {
            let conv = Conv2dConfig::new(c, conv_dim, 3)
                .with_bias(norm.is_none())
                .with_norm(norm)
                .with_activation(Activation::ReLU);
            convs.push(conv.init(vb.pp(format!("conv{}", k + 1)))?);
            c = conv_dim;
        }
        let mut size = c * resolution * resolution;
        let mut fcs = Vec::with_capacity(num_fc);
        for k in 0..num_fc {
            fcs.push(Fc::xavier(size, fc_dim, vb.pp(format!("fc{}", k + 1)))?);
            size = fc_dim;
        }
        Ok(Self {
            convs,
            fcs,
            output_size: size,
        })
    }

    /// Width of the flat feature per ROI.
    pub fn output_size(&self) -> usize {
        self.output_size
    }

    /// (R, C, S, S) -> (R, output_size).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for c in &self.convs {
            x = c.forward_t(&x, train)?;
        }
        let mut x = x.flatten_from(1)?;
        for fc in &self.fcs {
            x = fc.forward(&x)?.relu()?;
        }
        Ok(x)
    }

    pub fn fused(&self) -> Result<Self> {
        Ok(Self {
            convs: self
                .convs
                .iter()
                .map(|c| c.fused())
                .collect::<Result<_>>()?,
            fcs: self.fcs.clone(),
            output_size: self.output_size,
        })
    }
}
