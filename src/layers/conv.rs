//! Conv2d with optional norm and activation, as Detectron2's `layers.Conv2d`.
//!
//! Every convolution of the models goes through [`conv2d`], so the depthwise case can be
//! routed to a dedicated kernel without touching the modules.

use crate::onnx::{Attr, OnnxGraph};
use candle_core::{Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use crate::ops::conv_bn_train::{self, ChainLayer};
use crate::ops::{conv2d, conv2d_bias_act, Activation, ConvGeometry};

use super::autocast;
use super::batch_norm::{self, Norm, NormKind};

/// A Conv2d layer's settings (burn-style): `Conv2dConfig::new(in, out, kernel)` gives a
/// stride-1 "same" conv without bias, norm or activation; the `with_*` methods change one
/// thing each, and [`init`](Self::init) builds the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub geometry: ConvGeometry,
    pub groups: usize,
    pub bias: bool,
    pub norm: Option<NormKind>,
    pub activation: Activation,
    /// Weights detached (no gradient) and the norm frozen.
    pub frozen: bool,
}

impl Conv2dConfig {
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            geometry: ConvGeometry::same(kernel, 1),
            groups: 1,
            bias: false,
            norm: None,
            activation: Activation::Identity,
            frozen: false,
        }
    }

    /// The stride; the padding stays "same" for the kernel.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.geometry.stride = stride;
        self
    }

    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// One filter per channel (groups = channels).
    pub fn depthwise(self) -> Self {
        let groups = self.in_channels;
        self.with_groups(groups)
    }

    /// Dilation `d` with padding widened to keep the output size ("same" for odd kernels).
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.geometry.dilation = dilation;
        self.geometry.padding = dilation * (self.kernel - 1) / 2;
        self
    }

    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    pub fn with_norm(mut self, norm: Option<NormKind>) -> Self {
        self.norm = norm;
        self
    }

    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    pub fn with_frozen(mut self, frozen: bool) -> Self {
        self.frozen = frozen;
        self
    }

    /// The layer with its weight (and bias) at `vb` and its norm at `vb.pp("norm")`,
    /// Detectron2's layout.
    pub fn init(&self, vb: VarBuilder) -> Result<Conv2d> {
        let norm_vb = vb.pp("norm");
        Conv2d::new(self, vb, norm_vb)
    }

    /// The layer with its norm's tensors at `norm_vb`: torchvision puts them in a sibling
    /// module (`features.0.0` is the conv, `features.0.1` its BN).
    pub fn init_with_norm_at(&self, vb: VarBuilder, norm_vb: VarBuilder) -> Result<Conv2d> {
        Conv2d::new(self, vb, norm_vb)
    }

    fn conv(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        conv2d(x, weight, self.geometry, self.groups)
    }

    fn conv_bias_act(&self, x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
        conv2d_bias_act(x, w, b, (self.geometry, self.groups), act)
    }
}

/// Kaiming-normal (fan_out, ReLU gain), torchvision's MobileNetV2 / ResNet conv init.
pub fn kaiming_fan_out() -> Init {
    Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan: FanInOut::FanOut,
        non_linearity: NonLinearity::ReLU,
    }
}

/// `convs` applied in turn. In training, a chain of two or more conv-BN layers that
/// [`conv_bn_train`] covers runs as one autograd node (no gradient
/// buffers for the activations between them); anything else runs layer by layer.
pub fn forward_chain_t(convs: &[Conv2d], x: &Tensor, train: bool) -> Result<Tensor> {
    // Under autocast the node (f32 kernels) does not apply to the narrow input.
    let x = &autocast::cast(x)?;
    if train && convs.len() > 1 {
        let layers = convs
            .iter()
            .map(|c| c.conv_bn_node(x))
            .collect::<Result<Option<Vec<_>>>>()?;
        if let Some(layers) = layers {
            let (y, stats) = conv_bn_train::conv_bn_chain_train(x, &layers, batch_norm::EPS)?;
            for (conv, stats) in convs.iter().zip(stats) {
                if let Some(Norm::Batch(norm)) = &conv.norm {
                    norm.record(stats)?;
                }
            }
            return Ok(y);
        }
    }
    let mut y = x.clone();
    for conv in convs {
        y = conv.forward_t(&y, train)?;
    }
    Ok(y)
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
    norm: Option<Norm>,
    activation: Activation,
    out_channels: usize,
}

impl Conv2d {
    fn new(cfg: &Conv2dConfig, vb: VarBuilder, norm_vb: VarBuilder) -> Result<Self> {
        let (in_channels, out_channels) = (cfg.in_channels, cfg.out_channels);
        if cfg.groups == 0
            || !in_channels.is_multiple_of(cfg.groups)
            || !out_channels.is_multiple_of(cfg.groups)
        {
            candle_core::bail!(
                "conv {}: channels {in_channels}->{out_channels} not divisible by groups {}",
                vb.prefix(),
                cfg.groups
            );
        }
        let shape = (
            out_channels,
            in_channels / cfg.groups,
            cfg.kernel,
            cfg.kernel,
        );
        let mut weight = vb.get_with_hints(shape, "weight", kaiming_fan_out())?;
        let mut bias = if cfg.bias {
            Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        // A frozen conv's weights are detached: they get no gradient.
        if cfg.frozen {
            weight = weight.detach();
            bias = bias.map(|b| b.detach());
        }
        let norm = match cfg.norm {
            Some(kind) => {
                let kind = if cfg.frozen { NormKind::FrozenBN } else { kind };
                Some(Norm::new(kind, out_channels, norm_vb)?)
            }
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            cfg: *cfg,
            norm,
            activation: cfg.activation,
            out_channels,
        })
    }

