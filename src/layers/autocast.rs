//! Mixed-precision compute, as PyTorch's `torch.autocast`: inside a [`Scope`], the layers
//! whose arithmetic gains from a narrow dtype (convolutions, linear layers) run in the
//! scope's dtype, with their f32 weights cast on the fly, so that the gradient flows back
//! through the cast into the f32 master weights the optimizer updates. What needs the
//! range or the precision stays in f32: batch-norm statistics (the norm computes in f32
//! and hands back its input's dtype), ROIAlign, and everything after the heads, which
//! return their predictions in f32 ([`to_f32`]) for the losses and post-processing.
//!
//! The setting belongs to the thread, as PyTorch's does: the trainer opens a scope around
//! the training forward only; evaluation, inference and export run outside any scope,
//! in the weights' dtype.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static COMPUTE: Cell<Option<DType>> = const { Cell::new(None) };
}

/// While alive, layers on this thread compute in `dtype` (`None`: in their weights'
/// dtype); dropping it restores the setting it replaced, so scopes nest.
#[must_use = "the scope ends when this value is dropped"]
pub struct Scope {
    previous: Option<DType>,
}

impl Scope {
    /// `dtype` must be a float dtype narrower than f32 (f16 or bf16) or `None`.
    pub fn new(dtype: Option<DType>) -> Result<Self> {
        if let Some(dt) = dtype {
            if !matches!(dt, DType::F16 | DType::BF16) {
                candle_core::bail!("autocast computes in f16 or bf16, not {dt:?}");
            }
        }
        Ok(Self {
            previous: COMPUTE.with(|c| c.replace(dtype)),
        })
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// The compute dtype of the open scope, if any.
pub fn compute_dtype() -> Option<DType> {
    COMPUTE.with(Cell::get)
}

/// `t` in the compute dtype, for an input or weight of a layer that runs narrow: float
/// tensors of another width are cast (f64 is left alone, as PyTorch leaves it), anything
/// else, and everything outside a scope, is returned as it is.
pub fn cast(t: &Tensor) -> Result<Tensor> {
    match compute_dtype() {
        Some(dt)
            if t.dtype() != dt && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) =>
        {
            t.to_dtype(dt)
        }
        _ => Ok(t.clone()),
    }
}

/// A linear layer under the scope, `x W^T + b`, with the input, weight and bias cast to
/// the compute dtype.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let bias = bias.map(cast).transpose()?;
    crate::ops::linear(&cast(x)?, &cast(weight)?, bias.as_ref())
}

