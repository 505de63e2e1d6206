//! The training conv + batch norm + activation node against stock Candle ops (conv2d,
//! moments, clamp) and against finite differences in f64.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candletron::layers::Activation;
use candletron::ops::conv_bn_train::{conv_bn_act_train, supported, TrainConv};
use candletron::ops::ConvGeometry;

const EPS: f64 = 1e-5;

/// Every conv kind the node covers: a pointwise conv, depthwise ones with stride 2 on an
/// odd size and with dilation 2, and dense (im2col) ones: a stride-2 stem and a dilated
/// 3x3.
/// (name, input shape (n, c, h, w), output channels, the conv).
type Case = (&'static str, (usize, usize, usize, usize), usize, TrainConv);

fn cases() -> Vec<Case> {
    let dw = |stride, padding, dilation| {
        TrainConv::Depthwise(ConvGeometry {
            stride,
            padding,
            dilation,
        })
    };
    let dense = |stride, padding, dilation| {
        TrainConv::Dense(ConvGeometry {
            stride,
            padding,
            dilation,
        })
    };
    vec![
        ("pointwise", (3, 6, 7, 9), 5, TrainConv::Pointwise),
        ("depthwise s1", (2, 4, 9, 8), 4, dw(1, 1, 1)),
        ("depthwise s2", (3, 4, 9, 9), 4, dw(2, 1, 1)),
        ("depthwise d2", (2, 3, 10, 7), 3, dw(1, 2, 2)),
        ("dense s2", (2, 3, 9, 9), 5, dense(2, 1, 1)),
        ("dense d2", (2, 4, 8, 7), 3, dense(1, 2, 2)),
    ]
}

fn weight_shape(conv: TrainConv, c: usize, o: usize) -> (usize, usize, usize, usize) {
    match conv {
        TrainConv::Pointwise => (o, c, 1, 1),
        TrainConv::Depthwise(_) => (c, 1, 3, 3),
        TrainConv::Dense(_) => (o, c, 3, 3),
    }
}

/// The same layer from stock ops: Candle's conv2d, batch moments, clamp / relu.
fn reference(
    x: &Tensor,
    w: &Tensor,
    conv: TrainConv,
    (gamma, beta): (&Tensor, &Tensor),
    act: Activation,
) -> (Tensor, Tensor, Tensor) {
    let z = match conv {
        TrainConv::Pointwise => x.conv2d(w, 0, 1, 1, 1),
        TrainConv::Depthwise(p) => x.conv2d(w, p.padding, p.stride, p.dilation, x.dim(1).unwrap()),
        TrainConv::Dense(p) => x.conv2d(w, p.padding, p.stride, p.dilation, 1),
    }
    .unwrap();
    let per_channel = |t: Tensor| t.reshape((1, (), 1, 1)).unwrap();
    let mean = z
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let centered = z.broadcast_sub(&mean).unwrap();
    let var = centered
        .sqr()
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .mean_keepdim(3)
        .unwrap();
    let normed = centered
        .broadcast_div(&(&var + EPS).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&per_channel(gamma.clone()))
        .unwrap()
        .broadcast_add(&per_channel(beta.clone()))
        .unwrap();
    let y = match act {
        Activation::Identity => normed,
        Activation::ReLU => normed.relu().unwrap(),
        Activation::ReLU6 => normed.clamp(0.0, 6.0).unwrap(),
        Activation::Mish => unreachable!("not fused"),
    };
    (y, mean.flatten_all().unwrap(), var.flatten_all().unwrap())
}

const FUSED: [Activation; 3] = [Activation::Identity, Activation::ReLU, Activation::ReLU6];

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

/// Output, the four gradients and the batch statistics, in f32 and f64, against the
/// stock-op layer in f64.
#[test]
fn node_equals_stock_ops_forward_backward_and_statistics() {
    let dev = Device::Cpu;
    for (name, shape, o, conv) in cases() {
        let x = Tensor::randn(0.5f64, 2.0, shape, &dev).unwrap();
        let w = Tensor::randn(0f64, 0.7, weight_shape(conv, shape.1, o), &dev).unwrap();
        // Scales up to ~5: outputs cross both of ReLU6's bounds.
        let gamma = Tensor::randn(2.5f64, 1.5, o, &dev).unwrap();
        let beta = Tensor::randn(0.5f64, 1.0, o, &dev).unwrap();
        for act in FUSED {
            let run = |dtype: DType, stock: bool| {
                let vars = [&x, &w, &gamma, &beta]
                    .map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap());
                let [xv, wv, gv, bv] = vars.each_ref().map(|v| v.as_tensor());
                let (y, mean, var) = if stock {
                    reference(xv, wv, conv, (gv, bv), act)
                } else {
                    assert!(supported(xv, wv, conv, act));
                    let (y, stats) = conv_bn_act_train(xv, wv, conv, (gv, bv), EPS, act).unwrap();
                    let c = stats.mean.len();
                    (
                        y,
                        Tensor::from_vec(stats.mean, c, &dev).unwrap(),
                        Tensor::from_vec(stats.var, c, &dev).unwrap(),
                    )
                };
                let r = Tensor::ones(y.dims(), dtype, &dev)
                    .unwrap()
                    .cumsum(3)
                    .unwrap()
                    .sin()
                    .unwrap();
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let grads = [xv, wv, gv, bv].map(|t| g.get(t).unwrap().clone());
                let [gx, gw, gg, gb] = grads;
                [y, gx, gw, gg, gb, mean, var]
            };
            let want = run(DType::F64, true);
            for (dtype, tol) in [(DType::F32, 2e-4), (DType::F64, 1e-10)] {
                let got = run(dtype, false);
                let what = [
                    "output",
                    "input grad",
                    "conv weight grad",
                    "gamma grad",
                    "beta grad",
                    "mean",
                    "var",
                ];
                for ((a, b), what) in got.iter().zip(&want).zip(what) {
                    assert_close(a, b, tol, &format!("{name} {act:?} {dtype:?} {what}"));
                }
            }
        }
    }
}