    /// A plain conv (no norm, no activation) with explicit initialisers, for predictor
    /// layers that want small weights and a prior-probability bias (`bias_init` `None`:
    /// no bias).
    pub fn with_init(
        cfg: &Conv2dConfig,
        weight_init: Init,
        bias_init: Option<Init>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let shape = (
            cfg.out_channels,
            cfg.in_channels / cfg.groups.max(1),
            cfg.kernel,
            cfg.kernel,
        );
        let weight = vb.get_with_hints(shape, "weight", weight_init)?;
        let bias = match bias_init {
            Some(init) => Some(vb.get_with_hints(cfg.out_channels, "bias", init)?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            cfg: *cfg,
            norm: None,
            activation: Activation::Identity,
            out_channels: cfg.out_channels,
        })
    }

    /// A copy for inference with the norm folded into the weights and bias
    /// (`w * scale`, `b * scale + shift`), so eval runs one conv and the activation.
    /// The copy holds detached tensors: fuse again after the weights change.
    pub fn fused(&self) -> Result<Self> {
        let Some(norm) = &self.norm else {
            return Ok(self.clone());
        };
        let (scale, shift) = norm.eval_affine()?;
        let weight = self
            .weight
            .detach()
            .broadcast_mul(&scale.detach().reshape(((), 1, 1, 1))?)?;
        let bias = match &self.bias {
            Some(b) => ((b.detach() * &scale.detach())? + shift.detach())?,
            None => shift.detach(),
        };
        Ok(Self {
            weight,
            bias: Some(bias),
            cfg: self.cfg,
            norm: None,
            activation: self.activation,
            out_channels: self.out_channels,
        })
    }

    /// This layer as a training conv-BN node (alone or as one link of a chain), if the
    /// node covers it (inputs like `x`).
    fn conv_bn_node(&self, x: &Tensor) -> Result<Option<ChainLayer<'_>>> {
        let (None, Some(Norm::Batch(norm))) = (&self.bias, &self.norm) else {
            return Ok(None);
        };
        if norm.synced() {
            return Ok(None);
        }
        let Some(conv) = crate::ops::train_conv(&self.weight, self.cfg.geometry, self.cfg.groups)?
        else {
            return Ok(None);
        };
        let (gamma, beta) = norm.affine_params();
        Ok(
            conv_bn_train::supported(x, &self.weight, conv, self.activation).then_some(
                ChainLayer {
                    weight: &self.weight,
                    conv,
                    gamma,
                    beta,
                    activation: self.activation,
                },
            ),
        )
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// This layer as ONNX nodes after `x`: its inference form (norm folded) as one `Conv`
    /// with bias, then the activation. Returns the output's name.
    pub fn export_onnx(&self, g: &mut OnnxGraph, x: &str) -> Result<String> {
        let c = self.fused()?;
        let w = g.tensor("conv.weight", &c.weight)?;
        let b = match &c.bias {
            Some(b) => g.tensor("conv.bias", b)?,
            None => g.floats("conv.bias", &[c.out_channels], &vec![0.0; c.out_channels]),
        };
        let geo = c.cfg.geometry;
        let (k, p) = (c.cfg.kernel as i64, geo.padding as i64);
        let y = g.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("strides", Attr::Ints(vec![geo.stride as i64; 2])),
                ("dilations", Attr::Ints(vec![geo.dilation as i64; 2])),
                ("group", Attr::Int(c.cfg.groups as i64)),
            ],
        );
        Ok(c.activation.export_onnx(g, &y))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Under autocast the conv runs narrow: its input, weight and bias are cast (the
        // weight's gradient flows back through the cast); a batch norm after it computes
        // in f32 and hands back the narrow dtype.
        let x = &autocast::cast(x)?;
        let narrow = |t: &Tensor| autocast::cast(t);
        // A frozen norm is a fixed affine: fold it into the (possibly trainable) weights
        // on the fly. Same result as conv-then-affine, but the autograd graph keeps one
        // activation-sized tensor less per layer, which is what bounds detector training
        // memory on CPU. Not under autocast: a folded weight scaled up by a channel of
        // tiny variance makes a large narrow conv output that the shift then cancels, so
        // the norm is applied after the conv, in f32, as PyTorch's is.
        if let (Some(Norm::Frozen(f)), None) = (&self.norm, autocast::compute_dtype()) {
            let (scale, shift) = f.eval_affine()?;
            let w = self.weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            let b = match &self.bias {
                Some(b) => ((b * &scale)? + shift)?,
                None => shift,
            };
            if !train && !w.is_variable() && !b.is_variable() {
                return self.cfg.conv_bias_act(x, &w, &b, self.activation);
            }
            let y = self.cfg.conv(x, &w)?;
            return self
                .activation
                .apply(&y.broadcast_add(&b.reshape((1, (), 1, 1))?)?);
        }
        // The fused inference copy: conv, bias and activation in one kernel. That has no
        // gradient, so it is never used on trainable tensors.
        if let (false, Some(b), None) = (train, &self.bias, &self.norm) {
            if !b.is_variable() && !self.weight.is_variable() {
                return self.cfg.conv_bias_act(
                    x,
                    &narrow(&self.weight)?,
                    &narrow(b)?,
                    self.activation,
                );
            }
        }
        // Training conv + BN (+ ReLU/ReLU6) as one node where the kernels allow it.
        if train {
            if let Some(l) = self.conv_bn_node(x)? {
                if let Some(Norm::Batch(norm)) = &self.norm {
                    return norm.train_after_conv(x, l.weight, l.conv, l.activation);
                }
            }
        }
        let mut y = self.cfg.conv(x, &narrow(&self.weight)?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&narrow(b)?.reshape((1, (), 1, 1))?)?;
        }
        match &self.norm {
            Some(norm) => norm.forward_act(&y, train, self.activation),
            None => self.activation.apply(&y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
