//! `conv2d`: the convolution every layer runs, routed to the op that fits it.
//!
//! Depthwise convolutions go to the dedicated op, pointwise (1x1, stride 1) ones to one
//! batched matmul without im2col, other ungrouped ones on CPU to the im2col + gemm op and
//! on CUDA to a matmul over the im2col op (cuBLAS both ways), and the rest to Candle's
//! conv2d, so the modules never choose a kernel themselves.

use candle_core::{DType, Result, Tensor};

use super::activation::Activation;
use super::conv_bn_train::TrainConv;
use super::dense_conv::{self, DenseConvBiasAct};
use super::depthwise::{self, depthwise_conv2d, ForwardBiasAct};
use super::geometry::ConvGeometry;
use super::im2col;
use super::pointwise::{self, PointwiseBiasAct};

/// The depthwise case (one filter per channel, square kernel), if `weight` has it.
fn is_depthwise(weight: &Tensor, groups: usize) -> Result<bool> {
    let (out_c, in_per_group, kh, kw) = weight.dims4()?;
    Ok(groups > 1 && in_per_group == 1 && out_c == groups && kh == kw)
}

/// An ungrouped square-kernel conv (the dense op's case).
fn is_dense(weight: &Tensor, groups: usize) -> Result<bool> {
    let (_, _, kh, kw) = weight.dims4()?;
    Ok(groups == 1 && kh == kw)
}

/// 1x1, stride 1, unpadded and ungrouped: a matmul over pixels.
fn is_pointwise(weight: &Tensor, g: ConvGeometry, groups: usize) -> Result<bool> {
    let (_, _, kh, kw) = weight.dims4()?;
    Ok(kh == 1 && kw == 1 && g.stride == 1 && g.padding == 0 && groups == 1)
}

/// The conv of a training conv-BN layer that can run as one node with the norm.
pub fn train_conv(weight: &Tensor, g: ConvGeometry, groups: usize) -> Result<Option<TrainConv>> {
    if is_depthwise(weight, groups)? {
        return Ok(Some(TrainConv::Depthwise(g)));
    }
    if is_pointwise(weight, g, groups)? {
        return Ok(Some(TrainConv::Pointwise));
    }
    Ok(is_dense(weight, groups)?.then_some(TrainConv::Dense(g)))
}

/// `x` (N, C, H, W) convolved with `weight` (O, C / groups, K, K), no bias.
pub fn conv2d(x: &Tensor, weight: &Tensor, g: ConvGeometry, groups: usize) -> Result<Tensor> {
    if let Some(dt) = narrow_on_cpu(x) {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        return conv2d(&f32(x)?, &f32(weight)?, g, groups)?.to_dtype(dt);
    }
    if is_depthwise(weight, groups)? {
        return depthwise_conv2d(x, weight, g);
    }
    if is_pointwise(weight, g, groups)? {
        if pointwise::supported(x) && x.dtype() == weight.dtype() {
            return pointwise::pointwise_conv(x, weight);
        }
        let (n, c, h, w) = x.dims4()?;
        let out_c = weight.dim(0)?;
        let x = x.contiguous()?.reshape((n, c, h * w))?;
        let y = weight.reshape((out_c, c))?.broadcast_left(n)?.matmul(&x)?;
        return y.reshape((n, out_c, h, w));
    }
    if is_dense(weight, groups)? && dense_conv::supported(x, weight) {
        return dense_conv::dense_conv2d(x, weight, g);
    }
    // With cuDNN, Candle's conv2d runs cuDNN's forward, the faster one where no gradient
    // is wanted; its backward is Candle's own, so training takes the im2col op.
    let training = x.track_op() || weight.track_op();
    if is_dense(weight, groups)?
        && im2col::supported(x, weight)
        && (training || !cfg!(feature = "cudnn"))
    {
        return im2col::im2col_conv2d(x, weight, g);
    }
    x.conv2d(weight, g.padding, g.stride, g.dilation, groups)
}

/// The narrow dtype of `x` when it is f16/bf16 on the CPU. Candle's CPU backend has no
/// bf16 matmul and no fast f16 one, so narrow convolutions and linear layers there
/// compute in f32 on the narrow operands and round the result: the arithmetic of a GPU's
/// tensor cores (narrow products, f32 sums), so that mixed precision can be checked on
/// a CPU, though not sped up.
pub(crate) fn narrow_on_cpu(x: &Tensor) -> Option<DType> {
    (x.device().is_cpu() && matches!(x.dtype(), DType::F16 | DType::BF16)).then_some(x.dtype())
}

/// Inference only (no gradient): `activation(conv(x, weight) + bias)`. On CPU in f32
/// the depthwise, pointwise and dense cases run as one kernel that applies the bias and
/// activation while each output block is still in cache; elsewhere it is [`conv2d`]
/// then one bias-activation pass.
pub fn conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (g, groups): (ConvGeometry, usize),
    activation: Activation,
) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let (w, b) = (weight.contiguous()?, bias.contiguous()?);
        if is_depthwise(weight, groups)? {
            if depthwise::custom_op_for(x) {
                return x
                    .contiguous()?
                    .apply_op3_no_bwd(&w, &b, &ForwardBiasAct(g, activation));
            }
        } else if is_pointwise(weight, g, groups)? {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&w, &b, &PointwiseBiasAct(activation));
        } else if is_dense(weight, groups)? && dense_conv::supported(x, weight) {
            return x
                .contiguous()?
                .apply_op3_no_bwd(&w, &b, &DenseConvBiasAct(g, activation));
        }
    }
    super::activation::bias_act(&conv2d(x, weight, g, groups)?, bias, activation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The fused inference kernels against conv2d, then bias, then activation.
    #[test]
    fn conv2d_bias_act_equals_the_composed_path() {
        let dev = Device::Cpu;
        // (n, c_in, c_out, h, w, (kernel, stride, groups)): pointwise with a ragged last
        // block, many output channels (narrow blocks) and tiny planes; depthwise stride 1
        // and 2, odd sizes.
        let cases = [
            (2, 8, 24, 13, 11, (1, 1, 1)),
            (1, 16, 1280, 7, 7, (1, 1, 1)),
            (3, 5, 7, 1, 3, (1, 1, 1)),
            (2, 12, 12, 9, 14, (3, 1, 12)),
            (1, 6, 6, 11, 7, (3, 2, 6)),
        ];
        for (n, ci, co, h, w, (kernel, stride, groups)) in cases {
            let g = ConvGeometry::same(kernel, stride);
            let x = Tensor::randn(0f32, 2.0, (n, ci, h, w), &dev).unwrap();
            let k = Tensor::randn(0f32, 0.5, (co, ci / groups, kernel, kernel), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, co, &dev).unwrap();
            for act in [
                Activation::ReLU6,
                Activation::Identity,
                Activation::Mish,
                Activation::ReLU,
            ] {
                let y = conv2d(&x, &k, g, groups).unwrap();
                let want = act
                    .apply(&y.broadcast_add(&b.reshape((1, co, 1, 1)).unwrap()).unwrap())
                    .unwrap();
                let got = conv2d_bias_act(&x, &k, &b, (g, groups), act).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = super::super::max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{g:?} {groups} {act:?} ({n},{ci},{h},{w}): {d}");
            }
        }
    }
}
