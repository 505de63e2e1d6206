//! SGD (momentum, Nesterov) and AdamW with PyTorch's update rules, per-parameter weight
//! decay (1-D parameters, i.e. norm weights and biases, get `WEIGHT_DECAY_NORM`),
//! a bias learning-rate factor, and global gradient-norm clipping. The state (momentum
//! and Adam moments, step count) is exposed as named tensors for checkpoints.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use crate::config::{Config, ConfigError, OptimizerName};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Sgd { momentum: f64, nesterov: bool },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

pub struct Param {
    pub name: String,
    pub var: Var,
    pub weight_decay: f64,
    pub lr_factor: f64,
}

pub struct Optimizer {
    pub kind: Kind,
    pub params: Vec<Param>,
    /// Per parameter: SGD momentum buffer, or Adam's (m, v).
    state: Vec<Vec<Tensor>>,
    step: u64,
    clip_norm: Option<f64>,
}

impl Optimizer {
    pub fn new(kind: Kind, params: Vec<Param>, clip_norm: Option<f64>) -> Self {
        let n = params.len();
        Self {
            kind,
            params,
            state: (0..n).map(|_| Vec::new()).collect(),
            step: 0,
            clip_norm,
        }
    }

    pub fn from_config(
        cfg: &Config,
        vars: Vec<(String, Var)>,
    ) -> std::result::Result<Self, ConfigError> {
        let s = &cfg.solver;
        let kind = match s.optimizer {
            OptimizerName::Sgd => Kind::Sgd {
                momentum: s.momentum,
                nesterov: s.nesterov,
            },
            OptimizerName::AdamW => {
                if s.betas.len() != 2 {
                    return Err(format!("SOLVER.BETAS needs 2 values, got {:?}", s.betas).into());
                }
                Kind::AdamW {
                    beta1: s.betas[0],
                    beta2: s.betas[1],
                    eps: 1e-8,
                }
            }
        };
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let one_d = var.rank() <= 1;
                Param {
                    weight_decay: if one_d {
                        s.weight_decay_norm
                    } else {
                        s.weight_decay
                    },
                    lr_factor: if name.ends_with("bias") {
                        s.bias_lr_factor
                    } else {
                        1.0
                    },
                    name,
                    var,
                }
            })
            .collect();
        let clip = s
            .clip_gradients
            .enabled
            .then_some(s.clip_gradients.clip_value);
        Ok(Self::new(kind, params, clip))
    }

    /// The optimised variables, in a fixed order (the same on every rank).
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// One update with learning rate `lr`; returns the global gradient L2 norm (before
    /// clipping) as an f64 scalar on the parameters' device. Parameters without a gradient
    /// are left alone.
    ///
    /// Nothing is read to the host: the norm and the clipping factor stay on the device,
    /// so that on a GPU the step queues its kernels without waiting, and the caller reads
    /// the norm with the losses in the step's one read.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<Tensor> {
        let gs: Vec<Option<&Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()))
            .collect();
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        // The squared norms summed in f64.
        let squares = gs
            .iter()
            .flatten()
            .map(|g| g.sqr()?.sum_all()?.to_dtype(DType::F64))
            .collect::<Result<Vec<_>>>()?;
        let norm = if squares.is_empty() {
            Tensor::zeros((), DType::F64, &device)?
        } else {
            Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?
        };
        // PyTorch's `clip_grad_norm_`: every gradient times min(1, max / (norm + 1e-6)).
        // Cast once to the parameters' dtype, multiplied into each gradient below.
        let dtype = self.params.first().map_or(DType::F32, |p| p.var.dtype());
        let clip = match self.clip_norm {
            Some(max) => Some(
                (norm.affine(1.0, 1e-6)?.recip()? * max)?
                    .minimum(1.0)?
                    .to_dtype(dtype)?,
            ),
            None => None,
        };
        self.step += 1;
        let t = self.step as i32;
        for (i, g) in gs.into_iter().enumerate() {
            let Some(g) = g else { continue };
            let p = &self.params[i];
            // Gradients carry autograd history back into this step's activations; state
            // built from them would keep every step's graph alive (a leak of ~1 GB/step).
            let g = g.detach();
            let g = match &clip {
                Some(c) => g.broadcast_mul(&c.to_dtype(g.dtype())?)?,
                None => g,
            };
            let lr_p = lr * p.lr_factor;
            // Detached too: `w * decay` would otherwise record the variable as an input,
            // and the momentum buffer built from it would chain every step's buffer to
            // the previous one (a leak of a few parameter-sized tensors per step).
            let w = &p.var.as_tensor().detach();
            match self.kind {
                Kind::Sgd { momentum, nesterov } => {
                    let g = if p.weight_decay != 0.0 {
                        (g + (w * p.weight_decay)?)?
                    } else {
                        g
                    };
                    let d = if momentum != 0.0 {
                        let buf = match self.state[i].first() {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        self.state[i] = vec![buf.clone()];
                        if nesterov {
                            (g + (buf * momentum)?)?
                        } else {
                            buf
                        }
                    } else {
                        g
                    };
                    p.var.set(&(w - (d * lr_p)?)?)?;
                }
                Kind::AdamW { beta1, beta2, eps } => {
                    let w = if p.weight_decay != 0.0 {
                        (w * (1.0 - lr_p * p.weight_decay))?
                    } else {
                        w.clone()
                    };
                    let (m, v) = match self.state[i].as_slice() {
                        [m, v] => (m.clone(), v.clone()),
                        _ => (g.zeros_like()?, g.zeros_like()?),
                    };
                    let m = ((m * beta1)? + (&g * (1.0 - beta1))?)?;
                    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    let upd = (mhat / (vhat.sqrt()? + eps)?)?;
                    p.var.set(&(w - (upd * lr_p)?)?)?;
                    self.state[i] = vec![m, v];
                }
            }
        }
        Ok(norm)
    }

    /// `optimizer.{param}.{0,1}` buffers and `optimizer.step`.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (p, st) in self.params.iter().zip(&self.state) {
            for (k, t) in st.iter().enumerate() {
                out.push((format!("optimizer.{}.{k}", p.name), t.clone()));
            }
        }
        let dev = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.push((
            "optimizer.step".to_string(),
            Tensor::new(&[self.step as f64], &dev)?,
        ));
        Ok(out)
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (p, st) in self.params.iter().zip(self.state.iter_mut()) {
            st.clear();
            let mut k = 0;
            while let Some(t) = tensors.get(&format!("optimizer.{}.{k}", p.name)) {
                st.push(t.to_device(p.var.device())?.to_dtype(p.var.dtype())?);
                k += 1;
            }
        }
        if let Some(s) = tensors.get("optimizer.step") {
            self.step = crate::ops::host::to_vec1::<f64>(s)?
                .first()
                .copied()
                .unwrap_or(0.0) as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grads_for(v: &Var, g: &[f32]) -> GradStore {
        // d/dv sum(v * g) = g.
        let gt = Tensor::new(g, &Device::Cpu).unwrap();
        (v.as_tensor() * gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn sgd_momentum_nesterov_and_clipping_follow_pytorch() {
        let v = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let p = Param {
            name: "w".into(),
            var: v.clone(),
            weight_decay: 0.1,
            lr_factor: 1.0,
        };
        let mut o = Optimizer::new(
            Kind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            vec![p],
            None,
        );
        o.step(&grads_for(&v, &[0.5, 0.5]), 0.1).unwrap();
        // g = 0.5 + 0.1 * w = [0.6, 0.3]; buf = g; w -= 0.1 * buf.
        let w: Vec<f32> = v.to_vec1().unwrap();
        assert!(
            (w[0] - 0.94).abs() < 1e-6 && (w[1] + 2.03).abs() < 1e-6,
            "{w:?}"
        );
        o.step(&grads_for(&v, &[0.5, 0.5]), 0.1).unwrap();
        // g = [0.594, 0.297]; buf = 0.9 * [0.6, 0.3] + g = [1.134, 0.567].
        let w2: Vec<f32> = v.to_vec1().unwrap();
        assert!((w2[0] - (0.94 - 0.1134)).abs() < 1e-6, "{w2:?}");
        // State carries no autograd history: with weight decay it used to record the
        // variable, chaining each step's buffer to the last (a leak per step).
        assert!(o.state.iter().flatten().all(|t| !t.track_op()));

        let v = Var::new(&[0.0f32, 0.0], &Device::Cpu).unwrap();
        let p = Param {
            name: "w".into(),
            var: v.clone(),
            weight_decay: 0.0,
            lr_factor: 1.0,
        };
        let mut o = Optimizer::new(
            Kind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            vec![p],
            Some(1.0),
        );
        let norm: f64 = o
            .step(&grads_for(&v, &[3.0, 4.0]), 1.0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        // Clipped g = [0.6, 0.8]; nesterov: d = g + 0.9 * buf = 1.9 g.
        let w: Vec<f32> = v.to_vec1().unwrap();
        assert!(
            (w[0] + 1.14).abs() < 1e-4 && (w[1] + 1.52).abs() < 1e-4,
            "{w:?}"
        );
        let st = o.state_tensors().unwrap();
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let v = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let p = Param {
            name: "w".into(),
            var: v.clone(),
            weight_decay: 0.0,
            lr_factor: 1.0,
        };
        let mut o = Optimizer::new(
            Kind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            vec![p],
            None,
        );
        o.step(&grads_for(&v, &[0.3]), 0.01).unwrap();
        let w: Vec<f32> = v.to_vec1().unwrap();
        assert!((w[0] - 0.99).abs() < 1e-6, "{w:?}");
    }
}
