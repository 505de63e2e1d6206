//! A training conv -> batch norm -> activation layer as one autograd node (CPU).
//!
//! As two nodes (the conv op, then the batch norm op) the conv's output is a node of its
//! own: Candle's backward gives it a zero-filled, activation-sized gradient buffer and adds
//! the batch norm's input gradient into it before the conv's backward reads it, two
//! full passes over memory per layer for nothing. Here the conv output is kept by the op
//! (the batch norm backward needs it anyway) and its gradient goes straight from the
//! batch norm backward into the conv backward. The kernels are those of the two ops.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

use super::batch_norm_train::{self, BatchStats};
use super::depthwise::{self, DwParams};
use super::pointwise::{self, Pointwise};
use super::Activation;

/// The convolutions this node covers: those with a CPU op of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainConv {
    /// 1x1, stride 1, no padding, no groups.
    Pointwise,
    /// One filter per channel.
    Depthwise(DwParams),
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
        }
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        z: &Tensor,
        dz: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        match self {
            Self::Pointwise => Pointwise.bwd(x, w, z, dz),
            Self::Depthwise(p) => depthwise::Forward(*p).bwd(x, w, z, dz),
        }
    }
}

/// (x, conv weight, [bn weight; bn bias] (2, C)) -> activation(bn(conv(x))).
struct ConvBnAct {
    conv: TrainConv,
    bn: batch_norm_train::Forward,
    /// The conv output, for the backward.
    saved: Arc<Mutex<Option<Tensor>>>,
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
        let z = match zs {
            CpuStorage::F32(v) => Tensor::from_vec(v, zshape, &Device::Cpu)?,
            CpuStorage::F64(v) => Tensor::from_vec(v, zshape, &Device::Cpu)?,
            other => candle_core::bail!("conv-bn op: {:?} is not supported", other.dtype()),
        };
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
        let Some(z) = self.saved.lock().expect("conv output lock").clone() else {
            candle_core::bail!("conv-bn backward before its forward");
        };
        let (gamma, beta) = (params.get(0)?, params.get(1)?);
        let (dz, dgamma, dbeta) = self.bn.bwd(&z, &gamma, &beta, res, grad)?;
        let Some(dz) = dz else {
            candle_core::bail!("batch norm backward gave no input gradient");
        };
        let (dx, dw) = self.conv.backward(x, w, &z, &dz)?;
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
    };
    conv_op
        && x.device().is_cpu()
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
        saved: Arc::new(Mutex::new(None)),
    };
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &params, op)?;
    Ok((y, batch_norm_train::stats_of(&slot)?))
}
