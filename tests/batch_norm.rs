//! The fused training batch norm against the composed stock-op path and against finite
//! differences in f64.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candletron::layers::params::ParamStore;
use candletron::layers::{Activation, BatchNorm2d};
use candletron::ops::batch_norm_train;

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_close_with(a, b, tol, &[], what)
}

/// As `assert_close`, with an extra absolute allowance per element (none where `slack`
/// is shorter).
fn assert_close_with(a: &Tensor, b: &Tensor, tol: f64, slack: &[f64], what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    for (i, (x, y)) in common::flat_f64(a)
        .iter()
        .zip(common::flat_f64(b))
        .enumerate()
    {
        let extra = slack.get(i).copied().unwrap_or(0.0);
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()) + extra,
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// The rounding the f32 forward cannot avoid: it computes `x * scale + shift` with
/// `scale = weight / std` and `shift = bias - mean * scale`, so on inputs far from zero
/// (offset ~500, std ~3) both terms are ~1e3 and cancel, leaving a few ulps of `x * scale`
/// in the output. Per element: 4 f32 ulps of `|x * scale|`.
fn affine_rounding(x: &Tensor, weight: &Tensor) -> Vec<f64> {
    let (n, c, h, w) = x.dims4().unwrap();
    let (v, wt) = (common::flat_f64(x), common::flat_f64(weight));
    let plane = h * w;
    let mut out = vec![0.0; v.len()];
    for (ch, &wc) in wt.iter().enumerate().take(c) {
        let idx: Vec<usize> = (0..n)
            .flat_map(|b| (0..plane).map(move |i| (b * c + ch) * plane + i))
            .collect();
        let count = idx.len() as f64;
        let mean = idx.iter().map(|&i| v[i]).sum::<f64>() / count;
        let var = idx.iter().map(|&i| (v[i] - mean).powi(2)).sum::<f64>() / count;
        let scale = wc.abs() / (var + 1e-5).sqrt();
        for &i in &idx {
            out[i] = 4.0 * f32::EPSILON as f64 * (v[i] * scale).abs();
        }
    }
    out
}

/// Activations with a large per-channel offset, as after a conv with bias: the case where
/// E[x²] - E[x]² would cancel.
fn input(shape: (usize, usize, usize, usize), dtype: DType) -> Tensor {
    let dev = Device::Cpu;
    let offset = Tensor::arange(0f64, shape.1 as f64, &dev)
        .unwrap()
        .affine(40.0, -100.0)
        .unwrap()
        .reshape((1, shape.1, 1, 1))
        .unwrap();
    Tensor::randn(0f64, 3.0, shape, &dev)
        .unwrap()
        .broadcast_add(&offset)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// `t` rounded to f32 and back: values the f32 and f64 runs both hold exactly.
fn f32_exact(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// `x` moved, element by element, until every pre-activation `weight * (x - mean) / std`
/// (the op's bias is 0 here) is at least 1e-3 from the kinks of `act`. Where it falls
/// closer, rounding decides the element's side in f32 but not in the f64 reference: one
/// element on the other side changes its gradient and, through the batch statistics, the
/// whole channel's, which no tolerance on the kernel's precision should absorb.
fn clear_of_kinks(x: Tensor, weight: &Tensor, act: Activation) -> Tensor {
    let kinks: &[f64] = match act {
        Activation::ReLU => &[0.0],
        Activation::ReLU6 => &[0.0, 6.0],
        _ => return x,
    };
    let (n, c, h, w) = x.dims4().unwrap();
    let shape = (n, c, h, w);
    let wt = common::flat_f64(weight);
    let mut v = common::flat_f64(&x);
    let plane = h * w;
    for _ in 0..20 {
        let mut moved = false;
        for (ch, &wc) in wt.iter().enumerate().take(c) {
            let at = |b: usize, i: usize| (b * c + ch) * plane + i;
            let count = (n * plane) as f64;
            let vals = || (0..n).flat_map(|b| (0..plane).map(move |i| (b, i)));
            let mean = vals().map(|(b, i)| v[at(b, i)]).sum::<f64>() / count;
            let var = vals()
                .map(|(b, i)| (v[at(b, i)] - mean).powi(2))
                .sum::<f64>()
                / count;
            let inv = 1.0 / (var + 1e-5).sqrt();
            for (b, i) in vals().collect::<Vec<_>>() {
                let y = wc * (v[at(b, i)] - mean) * inv;
                if kinks.iter().any(|k| (y - k).abs() < 1e-3) {
                    v[at(b, i)] += 0.05;
                    moved = true;
                }
            }
        }
        if !moved {
            return Tensor::from_vec(v, shape, &Device::Cpu)
                .unwrap()
                .to_dtype(x.dtype())
                .unwrap();
        }
    }
    panic!("could not move the input clear of the kinks");
}

/// The activations the op fuses, applied with stock ops (clamp's and relu's gradients).
const FUSED: [Activation; 3] = [Activation::Identity, Activation::ReLU, Activation::ReLU6];

fn stock(a: Activation, y: &Tensor) -> Tensor {
    match a {
        Activation::Identity => y.clone(),
        Activation::ReLU => y.relu().unwrap(),
        Activation::ReLU6 => y.clamp(0.0, 6.0).unwrap(),
        Activation::Mish => unreachable!("not fused"),
    }
}

/// The fused op (with each activation it fuses) in f32 against the composed path in f64 (the f32 composed path is itself
/// off by ~3e-4 on these offset activations, so it cannot be the reference; f32 inputs
/// of mean/std ~100 carry ~1e-5 themselves), and the fused op
/// in f64 against the same reference at f64 precision.
#[test]
fn fused_equals_composed_forward_backward_and_running_stats() {
    for (shape, act) in [(4, 16, 9, 11), (2, 5, 1, 3), (8, 3, 17, 17)]
        .into_iter()
        .flat_map(|s| FUSED.map(|a| (s, a)))
    {
        // Scales up to ~5 (at least 0.5 in size): outputs cross both of ReLU6's bounds.
        let weight = f32_exact(&Tensor::randn(2.5f64, 1.5, shape.1, &Device::Cpu).unwrap());
        let weight = weight
            .sign()
            .unwrap()
            .mul(&weight.abs().unwrap().maximum(0.5).unwrap())
            .unwrap();
        // The reference sees exactly the values the f32 run sees: an f64 input of
        // magnitude ~500 rounds by up to 3e-5 in f32, which is not the kernel's error.
        let x = f32_exact(&clear_of_kinks(input(shape, DType::F64), &weight, act));
        let run = |fused: bool, dtype: DType| {
            let store = Arc::new(ParamStore::new(3));
            let bn = BatchNorm2d::new(shape.1, store.var_builder(dtype, &Device::Cpu)).unwrap();
            // Non-trivial affine parameters.
            let w = store.get("weight").unwrap();
            w.set(&weight.to_dtype(dtype).unwrap()).unwrap();
            let x = Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap();
            let y = if fused {
                bn.forward_act(x.as_tensor(), true, act).unwrap()
            } else {
                stock(act, &bn.forward_train_composed(x.as_tensor()).unwrap())
            };
            let r = Tensor::ones(shape, dtype, &Device::Cpu)
                .unwrap()
                .cumsum(3)
                .unwrap()
                .sin()
                .unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |t: &Tensor| g.get(t).unwrap().clone();
            let find = |name: &str| store.get(name).unwrap().as_tensor().clone();
            [
                y,
                grad(x.as_tensor()),
                grad(&find("weight")),
                grad(&find("bias")),
                find("running_mean"),
                find("running_var"),
            ]
        };
        let reference = run(false, DType::F64);
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
            let got = run(true, dtype);
            let names = [
                "output",
                "input grad",
                "weight grad",
                "bias grad",
                "running mean",
                "running var",
            ];
            let slack = if dtype == DType::F32 {
                affine_rounding(&x, &weight)
            } else {
                Vec::new()
            };
            for ((a, b), name) in got.iter().zip(&reference).zip(names) {
                let what = format!("{dtype:?} {shape:?} {act:?} {name}");
                if name == "output" {
                    assert_close_with(a, b, tol, &slack, &what);
                } else {
                    assert_close(a, b, tol, &what);
                }
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for act in FUSED {
        finite_differences(act);
    }
}

fn finite_differences(act: Activation) {
    let dev = Device::Cpu;
    let shape = (3, 4, 3, 5);
    let w = Tensor::randn(2.5f64, 1.5, 4, &dev).unwrap();
    let b = Tensor::randn(0f64, 0.5, 4, &dev).unwrap();
    // An input whose normalised values stay 1e-3 clear of the activation's kinks, where a
    // central difference would straddle one.
    let x = loop {
        let x = input(shape, DType::F64);
        let (z, _) = batch_norm_train(&x, &w, &b, 1e-5, Activation::Identity).unwrap();
        if common::flat_f64(&z)
            .iter()
            .all(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3)
        {
            break x;
        }
    };
    let r = Tensor::randn(0f64, 1.0, shape, &dev).unwrap();
    let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
        let (y, _) = batch_norm_train(x, w, b, 1e-5, act).unwrap();
        (y * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let (y, stats) =
        batch_norm_train(xv.as_tensor(), wv.as_tensor(), bv.as_tensor(), 1e-5, act).unwrap();
    // The statistics are the batch's (biased variance).
    let xs = common::flat_f64(
        &x.transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .get(2)
            .unwrap(),
    );
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    assert!((stats.mean[2] - mean).abs() < 1e-10 && (stats.var[2] - var).abs() < 1e-9);
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-5;
    let numeric = |t: &Tensor, which: usize| -> Vec<f64> {
        let base = common::flat_f64(t);
        (0..base.len())
            .map(|i| {
                let bump = |d: f64| {
                    let mut v = base.clone();
                    v[i] += d;
                    let t2 = Tensor::from_vec(v, t.dims(), &dev).unwrap();
                    match which {
                        0 => loss(&t2, &w, &b),
                        1 => loss(&x, &t2, &b),
                        _ => loss(&x, &w, &t2),
                    }
                };
                (bump(eps) - bump(-eps)) / (2.0 * eps)
            })
            .collect()
    };
    for (which, (name, v)) in [("input", &xv), ("weight", &wv), ("bias", &bv)]
        .into_iter()
        .enumerate()
    {
        let analytic = common::flat_f64(g.get(v.as_tensor()).unwrap());
        for (i, (a, n)) in analytic
            .iter()
            .zip(numeric(v.as_tensor(), which))
            .enumerate()
        {
            assert!(
                (a - n).abs() <= 1e-6 * (1.0 + n.abs()),
                "{act:?} {name}[{i}]: analytic {a} vs numeric {n}"
            );
        }
    }
}
