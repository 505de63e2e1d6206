//! A training conv -> batch norm -> activation layer as one autograd node (CPU).
//!
//! As two nodes (the conv op, then the batch norm op) the conv's output is a node of its
//! own: Candle's backward gives it a zero-filled, activation-sized gradient buffer and adds
//! the batch norm's input gradient into it before the conv's backward reads it, two
//! full passes over memory per layer for nothing. Here the conv output is kept by the op
//! (the batch norm backward needs it anyway) and its gradient goes straight from the
//! batch norm backward into the conv backward. The kernels are those of the two ops.
//!
//! [`conv_bn_chain_train`] goes one step further for a chain of such layers (an inverted
//! residual block's expand, depthwise and project): one node for the chain, so the
//! activations between its layers, the block's largest tensors, get no gradient buffers
//! either.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

use super::activation::Activation;
use super::batch_norm_train::{self, BatchStats};
use super::dense_conv::{self, DenseConv};
use super::depthwise;
use super::geometry::ConvGeometry;
use super::pointwise::{self, Pointwise};

/// The convolutions this node covers: those with a CPU op of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainConv {
    /// 1x1, stride 1, no padding, no groups.
    Pointwise,
    /// One filter per channel.
    Depthwise(ConvGeometry),
    /// Any other ungrouped conv (im2col + gemm).
    Dense(ConvGeometry),
}

impl TrainConv {
    fn forward(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        match self {
            Self::Pointwise => Pointwise.cpu_fwd(xs, xl, ws, wl),
            Self::Depthwise(p) => depthwise::Forward(*p).cpu_fwd(xs, xl, ws, wl),
            Self::Dense(p) => DenseConv(*p).cpu_fwd(xs, xl, ws, wl),
        }
    }

    /// The conv's gradients; the input's only when `input_grad` (the dense op skips it
    /// otherwise, the others compute it anyway).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        z: &Tensor,
        dz: &Tensor,
        input_grad: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match self {
            Self::Pointwise => Pointwise.bwd(x, w, z, dz),
            Self::Depthwise(p) => depthwise::Forward(*p).bwd(x, w, z, dz),
            Self::Dense(p) => DenseConv(*p).grads(x, w, dz, input_grad),
        }
    }
}

/// (x, conv weight, [bn weight; bn bias] (2, C)) -> activation(bn(conv(x))).
struct ConvBnAct {
    conv: TrainConv,
    bn: batch_norm_train::Forward,
    /// The conv output, for the backward.
    saved: Mutex<Option<Tensor>>,
}

impl CustomOp3 for ConvBnAct {
    fn name(&self) -> &'static str {
        "conv-batch-norm-act-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (zs, zshape) = self.conv.forward(xs, xl, ws, wl)?;
        let zl = Layout::contiguous(&zshape);
        let (gamma, beta) = (pl.narrow(0, 0, 1)?, pl.narrow(0, 1, 1)?);
        let out = self.bn.cpu_fwd(&zs, &zl, ps, &gamma, ps, &beta)?;
        let z = into_tensor(zs, zshape)?;
        *self.saved.lock().expect("conv output lock") = Some(z);
        Ok(out)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, params, res, grad, x.track_op())
    }
}

impl ConvBnAct {
    /// The node's gradients, the input's only when `input_grad` is set (or the conv
    /// computes it anyway); a chain sets it for every layer but its first.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        input_grad: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(z) = self.saved.lock().expect("conv output lock").clone() else {
            candle_core::bail!("conv-bn backward before its forward");
        };
        let (gamma, beta) = (params.get(0)?, params.get(1)?);
        let (dz, dgamma, dbeta) = self.bn.bwd(&z, &gamma, &beta, res, grad)?;
        let Some(dz) = dz else {
            candle_core::bail!("batch norm backward gave no input gradient");
        };
        let (dx, dw) = self.conv.backward(x, w, &z, &dz, input_grad)?;
        let dparams = match (dgamma, dbeta) {
            (Some(g), Some(b)) => Some(Tensor::stack(&[g, b], 0)?),
            _ => None,
        };
        Ok((dx, dw, dparams))
    }
}

/// Whether [`conv_bn_act_train`] runs for this input, conv and activation.
pub fn supported(x: &Tensor, w: &Tensor, conv: TrainConv, activation: Activation) -> bool {
    let conv_op = match conv {
        TrainConv::Pointwise => pointwise::supported(x),
        TrainConv::Depthwise(_) => depthwise::custom_op_for(x),
        TrainConv::Dense(_) => dense_conv::supported(x, w),
    };
    conv_op
        && batch_norm_train::supported(x)
        && batch_norm_train::fuses(activation)
        && x.dtype() == w.dtype()
}

/// `activation(batch_norm(conv(x, w)))` with batch statistics, as one node; returns the
/// output and the statistics (for the running averages).
pub fn conv_bn_act_train(
    x: &Tensor,
    w: &Tensor,
    conv: TrainConv,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    activation: Activation,
) -> Result<(Tensor, BatchStats)> {
    let (bn, slot) = batch_norm_train::Forward::new(eps, activation)?;
    let dt = x.dtype();
    let params = Tensor::stack(&[gamma.to_dtype(dt)?, beta.to_dtype(dt)?], 0)?;
    let op = ConvBnAct {
        conv,
        bn,
        saved: Mutex::new(None),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &params, op)?;
    Ok((y, batch_norm_train::stats_of(&slot)?))
}

/// One conv-BN-activation layer of a chain: the conv weight, its kind, the norm's affine
/// weight and bias, and the activation.
pub struct ChainLayer<'a> {
    pub weight: &'a Tensor,
    pub conv: TrainConv,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub activation: Activation,
}

