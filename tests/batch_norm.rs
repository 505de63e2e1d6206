//! The fused training batch norm against the composed stock-op path and against finite
//! differences in f64.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candletron::layers::params::ParamStore;
use candletron::layers::{Activation, BatchNorm2d};
use candletron::ops::batch_norm_train;

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    for (i, (x, y)) in common::flat_f64(a)
        .iter()
        .zip(common::flat_f64(b))
        .enumerate()
    {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
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
        let x = input(shape, DType::F64);
        // Scales up to ~5: outputs cross both of ReLU6's bounds.
        let weight = Tensor::randn(2.5f64, 1.5, shape.1, &Device::Cpu).unwrap();
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
            for ((a, b), name) in got.iter().zip(&reference).zip(names) {
                assert_close(a, b, tol, &format!("{dtype:?} {shape:?} {act:?} {name}"));
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
