//! SGD (momentum, Nesterov) and AdamW with PyTorch's update rules, per-parameter weight
//! decay (1-D parameters, i.e. norm weights and biases, get `WEIGHT_DECAY_NORM`),
//! a bias learning-rate factor, and global gradient-norm clipping. The state (momentum
//! and Adam moments, step count) is exposed as named tensors for checkpoints. With a
//! [`GradScaler`] (float16 training) the gradients arrive scaled: the update divides
//! them back and is skipped, on the device, when they overflowed.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use super::grad_scaler::GradScaler;
use crate::config::{AmpDtype, Config, ConfigError, OptimizerName};

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

/// Parameters updated together: those with the same dtype, weight decay and learning-rate
/// factor (in MobileNetV2 models: weights; norm weights; biases).
struct Group {
    members: Vec<usize>,
    weight_decay: f64,
    lr_factor: f64,
}

pub struct Optimizer {
    pub kind: Kind,
    pub params: Vec<Param>,
    /// Per parameter: SGD momentum buffer, or Adam's (m, v).
    state: Vec<Vec<Tensor>>,
    groups: Vec<Group>,
    /// Per group: the members of its last update and its flat state buffers, of which
    /// `state` holds views.
    flat: Vec<Option<(Vec<usize>, Vec<Tensor>)>>,
    step: u64,
    clip_norm: Option<f64>,
    scaler: Option<GradScaler>,
}

