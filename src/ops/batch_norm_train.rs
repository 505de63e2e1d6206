//! Training-mode batch norm as one CPU op with a hand-written backward.
//!
//! Built from stock ops, BN in training was a transpose, two means, a subtraction, a
//! square, two broadcasts and a transpose back, each a full pass over the activation, and
//! autograd then ran the transpose of every one of them: about a third of a MobileNetV2
//! training step. Here the forward is two passes (per-channel moments, then the affine)
//! and the backward two (per-channel sums, then the input gradient), with the statistics
//! kept by the op between them. Other devices keep the composed path in `batch_norm.rs`.

use super::activation::Activation;
use super::custom_op::Input;
use super::parallel::{cpu_slice, par_chunks_from};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Per-channel batch statistics of one forward: mean, biased variance, 1/sqrt(var + eps),
/// and the number of values per channel they were taken over.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub count: usize,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
}

pub(crate) type Shared = Arc<Mutex<Option<BatchStats>>>;

/// The differentiable op: (x, weight, bias) -> activation(bn(x)).
pub(crate) struct Forward {
    eps: f64,
    clip: Option<Clip>,
    stats: Shared,
}

impl Forward {
    /// The op for `activation` (one that [`fuses`]), with the slot its forward fills
    /// with the batch statistics.
    pub(crate) fn new(eps: f64, activation: Activation) -> Result<(Self, Shared)> {
        let clip = Clip::of(activation).ok_or_else(|| {
            candle_core::Error::Msg(format!("batch norm op: {activation:?} cannot be fused"))
        })?;
        let stats: Shared = Arc::new(Mutex::new(None));
        let op = Self {
            eps,
            clip,
            stats: stats.clone(),
        };
        Ok((op, stats))
    }
}

/// The statistics a forward left in its slot (which keeps them for the backward).
pub(crate) fn stats_of(slot: &Shared) -> Result<BatchStats> {
    let stats = slot.lock().expect("batch stats lock").clone();
    stats.ok_or_else(|| candle_core::Error::Msg("batch norm op produced no statistics".into()))
}

struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

fn dims(l: &Layout) -> Result<Dims> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok(Dims { n, c, hw: h * w })
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    cpu_slice(s, l, "batch norm")
}

/// Sums of `f(a[i], b[i])` over a plane. `f` works in `T` and the terms are summed in
/// `T` over blocks of 256 (eight independent accumulators, so the loop vectorises at
/// `T`'s width without conversions), then the block sums in f64: in f32 a block sum
/// carries ~1e-6 relative error, and blocks do not compound.
fn plane_sums<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> (T, T)) -> (f64, f64) {
    const BLOCK: usize = 256;
    let mut total = (0f64, 0f64);
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut s = [[T::zero(); 8]; 2];
        let (ac, bc) = (ab.chunks_exact(8), bb.chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (ca, cb) in ac.zip(bc) {
            for j in 0..8 {
                let (u, v) = f(ca[j], cb[j]);
                s[0][j] += u;
                s[1][j] += v;
            }
        }
        for (&x, &y) in ar.iter().zip(br) {
            let (u, v) = f(x, y);
            s[0][0] += u;
            s[1][0] += v;
        }
        total.0 += s[0].iter().map(|v| v.to_f64()).sum::<f64>();
        total.1 += s[1].iter().map(|v| v.to_f64()).sum::<f64>();
    }
    total
}

/// Per channel, over all planes of that channel: the two sums `f` yields over
/// (`a`, `b`). With a `mask`, the plane of `b` is first masked by the fused activation
/// at `a` (into a per-thread plane buffer, in `T`, where the select vectorises).
fn channel_sums<T: WithDType>(
    d: &Dims,
    a: &[T],
    b: &[T],
    mask: Option<&Mask<T>>,
    f: impl Fn(usize, T, T) -> (T, T) + Sync,
) -> Vec<(f64, f64)> {
    (0..d.c)
        .into_par_iter()
        .map_init(Vec::new, |masked: &mut Vec<T>, ch| {
            (0..d.n).fold((0.0, 0.0), |acc, img| {
                let at = (img * d.c + ch) * d.hw..(img * d.c + ch + 1) * d.hw;
                let bp = match mask {
                    None => &b[at.clone()],
                    Some(mask) => {
                        let keep = mask.channel(ch);
                        masked.clear();
                        masked.extend(
                            b[at.clone()]
                                .iter()
                                .zip(&a[at.clone()])
                                .map(|(&g, &x)| keep(x, g)),
                        );
                        &masked[..]
                    }
                };
                let s = plane_sums(&a[at], bp, |u, v| f(ch, u, v));
                (acc.0 + s.0, acc.1 + s.1)
            })
        })
        .collect()
}

