//! The im2col + gemm conv op against Candle's conv2d (forward and autograd) and its
//! gradients against finite differences in f64.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candletron::layers::Activation;
use candletron::ops::dense_conv::{dense_conv2d, supported};
use candletron::ops::{conv2d_bias_act, ConvGeometry};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    common::flat_f64(a)
        .iter()
        .zip(common::flat_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn params(stride: usize, padding: usize, dilation: usize) -> ConvGeometry {
    ConvGeometry {
        stride,
        padding,
        dilation,
    }
}

/// Input (n, c, h, w), output channels, kernel size, geometry.
type Case = ((usize, usize, usize, usize), usize, usize, ConvGeometry);

/// The stem (3x3 s2), FPN-like
/// 3x3, 1x1 stride 2, 5x5 and 7x7, strides that do not divide the input, padding past
/// the kernel's reach, and planes of several gemm blocks whose edges fall mid-row.
fn cases() -> Vec<Case> {
    let mut v = vec![
        ((2, 3, 40, 40), 8, 3, params(2, 1, 1)),
        ((1, 3, 65, 47), 32, 3, params(2, 1, 1)),
        ((2, 16, 12, 11), 16, 3, params(1, 1, 1)),
        ((1, 5, 9, 9), 4, 1, params(2, 0, 1)),
        ((2, 2, 11, 13), 3, 5, params(1, 2, 1)),
        ((1, 3, 15, 15), 2, 7, params(2, 3, 1)),
        ((1, 1, 1, 1), 1, 1, params(1, 0, 1)),
    ];
    for stride in [1, 2, 3] {
        for dilation in [1, 2] {
            for padding in [0, 1, 3] {
                v.push(((2, 3, 8, 7), 4, 3, params(stride, padding, dilation)));
            }
        }
    }
    v
}

#[test]
fn forward_equals_conv2d_in_f32_and_f64() {
    let dev = Device::Cpu;
    for ((n, c, h, w), o, k, p) in cases() {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let kw = Tensor::randn(0f32, 0.5, (o, c, k, k), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            assert!(supported(&x, &kw));
            let got = dense_conv2d(&x, &kw, p).unwrap();
            let want = x.conv2d(&kw, p.padding, p.stride, p.dilation, 1).unwrap();
            let d = max_diff(&got, &want);
            let scale = (c * k * k) as f64;
            assert!(
                d <= tol * scale,
                "{dtype:?} {:?} o{o} k{k} {p:?}: {d}",
                (n, c, h, w)
            );
        }
    }
}

/// Both gradients against Candle's conv2d autograd, in f64, where Candle's backward
/// works (its transposed conv mis-sizes the input gradient when the stride does not
/// divide the input; finite differences cover those cases below).
#[test]
fn gradients_equal_conv2d_autograd_in_f64() {
    let dev = Device::Cpu;
    let mut checked = 0;
    for ((n, c, h, w), o, k, p) in cases() {
        let span = p.dilation * (k - 1) + 1;
        let divides = |s: usize| (s + 2 * p.padding - span).is_multiple_of(p.stride);
        if !divides(h) || !divides(w) {
            continue;
        }
        let x = Var::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap();
        let kw = Var::randn(0f64, 0.5, (o, c, k, k), &dev).unwrap();
        let (xt, kt) = (x.as_tensor(), kw.as_tensor());
        let got = dense_conv2d(xt, kt, p).unwrap();
        let want = xt.conv2d(kt, p.padding, p.stride, p.dilation, 1).unwrap();
        let r = Tensor::randn(0f64, 1.0, got.dims(), &dev).unwrap();
        let ga = (got * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t) in [("input", xt), ("weight", kt)] {
            let d = max_diff(ga.get(t).unwrap(), gb.get(t).unwrap());
            assert!(d <= 1e-10, "{:?} k{k} {p:?} {name}: {d}", (n, c, h, w));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases checked");
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let dev = Device::Cpu;
    for (shape, o, k, p) in [
        ((2, 2, 7, 6), 3, 3, params(2, 1, 1)),
        ((1, 2, 8, 7), 2, 3, params(3, 2, 2)),
        ((1, 3, 5, 6), 2, 1, params(2, 0, 1)),
    ] {
        let x = Tensor::randn(0f64, 1.0, shape, &dev).unwrap();
        let kw = Tensor::randn(0f64, 0.5, (o, shape.1, k, k), &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, dense_conv2d(&x, &kw, p).unwrap().dims(), &dev).unwrap();
        let loss = |x: &Tensor, kw: &Tensor| {
            (dense_conv2d(x, kw, p).unwrap() * &r)
                .and_then(|t| t.sum_all()?.to_scalar::<f64>())
                .unwrap()
        };
        let (xv, kv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&kw).unwrap(),
        );
        let g = (dense_conv2d(xv.as_tensor(), kv.as_tensor(), p).unwrap() * &r)
            .and_then(|t| t.sum_all()?.backward())
            .unwrap();
        for (which, v) in [&xv, &kv].into_iter().enumerate() {
            let base = common::flat_f64(v.as_tensor());
            let analytic = common::flat_f64(g.get(v.as_tensor()).unwrap());
            for i in 0..base.len() {
                let bump = |d: f64| {
                    let mut b = base.clone();
                    b[i] += d;
                    let t = Tensor::from_vec(b, v.dims(), &dev).unwrap();
                    if which == 0 {
                        loss(&t, &kw)
                    } else {
                        loss(&x, &t)
                    }
                };
                let numeric = (bump(1e-6) - bump(-1e-6)) / 2e-6;
                assert!(
                    (analytic[i] - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "{shape:?} {p:?} arg {which}[{i}]: {} vs {numeric}",
                    analytic[i]
                );
            }
        }
    }
}

/// An input no variable feeds (an image into the stem) gets no gradient; the weight's
/// is unchanged by skipping it.
#[test]
fn untracked_input_gets_no_gradient() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 10, 10), &dev).unwrap();
    let kw = Var::randn(0f32, 0.5, (4, 3, 3, 3), &dev).unwrap();
    let p = params(2, 1, 1);
    let grads = dense_conv2d(&x, kw.as_tensor(), p)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    let want = x
        .conv2d(kw.as_tensor(), 1, 2, 1, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let d = max_diff(
        grads.get(kw.as_tensor()).unwrap(),
        want.get(kw.as_tensor()).unwrap(),
    );
    assert!(d <= 1e-3, "weight gradient differs by {d}");
}

/// The inference layer (bias and activation applied per block) against conv2d, bias,
/// clamp.
#[test]
fn bias_act_equals_conv_then_bias_then_activation() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 33, 31), &dev).unwrap();
    let kw = Tensor::randn(0f32, 1.0, (32, 3, 3, 3), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, 32, &dev).unwrap();
    let got = conv2d_bias_act(
        &x,
        &kw,
        &b,
        (ConvGeometry::same(3, 2), 1),
        Activation::ReLU6,
    )
    .unwrap();
    let want = x
        .conv2d(&kw, 1, 2, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 32, 1, 1)).unwrap())
        .unwrap()
        .clamp(0f32, 6f32)
        .unwrap();
    let d = max_diff(&got, &want);
    assert!(d <= 1e-4, "differs by {d}");
}