/// The tensors flattened and concatenated, in order.
fn flat(ts: impl Iterator<Item = impl std::borrow::Borrow<Tensor>>) -> Result<Tensor> {
    let parts = ts
        .map(|t| t.borrow().flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

impl Optimizer {
    /// Parameters on a GPU are updated in groups (see [`Optimizer::step`]), on the CPU one
    /// by one: there the per-tensor chain stays in cache, while flat buffers stream each
    /// of the update's ~15 passes through memory (AdamW over MobileNetV2's 3.5 M values:
    /// 24 ms grouped, 19 ms one by one on 2 cores; `benches/optimizer_step.rs`).
    pub fn new(kind: Kind, params: Vec<Param>, clip_norm: Option<f64>) -> Self {
        let on_gpu = params.first().is_some_and(|p| !p.var.device().is_cpu());
        let n = params.len();
        let mut o = Self {
            kind,
            params,
            state: (0..n).map(|_| Vec::new()).collect(),
            groups: Vec::new(),
            flat: Vec::new(),
            step: 0,
            clip_norm,
            scaler: None,
        };
        o.set_grouped(on_gpu);
        o
    }

    /// Updates parameters that share dtype, weight decay and learning-rate factor as one
    /// flat buffer (`true`), or each alone. Both give the same values bit for bit.
    pub fn set_grouped(&mut self, grouped: bool) {
        let mut groups: Vec<Group> = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let same = |g: &Group| {
                let first = &self.params[g.members[0]];
                first.var.dtype() == p.var.dtype()
                    && g.weight_decay == p.weight_decay
                    && g.lr_factor == p.lr_factor
            };
            match groups.iter_mut().find(|g| grouped && same(g)) {
                Some(g) => g.members.push(i),
                None => groups.push(Group {
                    members: vec![i],
                    weight_decay: p.weight_decay,
                    lr_factor: p.lr_factor,
                }),
            }
        }
        self.flat = (0..groups.len()).map(|_| None).collect();
        self.groups = groups;
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
        let scaled = s.amp.enabled && s.amp.dtype == AmpDtype::Float16;
        Ok(Self::new(kind, params, clip).with_grad_scaler(scaled.then(GradScaler::default)))
    }

    /// Float16 training: the gradients [`step`](Self::step) gets are those of the loss
    /// times [`loss_scale`](Self::loss_scale).
    pub fn with_grad_scaler(mut self, scaler: Option<GradScaler>) -> Self {
        self.scaler = scaler;
        self
    }

    /// The factor the caller multiplies the loss by before the backward pass (`None`:
    /// no loss scaling).
    pub fn loss_scale(&self) -> Option<f64> {
        self.scaler.as_ref().map(GradScaler::scale)
    }

    /// Completes a step once its gradient norm is on the host (the step's one read).
    /// With loss scaling, a non-finite norm means the gradients overflowed: the step
    /// left the weights and state as they were, so its count is taken back (Adam's bias
    /// correction) and the scale lowered. Returns whether the step was skipped.
    pub fn finish_step(&mut self, grad_norm: f64) -> bool {
        let Some(scaler) = &mut self.scaler else {
            return false;
        };
        let overflow = !grad_norm.is_finite();
        if overflow {
            self.step -= 1;
        }
        scaler.update(overflow);
        overflow
    }

    /// The optimised variables, in a fixed order (the same on every rank).
    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|p| p.var.clone()).collect()
    }

    /// One update with learning rate `lr`; returns the global gradient L2 norm (before
    /// clipping, after unscaling) as an f64 scalar on the parameters' device. Parameters
    /// without a gradient are left alone. With loss scaling, an update whose gradients
    /// are not all finite writes back the old weights and state (a `where` on the
    /// device), and the caller reports the norm to [`finish_step`](Self::finish_step).
    ///
    /// Nothing is read to the host: the norm and the clipping factor stay on the device,
    /// so that on a GPU the step queues its kernels without waiting, and the caller reads
    /// the norm with the losses in the step's one read.
    ///
    /// On a GPU each group's gradients, weights and state are updated as one flat buffer,
    /// so the update's arithmetic is a handful of kernels per group, not a chain of ~10
    /// per parameter tensor (~1,600 launches for MobileNetV2); what remains per tensor is
    /// a copy into the buffer and one back.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<Tensor> {
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        // Gradients carry autograd history back into this step's activations; state
        // built from them would keep every step's graph alive (a leak of ~1 GB/step).
        let gs: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()).map(Tensor::detach))
            .collect();
        let mut work = Vec::with_capacity(self.groups.len());
        for (gi, group) in self.groups.iter().enumerate() {
            let members: Vec<usize> = group
                .members
                .iter()
                .copied()
                .filter(|&i| gs[i].is_some())
                .collect();
            if !members.is_empty() {
                let g = flat(members.iter().filter_map(|&i| gs[i].as_ref()))?;
                work.push((gi, members, g));
            }
        }
        // The squared norm summed in f64 over each group's buffer.
        let norm = if work.is_empty() {
            Tensor::zeros((), DType::F64, &device)?
        } else {
            let squares = work
                .iter()
                .map(|(_, _, g)| g.to_dtype(DType::F64)?.sqr()?.sum_all())
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?
        };
        // Unscaling is a multiplication by a power of two: exact, and folded into the
        // factor the gradients are multiplied by anyway when clipping.
        let inv_scale = self.loss_scale().map(|s| 1.0 / s);
        let norm = match inv_scale {
            Some(inv) => (norm * inv)?,
            None => norm,
        };
        // Finite iff `norm * 0` is 0: an inf or NaN anywhere makes the norm inf or NaN,
        // and that times 0 NaN.
        let finite = match inv_scale {
            Some(_) => Some((&norm * 0.0)?.eq(0.0)?),
            None => None,
        };
        // PyTorch's `clip_grad_norm_`: every gradient times min(1, max / (norm + 1e-6)).
        let clip = match self.clip_norm {
            Some(max) => Some((norm.affine(1.0, 1e-6)?.recip()? * max)?.minimum(1.0)?),
            None => None,
        };
        let factor = match (&clip, inv_scale) {
            (Some(c), Some(inv)) => Some(Factor::Tensor((c * inv)?)),
            (Some(c), None) => Some(Factor::Tensor(c.clone())),
            (None, Some(inv)) => Some(Factor::Scalar(inv)),
            (None, None) => None,
        };
        self.step += 1;
        let t = self.step as i32;
        for (gi, members, g) in work {
            let g = match &factor {
                Some(Factor::Tensor(c)) => g.broadcast_mul(&c.to_dtype(g.dtype())?)?,
                Some(Factor::Scalar(f)) => (g * *f)?,
                None => g,
            };
            let (weight_decay, lr_p) = {
                let group = &self.groups[gi];
                (group.weight_decay, lr * group.lr_factor)
            };
            // Detached too: `w * decay` would otherwise record the variables as inputs,
            // and the momentum buffer built from it would chain every step's buffer to
            // the previous one (a leak of a few parameter-sized tensors per step).
            let w = flat(
                members
                    .iter()
                    .map(|&i| self.params[i].var.as_tensor().detach()),
            )?;
            // The state before this step: the update's input, and what a skipped step keeps.
            let old_state: Vec<Tensor> = match self.kind {
                Kind::Sgd { momentum: 0.0, .. } => Vec::new(),
                Kind::Sgd { .. } => self.flat_state::<1>(gi, &members, &g)?.to_vec(),
                Kind::AdamW { .. } => self.flat_state::<2>(gi, &members, &g)?.to_vec(),
            };
            let old_w = w.clone();
            let (new_w, new_state) = match self.kind {
                Kind::Sgd { momentum, nesterov } => {
                    let g = if weight_decay != 0.0 {
                        (g + (&w * weight_decay)?)?
                    } else {
                        g
                    };
                    if let [buf] = old_state.as_slice() {
                        let buf = ((buf * momentum)? + &g)?;
                        let d = if nesterov {
                            (g + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        ((w - (d * lr_p)?)?, vec![buf])
                    } else {
                        ((w - (g * lr_p)?)?, Vec::new())
                    }
                }
                Kind::AdamW { beta1, beta2, eps } => {
                    let w = if weight_decay != 0.0 {
                        (w * (1.0 - lr_p * weight_decay))?
                    } else {
                        w
                    };
                    let [m, v] = old_state.as_slice() else {
                        candle_core::bail!("AdamW keeps two state buffers per parameter");
                    };
                    let m = ((m * beta1)? + (&g * (1.0 - beta1))?)?;
                    let v = ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    let upd = (mhat / (vhat.sqrt()? + eps)?)?;
                    ((w - (upd * lr_p)?)?, vec![m, v])
                }
            };
            let (new_w, new_state) = match &finite {
                Some(ok) => {
                    let ok = ok.broadcast_as(new_w.shape())?;
                    let state = new_state
                        .iter()
                        .zip(&old_state)
                        .map(|(new, old)| ok.where_cond(new, old))
                        .collect::<Result<Vec<_>>>()?;
                    (ok.where_cond(&new_w, &old_w)?, state)
                }
                None => (new_w, new_state),
            };
            let mut offset = 0;
            for &i in &members {
                let var = &self.params[i].var;
                let n = var.elem_count();
                let part = |t: &Tensor| t.narrow(0, offset, n)?.reshape(var.shape());
                var.set(&part(&new_w)?)?;
                // Views into the group's buffers: the checkpoint's per-parameter tensors.
                self.state[i] = new_state.iter().map(part).collect::<Result<_>>()?;
                offset += n;
            }
            self.flat[gi] = Some((members, new_state));
        }
        Ok(norm)
    }

    /// The group's `K` state buffers for `members`: those of the last step when it
    /// updated the same members, else gathered from the per-parameter state, zeros where a
    /// parameter has none yet (PyTorch's first step: the momentum buffer is the gradient,
    /// which `0 * momentum + g` gives exactly; Adam's moments start at zero).
    fn flat_state<const K: usize>(
        &self,
        gi: usize,
        members: &[usize],
        g: &Tensor,
    ) -> Result<[Tensor; K]> {
        if let Some((m, bufs)) = &self.flat[gi] {
            if m == members && bufs.len() == K {
                return Ok(std::array::from_fn(|k| bufs[k].clone()));
            }
        }
        let mut out = Vec::with_capacity(K);
        for k in 0..K {
            let mut parts = Vec::with_capacity(members.len());
            for &i in members {
                let var = &self.params[i].var;
                parts.push(match self.state[i].get(k) {
                    Some(s) => s.flatten_all()?,
                    None => Tensor::zeros(var.elem_count(), g.dtype(), g.device())?,
                });
            }
            out.push(Tensor::cat(&parts, 0)?);
        }
        out.try_into()
            .map_err(|_| candle_core::Error::Msg("optimizer state count".into()))
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
        if let Some(scaler) = &self.scaler {
            for (name, v) in scaler.state() {
                out.push((
                    format!("optimizer.grad_scaler.{name}"),
                    Tensor::new(&[v], &dev)?,
                ));
            }
        }
        Ok(out)
    }

    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.flat.iter_mut().for_each(|f| *f = None);
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
        // A checkpoint without a loss scale (trained without float16) starts the scaler
        // afresh, as PyTorch's does.
        if let Some(scaler) = &mut self.scaler {
            let read = |name: &str| -> Result<Option<f64>> {
                match tensors.get(&format!("optimizer.grad_scaler.{name}")) {
                    Some(t) => Ok(crate::ops::host::to_vec1::<f64>(t)?.first().copied()),
                    None => Ok(None),
                }
            };
            if let (Some(scale), Some(tracker)) = (read("scale")?, read("growth_tracker")?) {
                scaler
                    .load_state(scale, tracker)
                    .map_err(|e| candle_core::Error::Msg(format!("optimizer.grad_scaler: {e}")))?;
            }
        }
        Ok(())
    }
}

