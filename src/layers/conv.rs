//! Conv2d with optional norm and activation, as Detectron2's `layers.Conv2d`.
//!
//! Every convolution of the models goes through [`conv2d`], so the depthwise case can be
//! routed to a dedicated kernel without touching the modules.

use candle_core::{Module, Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};

use super::conv_bn_train::TrainConv;
use super::dense_conv::{self, DenseConvBiasAct};
use super::depthwise::{depthwise_conv2d, DwParams, ForwardBiasAct};
use super::pointwise::PointwiseBiasAct;
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

/// The depthwise geometry (one filter per channel, square kernel), if `weight` has it.
fn depthwise_params(weight: &Tensor, cfg: &Conv2dConfig) -> Result<Option<DwParams>> {
    let (out_c, in_per_group, kh, kw) = weight.dims4()?;
    Ok(
        (cfg.groups > 1 && in_per_group == 1 && out_c == cfg.groups && kh == kw).then_some(
            DwParams {
                stride: cfg.stride,
                padding: cfg.padding,
                dilation: cfg.dilation,
            },
        ),
    )
}

/// The geometry of an ungrouped square-kernel conv (the dense op's case).
fn dense_params(weight: &Tensor, cfg: &Conv2dConfig) -> Result<Option<DwParams>> {
    let (_, _, kh, kw) = weight.dims4()?;
    Ok((cfg.groups == 1 && kh == kw).then_some(DwParams {
        stride: cfg.stride,
        padding: cfg.padding,
        dilation: cfg.dilation,
    }))
}

/// 1x1, stride 1, unpadded and ungrouped: a matmul over pixels.
fn is_pointwise(weight: &Tensor, cfg: &Conv2dConfig) -> Result<bool> {
    let (_, _, kh, kw) = weight.dims4()?;
    Ok(kh == 1 && kw == 1 && cfg.stride == 1 && cfg.padding == 0 && cfg.groups == 1)
}

/// The conv of a training conv-BN layer that can run as one node with the norm.
fn train_conv(weight: &Tensor, cfg: &Conv2dConfig) -> Result<Option<TrainConv>> {
    if let Some(p) = depthwise_params(weight, cfg)? {
        return Ok(Some(TrainConv::Depthwise(p)));
    }
    if is_pointwise(weight, cfg)? {
        return Ok(Some(TrainConv::Pointwise));
    }
    Ok(dense_params(weight, cfg)?.map(TrainConv::Dense))
}

/// The convolution primitive every layer uses: depthwise convolutions go to the
/// dedicated op, pointwise (1x1, stride 1) ones to one batched matmul without im2col,
/// other ungrouped ones on CPU to the im2col + gemm op, the rest to Candle's conv2d.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: &Conv2dConfig) -> Result<Tensor> {
    if let Some(p) = depthwise_params(weight, cfg)? {
        return depthwise_conv2d(x, weight, p);
    }
    if is_pointwise(weight, cfg)? {
        if super::pointwise::supported(x) && x.dtype() == weight.dtype() {
            return super::pointwise::pointwise_conv(x, weight);
        }
        let (n, c, h, w) = x.dims4()?;
        let out_c = weight.dim(0)?;
        let x = x.contiguous()?.reshape((n, c, h * w))?;
        let y = weight.reshape((out_c, c))?.broadcast_left(n)?.matmul(&x)?;
        return y.reshape((n, out_c, h, w));
    }
    if let Some(p) = dense_params(weight, cfg)? {
        if dense_conv::supported(x, weight) {
            return dense_conv::dense_conv2d(x, weight, p);
        }
    }
    x.conv2d(weight, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)
}