/// The output range of the activation fused into the op, `lo < y < hi` where the
/// activation passes gradient. ReLU and ReLU6 qualify because that mask can be
/// recomputed from the op's input and the forward's affine coefficients, so the backward
/// needs no extra saved tensor (and does not read the output).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Clip {
    pub(super) lo: f64,
    pub(super) hi: f64,
}

impl Clip {
    /// `Some(None)` for the identity, `Some(Some(clip))` for a fusable activation, `None`
    /// for one the op cannot apply.
    pub(super) fn of(activation: Activation) -> Option<Option<Self>> {
        match activation {
            Activation::Identity => Some(None),
            Activation::ReLU => Some(Some(Self {
                lo: 0.0,
                hi: f64::INFINITY,
            })),
            Activation::ReLU6 => Some(Some(Self { lo: 0.0, hi: 6.0 })),
            Activation::Mish => None,
        }
    }

    fn bounds<T: WithDType>(self) -> (T, T) {
        (T::from_f64(self.lo), T::from_f64(self.hi))
    }
}

/// Where the fused activation passes gradient, from the op's input: where
/// `lo < x * scale[ch] + shift[ch] < hi`, with the pre-activation value computed exactly
/// as the forward computed it, so the mask is the forward's bit for bit. The backward then reads the input and
/// the output gradient, not the output as well: one of three streams less in each of
/// its two passes.
struct Mask<T> {
    scale: Vec<T>,
    shift: Vec<T>,
    bounds: (T, T),
}

impl<T: WithDType> Mask<T> {
    fn new(clip: Option<Clip>, (scale, shift): &(Vec<f64>, Vec<f64>)) -> Option<Self> {
        let to_t = |v: &Vec<f64>| v.iter().map(|&s| T::from_f64(s)).collect();
        clip.map(|clip| Self {
            scale: to_t(scale),
            shift: to_t(shift),
            bounds: clip.bounds(),
        })
    }

    /// `(x, g) -> if lo < pre-activation(x) < hi { g } else { 0 }` for channel `ch`: a
    /// select between two values already computed, not a branch around the load of `g`
    /// (which LLVM kept scalar in the ReLU6 gradient).
    fn channel(&self, ch: usize) -> impl Fn(T, T) -> T {
        let (a, b, (lo, hi)) = (self.scale[ch], self.shift[ch], self.bounds);
        move |x, g| {
            let v = x * a + b;
            if (v > lo) & (v < hi) {
                g
            } else {
                T::zero()
            }
        }
    }
}