/// All four gradients against central differences of the node's own forward, in f64.
#[test]
fn gradients_match_finite_differences_in_f64() {
    let dev = Device::Cpu;
    for (name, shape, o, conv) in cases() {
        let shape = (2, shape.1, 5, 6);
        for act in [Activation::Identity, Activation::ReLU6] {
            let w = Tensor::randn(0f64, 0.7, weight_shape(conv, shape.1, o), &dev).unwrap();
            let gamma = Tensor::randn(2.5f64, 0.5, o, &dev).unwrap();
            let beta = Tensor::randn(0.5f64, 1.0, o, &dev).unwrap();
            // Keep the normalised values 1e-3 clear of ReLU6's kinks, where a central
            // difference would straddle one.
            let x = loop {
                let x = Tensor::randn(0f64, 1.0, shape, &dev).unwrap();
                let (z, _) =
                    conv_bn_act_train(&x, &w, conv, (&gamma, &beta), EPS, Activation::Identity)
                        .unwrap();
                if common::flat_f64(&z)
                    .iter()
                    .all(|v| v.abs() > 1e-3 && (v - 6.0).abs() > 1e-3)
                {
                    break x;
                }
            };
            let inputs = [x, w, gamma, beta];
            let (y, _) = conv_bn_act_train(
                &inputs[0],
                &inputs[1],
                conv,
                (&inputs[2], &inputs[3]),
                EPS,
                act,
            )
            .unwrap();
            let r = Tensor::randn(0f64, 1.0, y.dims(), &dev).unwrap();
            let loss = |t: &[Tensor; 4]| -> f64 {
                let (y, _) =
                    conv_bn_act_train(&t[0], &t[1], conv, (&t[2], &t[3]), EPS, act).unwrap();
                (y * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let vars = inputs.each_ref().map(|t| Var::from_tensor(t).unwrap());
            let (y, _) = conv_bn_act_train(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                conv,
                (vars[2].as_tensor(), vars[3].as_tensor()),
                EPS,
                act,
            )
            .unwrap();
            let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (which, what) in ["input", "conv weight", "gamma", "beta"].iter().enumerate() {
                let analytic = common::flat_f64(grads.get(vars[which].as_tensor()).unwrap());
                let base = common::flat_f64(&inputs[which]);
                let h = 1e-5;
                for (i, a) in analytic.iter().enumerate() {
                    let bump = |d: f64| {
                        let mut v = base.clone();
                        v[i] += d;
                        let mut t = inputs.clone();
                        t[which] = Tensor::from_vec(v, inputs[which].dims(), &dev).unwrap();
                        loss(&t)
                    };
                    let n = (bump(h) - bump(-h)) / (2.0 * h);
                    assert!(
                        (a - n).abs() <= 1e-6 * (1.0 + n.abs()),
                        "{name} {act:?} {what}[{i}]: analytic {a} vs numeric {n}"
                    );
                }
            }
        }
    }
}

/// Mish cannot be read back from the output: the node refuses it (the layer then runs
/// conv, batch norm and Mish as separate nodes).
#[test]
fn unfusable_activation_is_not_supported() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((2, 2, 1, 1), DType::F32, &dev).unwrap();
    assert!(!supported(&x, &w, TrainConv::Pointwise, Activation::Mish));
    assert!(supported(&x, &w, TrainConv::Pointwise, Activation::ReLU6));
    let w64 = w.to_dtype(DType::F64).unwrap();
    assert!(!supported(
        &x,
        &w64,
        TrainConv::Pointwise,
        Activation::ReLU6
    ));
}

/// An inverted-residual-like chain (expand 1x1, depthwise 3x3 stride 2, project 1x1 with
/// no activation) as one node gives the same output, gradients and running statistics
/// as the same layers as separate nodes, bit for bit: the kernels are the same, only the
/// gradient plumbing between the layers differs (and the separate nodes are checked
/// against stock ops and finite differences above).
#[test]
fn chain_equals_its_layers_as_separate_nodes() {
    use candletron::layers::params::ParamStore;
    use candletron::layers::BatchNorm2d;
    use candletron::ops::conv_bn_train::{conv_bn_chain_train, ChainLayer};
    use std::sync::Arc;

    let dev = Device::Cpu;
    let (c, e, o) = (4, 12, 5);
    let convs = [
        (TrainConv::Pointwise, (e, c, 1, 1), Activation::ReLU6),
        (
            TrainConv::Depthwise(ConvGeometry {
                stride: 2,
                padding: 1,
                dilation: 1,
            }),
            (e, 1, 3, 3),
            Activation::ReLU6,
        ),
        (TrainConv::Pointwise, (o, e, 1, 1), Activation::Identity),
        // A dense link inside the chain: its input is a saved tensor that no variable
        // feeds directly, and the chain still needs its gradient.
        (
            TrainConv::Dense(ConvGeometry {
                stride: 1,
                padding: 1,
                dilation: 1,
            }),
            (o, o, 3, 3),
            Activation::ReLU,
        ),
    ];
    let x0 = Tensor::randn(0.5f64, 2.0, (2, c, 7, 9), &dev).unwrap();
    let w0: Vec<Tensor> = convs
        .iter()
        .map(|(_, s, _)| Tensor::randn(0f64, 0.6, *s, &dev).unwrap())
        .collect();
    let affine: Vec<(Tensor, Tensor)> = convs
        .iter()
        .map(|(_, s, _)| {
            (
                Tensor::randn(2.5f64, 1.5, s.0, &dev).unwrap(),
                Tensor::randn(0.5f64, 1.0, s.0, &dev).unwrap(),
            )
        })
        .collect();
    // Returns the output, the gradients (x, then each layer's weight, gamma, beta) and
    // each norm's running mean and variance.
    let run = |dtype: DType, chained: bool| {
        let store = Arc::new(ParamStore::new(1));
        let vb = store.var_builder(dtype, &dev);
        let norms: Vec<BatchNorm2d> = convs
            .iter()
            .enumerate()
            .map(|(i, (_, s, _))| BatchNorm2d::new(s.0, vb.pp(format!("bn{i}"))).unwrap())
            .collect();
        for (i, (g, b)) in affine.iter().enumerate() {
            let set = |n: &str, t: &Tensor| {
                let v = store.get(&format!("bn{i}.{n}")).unwrap();
                v.set(&t.to_dtype(dtype).unwrap()).unwrap();
            };
            set("weight", g);
            set("bias", b);
        }
        let x = Var::from_tensor(&x0.to_dtype(dtype).unwrap()).unwrap();
        let ws: Vec<Var> = w0
            .iter()
            .map(|w| Var::from_tensor(&w.to_dtype(dtype).unwrap()).unwrap())
            .collect();
        let y = if chained {
            let layers: Vec<ChainLayer> = convs
                .iter()
                .enumerate()
                .map(|(i, (conv, _, act))| ChainLayer {
                    weight: ws[i].as_tensor(),
                    conv: *conv,
                    gamma: norms[i].affine_params().0,
                    beta: norms[i].affine_params().1,
                    activation: *act,
                })
                .collect();
            let (y, stats) = conv_bn_chain_train(x.as_tensor(), &layers, EPS).unwrap();
            for (norm, stats) in norms.iter().zip(stats) {
                norm.record(stats).unwrap();
            }
            y
        } else {
            let mut y = x.as_tensor().clone();
            for (i, (conv, _, act)) in convs.iter().enumerate() {
                let g = store.get(&format!("bn{i}.weight")).unwrap();
                let b = store.get(&format!("bn{i}.bias")).unwrap();
                let (out, stats) = conv_bn_act_train(
                    &y,
                    ws[i].as_tensor(),
                    *conv,
                    (g.as_tensor(), b.as_tensor()),
                    EPS,
                    *act,
                )
                .unwrap();
                // The running statistics as BatchNorm2d keeps them (momentum 0.1,
                // unbiased variance), from zeros and ones.
                let k = stats.count as f64 / (stats.count - 1) as f64;
                let mean: Vec<f64> = stats.mean.iter().map(|m| 0.1 * m).collect();
                let var: Vec<f64> = stats.var.iter().map(|v| 0.9 + 0.1 * v * k).collect();
                for (n, v) in [("running_mean", mean), ("running_var", var)] {
                    let t = Tensor::from_vec(v, stats.mean.len(), &dev).unwrap();
                    store
                        .get(&format!("bn{i}.{n}"))
                        .unwrap()
                        .set(&t.to_dtype(dtype).unwrap())
                        .unwrap();
                }
                y = out;
            }
            y
        };
        let r = Tensor::ones(y.dims(), dtype, &dev)
            .unwrap()
            .cumsum(3)
            .unwrap()
            .sin()
            .unwrap();
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y, grads.get(x.as_tensor()).unwrap().clone()];
        for (i, w) in ws.iter().enumerate() {
            out.push(grads.get(w.as_tensor()).unwrap().clone());
            for n in ["weight", "bias"] {
                let v = store.get(&format!("bn{i}.{n}")).unwrap();
                out.push(grads.get(v.as_tensor()).unwrap().clone());
            }
        }
        for i in 0..convs.len() {
            for n in ["running_mean", "running_var"] {
                out.push(
                    store
                        .get(&format!("bn{i}.{n}"))
                        .unwrap()
                        .as_tensor()
                        .clone(),
                );
            }
        }
        out
    };
    for dtype in [DType::F32, DType::F64] {
        let (chain, separate) = (run(dtype, true), run(dtype, false));
        assert_eq!(chain.len(), separate.len());
        for (i, (a, b)) in chain.iter().zip(&separate).enumerate() {
            let d = common::flat_f64(&(a - b).unwrap().abs().unwrap());
            let scale = common::flat_f64(b);
            // Running statistics go through Candle's tensor arithmetic on one side and
            // f64 here on the other: 1e-6 relative (the dense link's running variance
            // reaches ~100, where an f32 ulp is ~8e-6).
            let tol = if i >= chain.len() - 2 * convs.len() {
                1e-6
            } else {
                0.0
            };
            assert!(
                d.iter()
                    .zip(&scale)
                    .all(|(v, s)| *v <= tol * (1.0 + s.abs())),
                "{dtype:?} tensor {i}: max diff {:?}",
                d.iter().cloned().fold(0.0, f64::max)
            );
        }
    }
}