/// Inference only (no gradient): `activation(conv(x, weight) + bias)`. On CPU in f32
/// the depthwise and pointwise cases run as one kernel that applies the bias and
/// activation while each output block is still in cache; elsewhere it is [`conv2d`]
/// then one bias-activation pass.
pub fn conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    cfg: &Conv2dConfig,
    activation: Activation,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let (w, b) = (weight.contiguous()?, bias.contiguous()?);
        if let Some(p) = depthwise_params(weight, cfg)? {
            if super::depthwise::custom_op_for(x) {
                return x
                    .contiguous()?
                    .apply_op3_no_bwd(&w, &b, &ForwardBiasAct(p, activation));
            }
        } else if is_pointwise(weight, cfg)? {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&w, &b, &PointwiseBiasAct(activation));
        } else if let Some(p) = dense_params(weight, cfg)? {
            if dense_conv::supported(x, weight) {
                return x
                    .contiguous()?
                    .apply_op3_no_bwd(&w, &b, &DenseConvBiasAct(p, activation));
            }
        }
    }
    super::fused::bias_act(&conv2d(x, weight, cfg)?, bias, activation)
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
/// [`conv_bn_train`](super::conv_bn_train) covers runs as one autograd node (no gradient
/// buffers for the activations between them); anything else runs layer by layer.
pub fn forward_chain_t(convs: &[Conv2d], x: &Tensor, train: bool) -> Result<Tensor> {
    if train && convs.len() > 1 {
        let layers = convs
            .iter()
            .map(|c| c.conv_bn_node(x))
            .collect::<Result<Option<Vec<_>>>>()?;
        if let Some(layers) = layers {
            return super::conv_bn_train::conv_bn_chain_train(x, &layers, super::batch_norm::EPS);
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

    /// This layer as a training conv-BN node (alone or as one link of a chain), if the
    /// node covers it (inputs like `x`).
    fn conv_bn_node(&self, x: &Tensor) -> Result<Option<super::conv_bn_train::ChainLayer<'_>>> {
        let (None, Some(Norm::Batch(norm))) = (&self.bias, &self.norm) else {
            return Ok(None);
        };
        let Some(conv) = train_conv(&self.weight, &self.cfg)? else {
            return Ok(None);
        };
        Ok(
            super::conv_bn_train::supported(x, &self.weight, conv, self.activation).then_some(
                super::conv_bn_train::ChainLayer {
                    weight: &self.weight,
                    conv,
                    norm,
                    activation: self.activation,
                },
            ),
        )
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
            if !train && !w.is_variable() && !b.is_variable() {
                return conv2d_bias_act(x, &w, &b, &self.cfg, self.activation);
            }
            let y = conv2d(x, &w, &self.cfg)?;
            return self
                .activation
                .apply(&y.broadcast_add(&b.reshape((1, (), 1, 1))?)?);
        }
        // The fused inference copy: conv, bias and activation in one kernel. That has no
        // gradient, so it is never used on trainable tensors.
        if let (false, Some(b), None) = (train, &self.bias, &self.norm) {
            if !b.is_variable() && !self.weight.is_variable() {
                return conv2d_bias_act(x, &self.weight, b, &self.cfg, self.activation);
            }
        }
        // Training conv + BN (+ ReLU/ReLU6) as one node where the kernels allow it.
        if train {
            if let Some(l) = self.conv_bn_node(x)? {
                return l.norm.train_after_conv(x, l.weight, l.conv, l.activation);
            }
        }
        let mut y = conv2d(x, &self.weight, &self.cfg)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused inference kernels against conv2d, then bias, then activation.
    #[test]
    fn conv2d_bias_act_equals_the_composed_path() {
        let dev = Device::Cpu;
        // (n, c_in, c_out, h, w, cfg): pointwise with a ragged last block, many output
        // channels (narrow blocks) and tiny planes; depthwise stride 1 and 2, odd sizes.
        let cases = [
            (2, 8, 24, 13, 11, Conv2dConfig::same(1, 1)),
            (1, 16, 1280, 7, 7, Conv2dConfig::same(1, 1)),
            (3, 5, 7, 1, 3, Conv2dConfig::same(1, 1)),
            (2, 12, 12, 9, 14, Conv2dConfig::same(3, 1).with_groups(12)),
            (1, 6, 6, 11, 7, Conv2dConfig::same(3, 2).with_groups(6)),
        ];
        for (n, ci, co, h, w, cfg) in cases {
            let x = Tensor::randn(0f32, 2.0, (n, ci, h, w), &dev).unwrap();
            let k = Tensor::randn(
                0f32,
                0.5,
                (co, ci / cfg.groups, cfg.kernel, cfg.kernel),
                &dev,
            )
            .unwrap();
            let b = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            for act in [
                Activation::ReLU6,
                Activation::Identity,
                Activation::Mish,
                Activation::ReLU,
            ] {
                let y = conv2d(&x, &k, &cfg).unwrap();
                let want = act
                    .apply(&y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap())
                    .unwrap();
                let got = conv2d_bias_act(&x, &k, &b, &cfg, act).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = super::super::max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{cfg:?} {act:?} ({n},{ci},{h},{w}): {d}");
            }
        }
    }
}