/// The forward's per-channel affine, `y = x * scale + shift` before the activation:
/// `scale = weight * invstd`, `shift = bias - mean * scale`. The backward recomputes it
/// with this same function, so its activation mask matches the forward's exactly.
fn affine_coefficients(w: &[f64], b: &[f64], stats: &BatchStats) -> (Vec<f64>, Vec<f64>) {
    let scale: Vec<f64> = w.iter().zip(&stats.invstd).map(|(w, i)| w * i).collect();
    let shift = b
        .iter()
        .zip(&stats.mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// out = clip(x * scale[ch] + shift[ch]), plane by plane.
fn affine<T: WithDType>(
    d: &Dims,
    x: &[T],
    scale: &[f64],
    shift: &[f64],
    clip: Option<Clip>,
) -> Vec<T> {
    let plane = |i: usize| {
        let ch = i % d.c;
        let xs = &x[i * d.hw..(i + 1) * d.hw];
        (xs, T::from_f64(scale[ch]), T::from_f64(shift[ch]))
    };
    match clip.map(Clip::bounds::<T>) {
        None => par_chunks_from(x.len(), d.hw, |i| {
            let (xs, a, b) = plane(i);
            xs.iter().map(move |&xv| xv * a + b)
        }),
        Some((lo, hi)) => par_chunks_from(x.len(), d.hw, |i| {
            let (xs, a, b) = plane(i);
            xs.iter().map(move |&xv| {
                let v = xv * a + b;
                let v = if v < lo { lo } else { v };
                if v > hi {
                    hi
                } else {
                    v
                }
            })
        }),
    }
}

/// dx = dz * dz[ch] + x * x[ch] + constant[ch], with dz the output gradient masked by the
/// fused activation, plane by plane.
fn input_grad_planes<T: WithDType>(
    d: &Dims,
    x: &[T],
    g: &[T],
    mask: Option<&Mask<T>>,
    op: &InputGrad,
) -> Vec<T> {
    let coefficients = |i: usize| {
        let ch = i % d.c;
        (
            T::from_f64(op.dy[ch]),
            T::from_f64(op.x[ch]),
            T::from_f64(op.constant[ch]),
        )
    };
    let at = |i: usize| i * d.hw..(i + 1) * d.hw;
    match mask {
        None => par_chunks_from(x.len(), d.hw, |i| {
            let (kg, kx, kc) = coefficients(i);
            let (xs, gs) = (&x[at(i)], &g[at(i)]);
            xs.iter()
                .zip(gs)
                .map(move |(&xv, &gv)| gv * kg + xv * kx + kc)
        }),
        Some(mask) => par_chunks_from(x.len(), d.hw, |i| {
            let (kg, kx, kc) = coefficients(i);
            let (xs, gs) = (&x[at(i)], &g[at(i)]);
            let keep = mask.channel(i % d.c);
            xs.iter()
                .zip(gs)
                .map(move |(&xv, &gv)| keep(xv, gv) * kg + xv * kx + kc)
        }),
    }
}

fn forward_impl<T: WithDType>(
    op: &Forward,
    (xs, xl): Input,
    (ws, wl): Input,
    (bs, bl): Input,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(xl)?;
    let (x, w, b) = (
        slice::<T>(xs, xl)?,
        slice::<T>(ws, wl)?,
        slice::<T>(bs, bl)?,
    );
    if w.len() != d.c || b.len() != d.c {
        candle_core::bail!(
            "batch norm: weight/bias of {} and {} values for {} channels",
            w.len(),
            b.len(),
            d.c
        );
    }
    let m = (d.n * d.hw) as f64;
    // Moments about the channel's first value: no cancellation when |mean| >> std.
    let shifts: Vec<T> = (0..d.c).map(|ch| x[ch * d.hw]).collect();
    let sums = channel_sums(&d, x, x, None, |ch, v, _| {
        let t = v - shifts[ch];
        (t, t * t)
    });
    let mut stats = BatchStats {
        count: d.n * d.hw,
        mean: Vec::with_capacity(d.c),
        var: Vec::with_capacity(d.c),
        invstd: Vec::with_capacity(d.c),
    };
    for (ch, &(s1, s2)) in sums.iter().enumerate() {
        let mu = s1 / m;
        let var = (s2 / m - mu * mu).max(0.0);
        stats.mean.push(shifts[ch].to_f64() + mu);
        stats.var.push(var);
        stats.invstd.push(1.0 / (var + op.eps).sqrt());
    }
    let to_f64 = |v: &[T]| v.iter().map(|v| v.to_f64()).collect::<Vec<_>>();
    let (scale, shift) = affine_coefficients(&to_f64(w), &to_f64(b), &stats);
    let out = affine(&d, x, &scale, &shift, op.clip);
    *op.stats.lock().expect("batch stats lock") = Some(stats);
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

custom_op3!(Forward, "batch-norm-train", forward_impl, {
    // A CPU-only op (see `supported`): its tensors are host memory, and its reads are no
    // device syncs, so they bypass the counted reads of `ops::host`.
    #[allow(clippy::disallowed_methods)]
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(stats) = self.stats.lock().expect("batch stats lock").clone() else {
            candle_core::bail!("batch norm backward before its forward");
        };
        let grad = grad.contiguous()?;
        let m = (x.dims()[0] * x.dims()[2] * x.dims()[3]) as f64;
        let to_f64 = |t: &Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>();
        let (w, b) = (to_f64(w)?, to_f64(b)?);
        let affine = affine_coefficients(&w, &b, &stats);
        // Σ dz and Σ dz (x - mean) per channel, dz = dy masked by the fused activation.
        let sums = x.apply_op2_no_bwd(
            &grad,
            &GradSums {
                mean: stats.mean.clone(),
                clip: self.clip,
                affine: affine.clone(),
            },
        )?;
        let sums: Vec<Vec<f64>> = sums.to_dtype(candle_core::DType::F64)?.to_vec2()?;
        let c = w.len();
        // dx = k1 dy + k2 (x - mean) + k3 with k1 = w invstd, k2 = -k1 invstd² Σdy(x-mean)/m,
        // k3 = -k1 Σdy/m.
        let mut coef = InputGrad {
            clip: self.clip,
            affine,
            dy: vec![0.0; c],
            x: vec![0.0; c],
            constant: vec![0.0; c],
        };
        for ch in 0..c {
            let (inv, mean) = (stats.invstd[ch], stats.mean[ch]);
            let k1 = w[ch] * inv;
            let k2 = -k1 * inv * inv * sums[1][ch] / m;
            let k3 = -k1 * sums[0][ch] / m;
            coef.dy[ch] = k1;
            coef.x[ch] = k2;
            coef.constant[ch] = k3 - k2 * mean;
        }
        let gx = x.apply_op2_no_bwd(&grad, &coef)?;
        let gw: Vec<f64> = (0..c).map(|ch| sums[1][ch] * stats.invstd[ch]).collect();
        let (dev, dt) = (x.device(), x.dtype());
        let gw = Tensor::from_vec(gw, c, dev)?.to_dtype(dt)?;
        let gb = Tensor::from_vec(sums[0].clone(), c, dev)?.to_dtype(dt)?;
        Ok((Some(gx), Some(gw), Some(gb)))
    }
});

/// (x, dy) -> (2, C): Σ dz and Σ dz (x - mean) per channel, dz being dy masked by the
/// fused activation.
struct GradSums {
    mean: Vec<f64>,
    clip: Option<Clip>,
    /// The forward's (scale, shift), for the mask.
    affine: (Vec<f64>, Vec<f64>),
}

fn grad_sums_impl<T: WithDType>(
    op: &GradSums,
    (xs, xl): Input,
    (gs, gl): Input,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(xl)?;
    let (x, g) = (slice::<T>(xs, xl)?, slice::<T>(gs, gl)?);
    let mask = Mask::<T>::new(op.clip, &op.affine);
    let mean: Vec<T> = op.mean.iter().map(|&m| T::from_f64(m)).collect();
    let sums = channel_sums(&d, x, g, mask.as_ref(), |ch, xv, gv| {
        (gv, gv * (xv - mean[ch]))
    });
    let out: Vec<T> = sums
        .iter()
        .map(|s| T::from_f64(s.0))
        .chain(sums.iter().map(|s| T::from_f64(s.1)))
        .collect();
    Ok((T::to_cpu_storage_owned(out), Shape::from((2, d.c))))
}

custom_op2!(GradSums, "batch-norm-grad-sums", grad_sums_impl);

/// (x, dy) -> dx = dz * dy[ch] + x * x[ch] + constant[ch], dz as in [`GradSums`].
struct InputGrad {
    clip: Option<Clip>,
    affine: (Vec<f64>, Vec<f64>),
    dy: Vec<f64>,
    x: Vec<f64>,
    constant: Vec<f64>,
}

fn input_grad_impl<T: WithDType>(
    op: &InputGrad,
    (xs, xl): Input,
    (gs, gl): Input,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(xl)?;
    let (x, g) = (slice::<T>(xs, xl)?, slice::<T>(gs, gl)?);
    let mask = Mask::<T>::new(op.clip, &op.affine);
    let out = input_grad_planes(&d, x, g, mask.as_ref(), op);
    Ok((T::to_cpu_storage_owned(out), xl.shape().clone()))
}

custom_op2!(InputGrad, "batch-norm-input-grad", input_grad_impl);

/// Whether [`batch_norm_train`] runs for this input (CPU, f32 or f64).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// Whether [`batch_norm_train`] can apply `activation` itself.
pub fn fuses(activation: Activation) -> bool {
    Clip::of(activation).is_some()
}

/// Normalises `x` (N, C, H, W) with its batch statistics, applies `weight`, `bias` and
/// then `activation` (one of those [`fuses`] accepts); returns the output and the
/// statistics (for the running averages). With the activation inside, a conv-BN-ReLU6
/// layer is one autograd node: no separate activation pass forward or backward, and no
/// gradient buffer for the pre-activation tensor.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<(Tensor, BatchStats)> {
    let (op, slot) = Forward::new(eps, activation)?;
    let dt = x.dtype();
    let y = x.contiguous()?.apply_op3(
        &weight.to_dtype(dt)?.contiguous()?,
        &bias.to_dtype(dt)?.contiguous()?,
        op,
    )?;
    Ok((y, stats_of(&slot)?))
}