/// What the gradients are multiplied by before the update: the clip factor and the
/// inverse loss scale, on the device, or a host scalar when only unscaling.
enum Factor {
    Tensor(Tensor),
    Scalar(f64),
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

    /// Float16 loss scaling: steps on the gradients of `scale * loss` update exactly as
    /// unscaled steps (the scale is a power of two); a step whose gradients hold an inf
    /// or a NaN leaves the weights and the state bit for bit, does not count for Adam's
    /// bias correction, and halves the scale. Grouped and one by one, with and without
    /// clipping.
    #[test]
    fn scaled_steps_match_unscaled_ones_and_overflowing_steps_change_nothing() {
        let shapes: [&[usize]; 2] = [&[4, 3], &[4]];
        let kinds = [
            Kind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            Kind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            Kind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ];
        for kind in kinds {
            for (clip, grouped) in [(None, false), (Some(0.5), false), (Some(0.5), true)] {
                let init: Vec<Tensor> = shapes
                    .iter()
                    .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
                    .collect();
                let make = |scaler: Option<GradScaler>| {
                    let vars: Vec<Var> =
                        init.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                    let params = vars
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Param {
                            name: format!("p{i}"),
                            var: v.clone(),
                            weight_decay: 0.01,
                            lr_factor: 1.0,
                        })
                        .collect();
                    let mut o = Optimizer::new(kind, params, clip).with_grad_scaler(scaler);
                    o.set_grouped(grouped);
                    (vars, o)
                };
                let (ours, mut o) = make(Some(GradScaler::new(1024.0, 2.0, 0.5, 2000)));
                let (theirs, mut r) = make(None);
                let values = |vars: &[Var]| -> Vec<Vec<f32>> {
                    vars.iter()
                        .map(|v| v.flatten_all().unwrap().to_vec1().unwrap())
                        .collect()
                };
                let state = |o: &Optimizer| -> Vec<Vec<f64>> {
                    o.state_tensors()
                        .unwrap()
                        .into_iter()
                        .filter(|(k, _)| !k.contains("grad_scaler"))
                        .map(|(_, t)| {
                            t.to_dtype(DType::F64)
                                .unwrap()
                                .flatten_all()
                                .unwrap()
                                .to_vec1()
                                .unwrap()
                        })
                        .collect()
                };
                let grads = |vars: &[Var], gs: &[Tensor], scale: f64| {
                    let mut total = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
                    for (v, g) in vars.iter().zip(gs) {
                        let term = (v.as_tensor() * g).unwrap().sum_all().unwrap();
                        total = (total + term).unwrap();
                    }
                    (total * scale).unwrap().backward().unwrap()
                };
                for (step, bad) in [None, Some(f32::INFINITY), None, Some(f32::NAN), None]
                    .into_iter()
                    .enumerate()
                {
                    let gs: Vec<Tensor> = shapes
                        .iter()
                        .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
                        .collect();
                    let (before, state_before) = (values(&ours), state(&o));
                    let scale = o.loss_scale().unwrap();
                    let ours_gs = match bad {
                        // One element of the second tensor overflowed.
                        Some(x) => {
                            let mut v: Vec<f32> = gs[1].to_vec1().unwrap();
                            v[2] = x;
                            vec![gs[0].clone(), Tensor::new(v, &Device::Cpu).unwrap()]
                        }
                        None => gs.clone(),
                    };
                    let norm: f64 = o
                        .step(&grads(&ours, &ours_gs, scale), 0.1)
                        .unwrap()
                        .to_scalar()
                        .unwrap();
                    let skipped = o.finish_step(norm);
                    let what = format!("{kind:?} clip {clip:?} grouped {grouped} step {step}");
                    assert_eq!(skipped, bad.is_some(), "{what}: norm {norm}");
                    if skipped {
                        assert_eq!(values(&ours), before, "{what}: weights kept");
                        assert_eq!(state(&o), state_before, "{what}: state kept");
                        assert_eq!(o.loss_scale(), Some(scale / 2.0), "{what}");
                        continue;
                    }
                    let reference: f64 = r
                        .step(&grads(&theirs, &gs, 1.0), 0.1)
                        .unwrap()
                        .to_scalar()
                        .unwrap();
                    assert_eq!(norm, reference, "{what}: unscaled norm");
                    assert_eq!(values(&ours), values(&theirs), "{what}: weights");
                    assert_eq!(state(&o), state(&r), "{what}: state and step count");
                }
            }
        }
    }

    /// The scaler's state is saved with the optimizer's and restored by `load_state`.
    #[test]
    fn the_loss_scale_is_checkpointed() {
        let v = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let param = |v: &Var| Param {
            name: "w".into(),
            var: v.clone(),
            weight_decay: 0.0,
            lr_factor: 1.0,
        };
        let kind = Kind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut o = Optimizer::new(kind, vec![param(&v)], None)
            .with_grad_scaler(Some(GradScaler::new(8.0, 2.0, 0.5, 2000)));
        let norm: f64 = o
            .step(&grads_for(&v, &[f32::INFINITY, 0.0]), 0.1)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(o.finish_step(norm));
        let saved: HashMap<String, Tensor> = o.state_tensors().unwrap().into_iter().collect();
        assert!(saved.contains_key("optimizer.grad_scaler.scale"));
        let mut p = Optimizer::new(kind, vec![param(&v)], None)
            .with_grad_scaler(Some(GradScaler::default()));
        p.load_state(&saved).unwrap();
        assert_eq!(p.loss_scale(), Some(4.0));
        assert_eq!(p.step, 0, "the skipped step did not count");
        // A checkpoint of a run without loss scaling leaves a fresh scaler.
        let mut q = Optimizer::new(kind, vec![param(&v)], None)
            .with_grad_scaler(Some(GradScaler::default()));
        let plain = Optimizer::new(kind, vec![param(&v)], None);
        let plain: HashMap<String, Tensor> = plain.state_tensors().unwrap().into_iter().collect();
        q.load_state(&plain).unwrap();
        assert_eq!(q.loss_scale(), Some(65536.0));
        // A damaged scale is refused, naming it.
        let mut bad = saved.clone();
        bad.insert(
            "optimizer.grad_scaler.scale".into(),
            Tensor::new(&[-1.0f64], &Device::Cpu).unwrap(),
        );
        let err = q.load_state(&bad).unwrap_err().to_string();
        assert!(err.contains("grad_scaler") && err.contains("-1"), "{err}");
    }

    /// The per-tensor update, as PyTorch's `for p in params` loop writes it.
    fn reference_step(
        kind: Kind,
        params: &[(Var, f64, f64)],
        state: &mut [Vec<Tensor>],
        grads: &GradStore,
        lr: f64,
        t: i32,
    ) {
        for ((var, wd, lr_factor), st) in params.iter().zip(state.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (g, w, lr_p) = (g.detach(), var.as_tensor().detach(), lr * lr_factor);
            match kind {
                Kind::Sgd { momentum, nesterov } => {
                    let g = (g + (&w * *wd).unwrap()).unwrap();
                    if momentum == 0.0 {
                        var.set(&(w - (g * lr_p).unwrap()).unwrap()).unwrap();
                        continue;
                    }
                    let buf = match st.first() {
                        Some(b) => ((b * momentum).unwrap() + &g).unwrap(),
                        None => g.clone(),
                    };
                    *st = vec![buf.clone()];
                    let d = if nesterov {
                        (g + (buf * momentum).unwrap()).unwrap()
                    } else {
                        buf
                    };
                    var.set(&(w - (d * lr_p).unwrap()).unwrap()).unwrap();
                }
                Kind::AdamW { beta1, beta2, eps } => {
                    let w = (w * (1.0 - lr_p * wd)).unwrap();
                    let (m, v) = match st.as_slice() {
                        [m, v] => (m.clone(), v.clone()),
                        _ => (g.zeros_like().unwrap(), g.zeros_like().unwrap()),
                    };
                    let m = ((m * beta1).unwrap() + (&g * (1.0 - beta1)).unwrap()).unwrap();
                    let v = ((v * beta2).unwrap() + (g.sqr().unwrap() * (1.0 - beta2)).unwrap())
                        .unwrap();
                    let mhat = (&m / (1.0 - beta1.powi(t))).unwrap();
                    let vhat = (&v / (1.0 - beta2.powi(t))).unwrap();
                    let upd = (mhat / (vhat.sqrt().unwrap() + eps).unwrap()).unwrap();
                    var.set(&(w - (upd * lr_p).unwrap()).unwrap()).unwrap();
                    *st = vec![m, v];
                }
            }
        }
    }

    /// Grouped and one by one, the update equals the per-tensor one bit for bit, over
    /// steps whose set of parameters with a gradient changes, through a save and load of
    /// the state, for SGD (plain, momentum, Nesterov) and AdamW, with three decay / factor
    /// groups.
    #[test]
    fn flat_groups_update_exactly_as_per_tensor_updates() {
        let shapes: [&[usize]; 5] = [&[4, 3, 3, 3], &[4], &[4], &[6, 4], &[6]];
        // (name, weight decay, lr factor): weights, norm weights, biases.
        let kinds = [
            ("w", 1e-2, 1.0),
            ("bn.weight", 0.0, 1.0),
            ("bias", 0.0, 2.0),
        ];
        let meta = [kinds[0], kinds[1], kinds[2], kinds[0], kinds[2]];
        for (kind, grouped) in [
            Kind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            Kind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            Kind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            Kind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ]
        .into_iter()
        .flat_map(|k| [(k, true), (k, false)])
        {
            let init: Vec<Tensor> = shapes
                .iter()
                .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
                .collect();
            let ours: Vec<Var> = init.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let theirs: Vec<(Var, f64, f64)> = init
                .iter()
                .zip(&meta)
                .map(|(t, m)| (Var::from_tensor(t).unwrap(), m.1, m.2))
                .collect();
            let params = ours
                .iter()
                .zip(&meta)
                .enumerate()
                .map(|(i, (v, m))| Param {
                    name: format!("p{i}.{}", m.0),
                    var: v.clone(),
                    weight_decay: m.1,
                    lr_factor: m.2,
                })
                .collect();
            let mut o = Optimizer::new(kind, params, None);
            assert_eq!(o.groups.len(), shapes.len(), "one by one on the CPU");
            o.set_grouped(grouped);
            assert_eq!(o.groups.len(), if grouped { 3 } else { shapes.len() });
            let mut st = vec![Vec::new(); shapes.len()];
            for step in 0..5 {
                // Step 2 leaves the second weight without a gradient; step 3 restarts
                // from the saved state.
                let skip = (step == 2).then_some(3);
                let gs: Vec<Tensor> = shapes
                    .iter()
                    .map(|s| Tensor::randn(0f32, 1.0, *s, &Device::Cpu).unwrap())
                    .collect();
                let loss = |vars: &mut dyn Iterator<Item = &Var>| {
                    let mut total = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
                    for (i, (v, g)) in vars.zip(&gs).enumerate() {
                        if Some(i) != skip {
                            let term = (v.as_tensor() * g).unwrap().sum_all().unwrap();
                            total = (total + term).unwrap();
                        }
                    }
                    total.backward().unwrap()
                };
                if step == 3 {
                    let saved: HashMap<String, Tensor> = o
                        .state_tensors()
                        .unwrap()
                        .into_iter()
                        .map(|(k, t)| (k, t.copy().unwrap()))
                        .collect();
                    let params = std::mem::take(&mut o.params);
                    o = Optimizer::new(kind, params, None);
                    o.set_grouped(grouped);
                    o.load_state(&saved).unwrap();
                }
                o.step(&loss(&mut ours.iter()), 0.1).unwrap();
                let grads = loss(&mut theirs.iter().map(|p| &p.0));
                reference_step(kind, &theirs, &mut st, &grads, 0.1, step + 1);
                for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                    let (a, b): (Vec<f32>, Vec<f32>) = (
                        a.flatten_all().unwrap().to_vec1().unwrap(),
                        b.0.flatten_all().unwrap().to_vec1().unwrap(),
                    );
                    assert_eq!(a, b, "{kind:?} grouped {grouped} step {step} parameter {i}");
                }
                for (i, (a, b)) in o.state.iter().zip(&st).enumerate() {
                    assert_eq!(a.len(), b.len());
                    for (a, b) in a.iter().zip(b) {
                        assert_eq!(a.shape(), b.shape());
                        let (a, b): (Vec<f32>, Vec<f32>) = (
                            a.flatten_all().unwrap().to_vec1().unwrap(),
                            b.flatten_all().unwrap().to_vec1().unwrap(),
                        );
                        assert_eq!(
                            a, b,
                            "{kind:?} grouped {grouped} step {step} state of parameter {i}"
                        );
                    }
                }
            }
        }
    }
}