/// (x, every conv weight flattened and concatenated, every [gamma; beta] flattened and
/// concatenated) -> the last layer's output. Runs the layers' [`ConvBnAct`] ops in turn
/// and their backwards in reverse, handing each input gradient straight to the layer
/// before.
struct ConvBnChain {
    layers: Vec<ConvBnAct>,
    /// Per layer: the weight's shape and offset in the flat weights, the channel count
    /// and offset of its (2, C) block in the flat norm parameters.
    weights: Vec<(Shape, usize)>,
    params: Vec<(usize, usize)>,
    /// The outputs of every layer but the last (the inputs of the layers after them).
    saved: Mutex<Vec<Tensor>>,
}

/// A CPU storage the op computed, as a tensor it keeps for the backward (moved, not copied).
fn into_tensor(s: CpuStorage, shape: Shape) -> Result<Tensor> {
    match s {
        CpuStorage::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        other => candle_core::bail!("conv-bn op: {:?} is not supported", other.dtype()),
    }
}

impl CustomOp3 for ConvBnChain {
    fn name(&self) -> &'static str {
        "conv-batch-norm-act-chain-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let mut outputs: Vec<(CpuStorage, Shape)> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (w_shape, w_at) = &self.weights[i];
            let (c, p_at) = self.params[i];
            let wli = Layout::contiguous_with_offset(w_shape, wl.start_offset() + w_at);
            let pli = Layout::contiguous_with_offset((2, c), pl.start_offset() + p_at);
            let out = match outputs.last() {
                None => layer.cpu_fwd(xs, xl, ws, &wli, ps, &pli)?,
                Some((prev, shape)) => {
                    layer.cpu_fwd(prev, &Layout::contiguous(shape), ws, &wli, ps, &pli)?
                }
            };
            outputs.push(out);
        }
        let Some(last) = outputs.pop() else {
            candle_core::bail!("conv-bn chain of no layers");
        };
        let saved = outputs
            .into_iter()
            .map(|(s, shape)| into_tensor(s, shape))
            .collect::<Result<Vec<_>>>()?;
        *self.saved.lock().expect("chain outputs lock") = saved;
        Ok(last)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("chain outputs lock").clone();
        if saved.len() + 1 != self.layers.len() {
            candle_core::bail!("conv-bn chain backward before its forward");
        }
        let n = self.layers.len();
        let mut grad = Some(grad.clone());
        let mut dws = vec![None; n];
        let mut dps = vec![None; n];
        for i in (0..n).rev() {
            let Some(g) = grad else {
                candle_core::bail!(
                    "conv-bn layer {} of the chain gave no input gradient",
                    i + 1
                );
            };
            let input = if i == 0 { x } else { &saved[i - 1] };
            let output = if i + 1 == n { res } else { &saved[i] };
            let (w_shape, w_at) = &self.weights[i];
            let w = weights
                .narrow(0, *w_at, w_shape.elem_count())?
                .reshape(w_shape)?;
            let (c, p_at) = self.params[i];
            let p = params.narrow(0, p_at, 2 * c)?.reshape((2, c))?;
            let need_dx = i > 0 || x.track_op();
            let (dx, dw, dp) = self.layers[i].backward(input, &w, &p, output, &g, need_dx)?;
            let (Some(dw), Some(dp)) = (dw, dp) else {
                candle_core::bail!("conv-bn layer {i} of the chain gave no parameter gradient");
            };
            grad = dx;
            dws[i] = Some(dw.flatten_all()?);
            dps[i] = Some(dp.flatten_all()?);
        }
        let cat = |parts: Vec<Option<Tensor>>| -> Result<Tensor> {
            Tensor::cat(&parts.into_iter().flatten().collect::<Vec<_>>(), 0)
        };
        Ok((grad, Some(cat(dws)?), Some(cat(dps)?)))
    }
}

/// The layers of `layers` as one node, each `activation(batch_norm(conv(·)))` with batch
/// statistics; returns the output and each layer's statistics (for the running
/// averages). The caller checks [`supported`] for each layer first.
pub fn conv_bn_chain_train(
    x: &Tensor,
    layers: &[ChainLayer],
    eps: f64,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let dt = x.dtype();
    let mut ops = Vec::with_capacity(layers.len());
    let mut slots = Vec::with_capacity(layers.len());
    let (mut weights, mut params) = (Vec::new(), Vec::new());
    let (mut flat_w, mut flat_p) = (Vec::new(), Vec::new());
    let (mut w_at, mut p_at) = (0, 0);
    for layer in layers {
        let (bn, slot) = batch_norm_train::Forward::new(eps, layer.activation)?;
        ops.push(ConvBnAct {
            conv: layer.conv,
            bn,
            saved: Mutex::new(None),
        });
        slots.push(slot);
        let (gamma, beta) = (layer.gamma, layer.beta);
        let c = gamma.elem_count();
        weights.push((layer.weight.shape().clone(), w_at));
        params.push((c, p_at));
        w_at += layer.weight.elem_count();
        p_at += 2 * c;
        flat_w.push(layer.weight.to_dtype(dt)?.flatten_all()?);
        flat_p.push(gamma.to_dtype(dt)?);
        flat_p.push(beta.to_dtype(dt)?);
    }
    let op = ConvBnChain {
        layers: ops,
        weights,
        params,
        saved: Mutex::new(Vec::new()),
    };
    let y = x
        .contiguous()?
        .apply_op3(&Tensor::cat(&flat_w, 0)?, &Tensor::cat(&flat_p, 0)?, op)?;
    let stats = slots
        .iter()
        .map(batch_norm_train::stats_of)
        .collect::<Result<Vec<_>>>()?;
    Ok((y, stats))
}
