//! Batch normalisation with PyTorch semantics, and its frozen variant.
//!
//! `BatchNorm2d` normalises with batch statistics in training and updates its running
//! statistics (momentum 0.1, unbiased variance) as `torch.nn.BatchNorm2d` does;
//! `FrozenBatchNorm2d` is a fixed per-channel affine from the running statistics, as
//! Detectron2 uses for frozen or small-batch backbones. Both keep PyTorch's key names
//! (`weight`, `bias`, `running_mean`, `running_var`), so the same checkpoint loads into
//! either. `SyncBN` is `BatchNorm2d` whose batch statistics are summed over the ranks
//! of a data-parallel run (with their gradients), so that they are those of the global
//! batch; in a single process it is plain BN.

use super::autocast::in_f32;
use crate::ops::batch_norm_train::{self, BatchStats};
use crate::ops::conv_bn_train::{self, TrainConv};
use crate::ops::Activation;
use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

pub(crate) const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    BN,
    FrozenBN,
    SyncBN,
}

fn per_channel(t: &Tensor) -> Result<Tensor> {
    t.reshape((1, (), 1, 1))
}

/// The four tensors both variants share. They are views of store variables, so a
/// checkpoint loaded after construction is seen by the module.
#[derive(Debug, Clone)]
struct BnTensors {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BnTensors {
    fn new(channels: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            running_mean: vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?,
            running_var: vb.get_with_hints(channels, "running_var", Init::Const(1.0))?,
        })
    }

    /// The eval-mode affine `x * scale + shift`, per channel.
    fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = (&self.weight / (&self.running_var + EPS)?.sqrt()?)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        Ok((scale, shift))
    }

    fn apply_affine(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.eval_affine()?;
        x.broadcast_mul(&per_channel(&scale)?)?
            .broadcast_add(&per_channel(&shift)?)
    }
}

#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    t: BnTensors,
    /// Statistics over every rank's batch (SyncBN).
    sync: bool,
}