/// `t` in f32 when it is f16 or bf16: where predictions leave the network, and where an
/// op that needs f32 range or accumulation gets a narrow input.
pub fn to_f32(t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => t.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// `f(x in f32)` handed back in `x`'s dtype: an f32-only computation on a narrow input,
/// as PyTorch's batch norm takes f16 activations with f32 statistics.
pub fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        _ => f(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn scopes_nest_and_cast_only_float32_and_the_other_half_width() {
        let f32s = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        let f64s = Tensor::ones(3, DType::F64, &Device::Cpu).unwrap();
        let ints = Tensor::ones(3, DType::U32, &Device::Cpu).unwrap();
        assert_eq!(cast(&f32s).unwrap().dtype(), DType::F32, "no scope");
        {
            let _bf = Scope::new(Some(DType::BF16)).unwrap();
            assert_eq!(cast(&f32s).unwrap().dtype(), DType::BF16);
            assert_eq!(cast(&f64s).unwrap().dtype(), DType::F64);
            assert_eq!(cast(&ints).unwrap().dtype(), DType::U32);
            {
                let _off = Scope::new(None).unwrap();
                assert_eq!(cast(&f32s).unwrap().dtype(), DType::F32);
                let _f16 = Scope::new(Some(DType::F16)).unwrap();
                let b = f32s.to_dtype(DType::BF16).unwrap();
                assert_eq!(cast(&b).unwrap().dtype(), DType::F16);
            }
            assert_eq!(compute_dtype(), Some(DType::BF16), "inner scopes restored");
        }
        assert_eq!(compute_dtype(), None);
        assert!(Scope::new(Some(DType::F64)).is_err());
        assert!(Scope::new(Some(DType::U8)).is_err());
    }

    /// Conv-BN-ReLU6 layers (trained BN, and frozen BN) under autocast: the output is
    /// narrow and within the narrow dtype's rounding of the f32 layer's, BN's running
    /// statistics stay f32 and match, and the weight gradient reaches the f32 weight.
    #[test]
    fn conv_bn_layers_compute_narrow_and_keep_f32_statistics() {
        use crate::layers::{Activation, Conv2dConfig, NormKind};
        use candle_nn::{VarBuilder, VarMap};
        for (norm, dt, tol) in [
            (NormKind::BN, DType::BF16, 5e-2),
            (NormKind::BN, DType::F16, 8e-3),
            (NormKind::FrozenBN, DType::BF16, 5e-2),
            (NormKind::FrozenBN, DType::F16, 8e-3),
        ] {
            let layer = |map: &VarMap| {
                let vb = VarBuilder::from_varmap(map, DType::F32, &Device::Cpu);
                Conv2dConfig::new(8, 16, 3)
                    .with_norm(Some(norm))
                    .with_activation(Activation::ReLU6)
                    .init(vb.pp("c"))
                    .unwrap()
            };
            let (ma, mb) = (VarMap::new(), VarMap::new());
            let (a, b) = (layer(&ma), layer(&mb));
            // The same weights, and statistics a frozen norm uses, from a fixed sequence.
            let mut seed = 12345u64;
            let mut uniform = |shape: &candle_core::Shape, lo: f32, hi: f32| {
                let v: Vec<f32> = (0..shape.elem_count())
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        lo + (hi - lo) * (seed >> 40) as f32 / (1u64 << 24) as f32
                    })
                    .collect();
                Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
            };
            let names: Vec<String> = ma
                .data()
                .lock()
                .unwrap()
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for name in &names {
                let va = ma.data().lock().unwrap()[name].clone();
                let t = if name.ends_with("running_var") {
                    uniform(va.shape(), 0.5, 2.0)
                } else {
                    uniform(va.shape(), -0.8, 0.8)
                };
                va.set(&t).unwrap();
                mb.data().lock().unwrap()[name].set(&t).unwrap();
            }
            let x = uniform(&candle_core::Shape::from((2, 8, 10, 10)), -2.0, 2.0);
            let reference = a.forward_t(&x, true).unwrap();
            let narrow = {
                let _s = Scope::new(Some(dt)).unwrap();
                b.forward_t(&x, true).unwrap()
            };
            assert_eq!(narrow.dtype(), dt, "{norm:?}");
            let err = (to_f32(&narrow).unwrap() - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let what = format!("{norm:?} {dt:?}: max error {err}");
            assert!(err > 0.0 && err < tol as f32, "{what}");
            let vars = |m: &VarMap, k: &str| {
                let t = m.data().lock().unwrap()[k].as_tensor().clone();
                assert_eq!(t.dtype(), DType::F32, "{what}");
                t.to_vec1::<f32>().unwrap()
            };
            let (ra, rb) = (
                vars(&ma, "c.norm.running_mean"),
                vars(&mb, "c.norm.running_mean"),
            );
            for (p, q) in ra.iter().zip(&rb) {
                assert!(
                    (p - q).abs() < 1e-2,
                    "{what}: running mean {ra:?} vs {rb:?}"
                );
            }
            let w = mb.data().lock().unwrap()["c.weight"].clone();
            let loss = to_f32(&narrow).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            assert_eq!(g.get(w.as_tensor()).unwrap().dtype(), DType::F32, "{what}");
        }
    }

    /// The gradient of a cast weight reaches the f32 variable, in f32.
    #[test]
    fn gradients_flow_through_the_cast_to_the_f32_weight() {
        let w = Var::new(&[0.5f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let x = Tensor::new(&[1.5f32, 0.25, -4.0], &Device::Cpu).unwrap();
        let _s = Scope::new(Some(DType::BF16)).unwrap();
        let y = (cast(w.as_tensor()).unwrap() * cast(&x).unwrap()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let loss = to_f32(&y).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gw = g.get(w.as_tensor()).unwrap();
        assert_eq!(gw.dtype(), DType::F32);
        // The inputs are exact in bf16, so the gradient is x exactly.
        assert_eq!(gw.to_vec1::<f32>().unwrap(), vec![1.5, 0.25, -4.0]);
    }
}
