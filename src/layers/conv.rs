//! Conv2d with optional norm and activation, as Detectron2's `layers.Conv2d`.
//!
//! Every convolution of the models goes through [`conv2d`], so the depthwise case can be
//! routed to a dedicated kernel without touching the modules.

use candle_core::{Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use super::depthwise::{depthwise_conv2d, DwParams};
use super::{Activation, Norm, NormKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Conv2dConfig {
    /// A square kernel with "same" padding for odd sizes.
    pub fn same(kernel: usize, stride: usize) -> Self {
        Self {
            kernel,
            stride,
            padding: (kernel - 1) / 2,
            dilation: 1,
            groups: 1,
        }
    }

    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// The convolution primitive every layer uses: depthwise convolutions go to the
/// dedicated op, pointwise (1x1, stride 1) ones to one batched matmul without im2col,
/// the rest to Candle's conv2d.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: &Conv2dConfig) -> Result<Tensor> {
    let (out_c, in_per_group, kh, kw) = weight.dims4()?;
    if cfg.groups > 1 && in_per_group == 1 && out_c == cfg.groups && kh == kw {
        let p = DwParams {
            stride: cfg.stride,
            padding: cfg.padding,
            dilation: cfg.dilation,
        };
        return depthwise_conv2d(x, weight, p);
    }
    if kh == 1 && kw == 1 && cfg.stride == 1 && cfg.padding == 0 && cfg.groups == 1 {
        let (n, c, h, w) = x.dims4()?;
        let x = x.contiguous()?.reshape((n, c, h * w))?;
        let y = weight.reshape((out_c, c))?.broadcast_left(n)?.matmul(&x)?;
        return y.reshape((n, out_c, h, w));
    }
    x.conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)
}

/// Kaiming-normal (fan_out, ReLU gain), torchvision's MobileNetV2 / ResNet conv init.
pub fn kaiming_fan_out() -> Init {
    Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan: FanInOut::FanOut,
        non_linearity: NonLinearity::ReLU,
    }
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
    /// `vb` holds `weight` (and `bias` when `bias` is set); `norm_vb` is where the norm's
    /// tensors live (torchvision puts them in a sibling module, e.g. `features.0.1`).
    /// A frozen conv's weights are detached: they get no gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        cfg: Conv2dConfig,
        bias: bool,
        norm: Option<(NormKind, VarBuilder)>,
        activation: Activation,
        frozen: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if !in_channels.is_multiple_of(cfg.groups) || !out_channels.is_multiple_of(cfg.groups) {
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
        let mut bias = if bias {
            Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        if frozen {
            weight = weight.detach();
            bias = bias.map(|b| b.detach());
        }
        let norm = match norm {
            Some((kind, nvb)) => {
                let kind = if frozen { NormKind::FrozenBN } else { kind };
                Some(Norm::new(kind, out_channels, nvb)?)
            }
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            cfg,
            norm,
            activation,
            out_channels,
        })
    }

    /// A plain conv (no norm, no activation) with explicit initialisers, for predictor
    /// layers that want small weights and a prior-probability bias.
    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        cfg: Conv2dConfig,
        weight_init: Init,
        bias_init: Option<Init>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let shape = (
            out_channels,
            in_channels / cfg.groups,
            cfg.kernel,
            cfg.kernel,
        );
        let weight = vb.get_with_hints(shape, "weight", weight_init)?;
        let bias = match bias_init {
            Some(init) => Some(vb.get_with_hints(out_channels, "bias", init)?),
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            cfg,
            norm: None,
            activation: Activation::Identity,
            out_channels,
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

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // A frozen norm is a fixed affine: fold it into the (possibly trainable) weights
        // on the fly. Same result as conv-then-affine, but the autograd graph keeps one
        // activation-sized tensor less per layer, which is what bounds detector training
        // memory on CPU.
        if let Some(Norm::Frozen(f)) = &self.norm {
            let (scale, shift) = f.eval_affine()?;
            let w = self.weight.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
            let b = match &self.bias {
                Some(b) => ((b * &scale)? + shift)?,
                None => shift,
            };
            let y = conv2d(x, &w, &self.cfg)?;
            if !train && !w.is_variable() && !b.is_variable() {
                return super::fused::bias_act(&y, &b, self.activation);
            }
            return self
                .activation
                .apply(&y.broadcast_add(&b.reshape((1, (), 1, 1))?)?);
        }
        let mut y = conv2d(x, &self.weight, &self.cfg)?;
        // The fused inference copy: bias and activation in one pass. That kernel has no
        // gradient, so it is never used on trainable tensors.
        if let (false, Some(b), None) = (train, &self.bias, &self.norm) {
            if !b.is_variable() && !self.weight.is_variable() {
                return super::fused::bias_act(&y, b, self.activation);
            }
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        }
        if let Some(norm) = &self.norm {
            y = norm.forward_t(&y, train)?;
        }
        self.activation.apply(&y)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