impl BatchNorm2d {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            t: BnTensors::new(channels, &vb)?,
            sync: false,
        })
    }

    /// SyncBN: batch statistics summed over the ranks of the process group.
    pub fn new_sync(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            sync: true,
            ..Self::new(channels, vb)?
        })
    }

    /// Whether training statistics cross ranks now (SyncBN in a process group): the fused
    /// single-process kernels do not apply then.
    pub fn synced(&self) -> bool {
        self.sync && crate::distributed::in_group()
    }

    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        self.t.eval_affine()
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, Activation::Identity)
    }

    /// `activation(bn(x))`; in training on CPU and CUDA the activation runs inside the
    /// batch norm op when it [`fuses`](batch_norm_train::fuses).
    ///
    /// An f16/bf16 input (autocast) is normalised in f32, with f32 statistics, and the
    /// output handed back in the input's dtype, as PyTorch's batch norm does: by the CUDA
    /// kernels themselves in training, elsewhere through a conversion to f32 and back.
    pub fn forward_act(&self, x: &Tensor, train: bool, activation: Activation) -> Result<Tensor> {
        if matches!(x.dtype(), DType::F16 | DType::BF16) && !self.cuda_fused(x, train, activation) {
            return in_f32(x, |x| self.forward_act(x, train, activation));
        }
        if !train {
            return activation.apply(&self.t.apply_affine(x)?);
        }
        if self.synced() {
            return activation.apply(&self.forward_train_sync(x)?);
        }
        let (n, _, h, w) = x.dims4()?;
        check_batch(n * h * w)?;
        if batch_norm_train::supported(x) && batch_norm_train::fuses(activation) {
            let (y, stats) = batch_norm_train::batch_norm_train(
                x,
                &self.t.weight,
                &self.t.bias,
                EPS,
                activation,
            )?;
            self.record(stats)?;
            return Ok(y);
        }
        #[cfg(feature = "cuda")]
        if self.cuda_fused(x, train, activation) {
            let (y, mean, var) = crate::ops::batch_norm_train_cuda::batch_norm_train_cuda(
                x,
                &self.t.weight,
                &self.t.bias,
                EPS,
                activation,
            )?;
            self.update_running(&mean, &var, n * h * w)?;
            return Ok(y);
        }
        activation.apply(&self.forward_train_composed(x)?)
    }

    /// Whether training runs the CUDA kernels with `activation` inside (any float dtype).
    fn cuda_fused(&self, x: &Tensor, train: bool, activation: Activation) -> bool {
        #[cfg(feature = "cuda")]
        {
            train
                && !self.synced()
                && crate::ops::batch_norm_train_cuda::supported(x)
                && batch_norm_train::fuses(activation)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (x, train, activation);
            false
        }
    }

    /// Training `activation(bn(conv(x, weight)))` as one autograd node; the caller checks
    /// [`conv_bn_train::supported`](conv_bn_train::supported) first.
    pub(crate) fn train_after_conv(
        &self,
        x: &Tensor,
        weight: &Tensor,
        conv: TrainConv,
        activation: Activation,
    ) -> Result<Tensor> {
        let (y, stats) = conv_bn_train::conv_bn_act_train(
            x,
            weight,
            conv,
            (&self.t.weight, &self.t.bias),
            EPS,
            activation,
        )?;
        self.record(stats)?;
        Ok(y)
    }

    /// The affine parameters (weight, bias), for ops that run the norm themselves.
    pub fn affine_params(&self) -> (&Tensor, &Tensor) {
        (&self.t.weight, &self.t.bias)
    }

    /// Folds one batch's statistics into the running averages.
    pub fn record(&self, stats: BatchStats) -> Result<()> {
        check_batch(stats.count)?;
        let (c, count) = (stats.mean.len(), stats.count);
        let (dev, dt) = (self.t.running_mean.device(), self.t.running_mean.dtype());
        let mean = Tensor::from_vec(stats.mean, c, dev)?.to_dtype(dt)?;
        let var = Tensor::from_vec(stats.var, c, dev)?.to_dtype(dt)?;
        self.update_running(&mean, &var, count)
    }

    /// Training BN from stock ops, for devices and dtypes the fused op does not cover
    /// (and as its reference in tests).
    pub fn forward_train_composed(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let count = n * h * w;
        let xt = x.transpose(0, 1)?.reshape((c, count))?;
        let mean = xt.mean(D::Minus1)?;
        let centered = xt.broadcast_sub(&mean.unsqueeze(1)?)?;
        let var = centered.sqr()?.mean(D::Minus1)?;
        self.update_running(&mean, &var, count)?;
        let scale = (&self.t.weight * (&var + EPS)?.sqrt()?.recip()?)?;
        let normed = centered
            .broadcast_mul(&scale.unsqueeze(1)?)?
            .broadcast_add(&self.t.bias.unsqueeze(1)?)?;
        normed.reshape((c, n, h, w))?.transpose(0, 1)?.contiguous()
    }

    /// Training BN with the mean and variance of the global batch: the per-channel sums
    /// are all-reduced (with gradients), in two passes like the single-process variance
    /// (centred), so the result matches BN over the concatenated batch. It runs in f64,
    /// as the fused single-process kernel accumulates: with f32 sums over the batch the
    /// gradients of a MobileNetV2 step drifted from it by 1.5e-5 (up to 0.7% in single
    /// tensors), against 1.6e-7 in f64.
    pub fn forward_train_sync(&self, x: &Tensor) -> Result<Tensor> {
        use crate::distributed::{all_reduce_autograd, global_count};
        let (n, c, h, w) = x.dims4()?;
        let local = n * h * w;
        let count = global_count(local, "SyncBN count")?;
        check_batch(count)?;
        let xt = x
            .transpose(0, 1)?
            .reshape((c, local))?
            .to_dtype(DType::F64)?;
        let mean = (all_reduce_autograd(&xt.sum(D::Minus1)?, "SyncBN mean")? / count as f64)?;
        let centered = xt.broadcast_sub(&mean.unsqueeze(1)?)?;
        let var = (all_reduce_autograd(&centered.sqr()?.sum(D::Minus1)?, "SyncBN variance")?
            / count as f64)?;
        self.update_running(&mean, &var, count)?;
        let weight = self.t.weight.to_dtype(DType::F64)?;
        let scale = (weight * (&var + EPS)?.sqrt()?.recip()?)?;
        let bias = self.t.bias.to_dtype(DType::F64)?;
        let normed = centered
            .broadcast_mul(&scale.unsqueeze(1)?)?
            .broadcast_add(&bias.unsqueeze(1)?)?
            .to_dtype(x.dtype())?;
        normed.reshape((c, n, h, w))?.transpose(0, 1)?.contiguous()
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let dt = self.t.running_mean.dtype();
        let (mean, var) = (mean.detach().to_dtype(dt)?, var.detach().to_dtype(dt)?);
        let unbiased = (var * (count as f64 / (count - 1) as f64))?;
        let new_mean = ((&self.t.running_mean * (1.0 - MOMENTUM))? + (mean * MOMENTUM)?)?;
        let new_var = ((&self.t.running_var * (1.0 - MOMENTUM))? + (unbiased * MOMENTUM)?)?;
        set_in_place(&self.t.running_mean, &new_mean)?;
        set_in_place(&self.t.running_var, &new_var)
    }
}

/// Batch statistics need two values per channel at least (PyTorch's rule).
fn check_batch(count: usize) -> Result<()> {
    if count < 2 {
        candle_core::bail!(
            "BatchNorm2d in training needs more than one value per channel, got {count}"
        );
    }
    Ok(())
}

/// Writes `value` into the storage behind `buffer`, which every holder shares.
fn set_in_place(buffer: &Tensor, value: &Tensor) -> Result<()> {
    if !buffer.is_variable() {
        candle_core::bail!(
            "BatchNorm2d running statistics must be variables of the parameter store"
        );
    }
    Var::from_tensor(buffer)?.set(&value.to_dtype(buffer.dtype())?)
}

#[derive(Debug, Clone)]
pub struct FrozenBatchNorm2d {
    t: BnTensors,
}

impl FrozenBatchNorm2d {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let t = BnTensors::new(channels, &vb)?;
        // Detached views share storage: loads are seen, gradients never flow.
        Ok(Self {
            t: BnTensors {
                weight: t.weight.detach(),
                bias: t.bias.detach(),
                running_mean: t.running_mean.detach(),
                running_var: t.running_var.detach(),
            },
        })
    }

    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        self.t.eval_affine()
    }

    /// In f32 for an f16/bf16 input, handed back in its dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        in_f32(x, |x| self.t.apply_affine(x))
    }
}

/// A norm layer chosen by config.
#[derive(Debug, Clone)]
pub enum Norm {
    Batch(BatchNorm2d),
    Frozen(FrozenBatchNorm2d),
}

impl Norm {
    pub fn new(kind: NormKind, channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::BN => Self::Batch(BatchNorm2d::new(channels, vb)?),
            NormKind::SyncBN => Self::Batch(BatchNorm2d::new_sync(channels, vb)?),
            NormKind::FrozenBN => Self::Frozen(FrozenBatchNorm2d::new(channels, vb)?),
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, Activation::Identity)
    }

    /// `activation(norm(x))`, fused where the norm's op allows it; in f32 for an
    /// f16/bf16 input, handed back in its dtype.
    pub fn forward_act(&self, x: &Tensor, train: bool, activation: Activation) -> Result<Tensor> {
        match self {
            Self::Batch(bn) => bn.forward_act(x, train, activation),
            Self::Frozen(bn) => in_f32(x, |x| activation.apply(&bn.forward(x)?)),
        }
    }

    /// The affine this norm applies at inference, for folding into the preceding conv.
    pub fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Batch(bn) => bn.eval_affine(),
            Self::Frozen(bn) => bn.eval_affine(),
        }
    }
}
