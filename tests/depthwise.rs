//! The depthwise op against Candle's grouped conv2d, and its gradients against finite
//! differences in f64.

// Tests read tensor values directly; the library's reads go through `ops::host`.
#![allow(clippy::disallowed_methods)]

mod common;

use candle_core::{DType, Device, Tensor};
use candletron::ops::{depthwise_conv2d, depthwise_conv2d_portable, ConvGeometry};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Every geometry the models use (3x3, stride 1/2, "same" padding, dilation 1/2), plus
/// stride 3 (the generic phase split), odd sizes, no padding and over-padding (padding
/// past the kernel's reach).
fn cases() -> Vec<((usize, usize, usize, usize), ConvGeometry)> {
    let mut v = Vec::new();
    for &(n, c, h, w) in &[
        (1, 1, 5, 5),
        (2, 3, 7, 9),
        (1, 16, 8, 8),
        (3, 24, 15, 13),
        (1, 32, 2, 3),
        (2, 8, 1, 6),
    ] {
        for stride in [1, 2, 3] {
            for dilation in [1, 2] {
                for padding in [0, dilation, 2, 3] {
                    let p = ConvGeometry {
                        stride,
                        padding,
                        dilation,
                    };
                    let span = dilation * 2 + 1;
                    if h + 2 * padding >= span && w + 2 * padding >= span {
                        v.push(((n, c, h, w), p));
                    }
                }
            }
        }
    }
    v
}

#[test]
fn forward_equals_grouped_conv2d() {
    let dev = Device::Cpu;
    for ((n, c, h, w), p) in cases() {
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev).unwrap();
        let want = x.conv2d(&k, p.padding, p.stride, p.dilation, c).unwrap();
        let got = depthwise_conv2d(&x, &k, p).unwrap();
        let d = max_diff(&got, &want);
        assert!(
            d <= 1e-4,
            "{:?} {p:?}: custom op differs by {d}",
            (n, c, h, w)
        );
        let d = max_diff(&depthwise_conv2d_portable(&x, &k, p).unwrap(), &want);
        assert!(
            d <= 1e-4,
            "{:?} {p:?}: portable path differs by {d}",
            (n, c, h, w)
        );
    }
    // Non-contiguous input (a transposed view) is handled.
    let x = Tensor::randn(0f32, 1.0, (1, 4, 9, 7), &dev)
        .unwrap()
        .transpose(2, 3)
        .unwrap();
    let k = Tensor::randn(0f32, 1.0, (4, 1, 3, 3), &dev).unwrap();
    let p = ConvGeometry {
        stride: 1,
        padding: 1,
        dilation: 1,
    };
    let d = max_diff(
        &depthwise_conv2d(&x, &k, p).unwrap(),
        &x.contiguous().unwrap().conv2d(&k, 1, 1, 1, 4).unwrap(),
    );
    assert!(d <= 1e-4);
}

/// Forward against Candle's grouped conv2d and both gradients against the autograd of
/// the portable path (stock slices and multiply-adds; Candle's own grouped conv2d
/// backward fails on strides that do not divide the input), in f64, for every geometry
/// of `cases()` with 3x3 and 5x5 kernels: every path of the backward (the stride-1
/// correlation, the padded-phase transpose, odd and even padding).
#[test]
fn forward_and_gradients_equal_stock_ops_in_f64() {
    let dev = Device::Cpu;
    for ((n, c, h, w), p) in cases() {
        for k in [3, 5] {
            let span = p.dilation * (k - 1) + 1;
            if h + 2 * p.padding < span || w + 2 * p.padding < span {
                continue;
            }
            let x = candle_core::Var::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap();
            let kw = candle_core::Var::randn(0f64, 1.0, (c, 1, k, k), &dev).unwrap();
            let (xt, kt) = (x.as_tensor(), kw.as_tensor());
            let got = depthwise_conv2d(xt, kt, p).unwrap();
            let want = xt.conv2d(kt, p.padding, p.stride, p.dilation, c).unwrap();
            let case = format!("{:?} {p:?} k{k}", (n, c, h, w));
            assert!(max_diff(&got, &want) <= 1e-12, "{case}: forward");
            let r = Tensor::randn(0f64, 1.0, got.dims(), &dev).unwrap();
            let ga = (got * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let portable = depthwise_conv2d_portable(xt, kt, p).unwrap();
            let gb = (portable * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("input", xt), ("weight", kt)] {
                let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
                assert!(d <= 1e-10, "{case}: {name} gradient differs by {d}");
            }
        }
    }
}

/// d(sum(out * r))/d(input), d/d(weight) by central differences.
fn numeric_grads(
    x: &[f64],
    xs: (usize, usize, usize, usize),
    w: &[f64],
    c: usize,
    r: &Tensor,
    p: ConvGeometry,
    eps: f64,
) -> (Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let loss = |xv: &[f64], wv: &[f64]| -> f64 {
        let x = Tensor::from_slice(xv, xs, &dev).unwrap();
        let w = Tensor::from_slice(wv, (c, 1, 3, 3), &dev).unwrap();
        (depthwise_conv2d(&x, &w, p).unwrap() * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut gx = vec![0.0; x.len()];
    for i in 0..x.len() {
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[i] += eps;
        b[i] -= eps;
        gx[i] = (loss(&a, w) - loss(&b, w)) / (2.0 * eps);
    }
    let mut gw = vec![0.0; w.len()];
    for i in 0..w.len() {
        let (mut a, mut b) = (w.to_vec(), w.to_vec());
        a[i] += eps;
        b[i] -= eps;
        gw[i] = (loss(x, &a) - loss(x, &b)) / (2.0 * eps);
    }
    (gx, gw)
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let dev = Device::Cpu;
    for &(shape, p) in &[
        (
            (2, 3, 6, 5),
            ConvGeometry {
                stride: 1,
                padding: 1,
                dilation: 1,
            },
        ),
        (
            (1, 2, 7, 8),
            ConvGeometry {
                stride: 2,
                padding: 1,
                dilation: 1,
            },
        ),
        (
            (2, 2, 7, 7),
            ConvGeometry {
                stride: 1,
                padding: 2,
                dilation: 2,
            },
        ),
        (
            (1, 3, 9, 6),
            ConvGeometry {
                stride: 2,
                padding: 2,
                dilation: 2,
            },
        ),
        (
            (1, 2, 6, 7),
            ConvGeometry {
                stride: 2,
                padding: 0,
                dilation: 1,
            },
        ),
    ] {
        let (n, c, h, w) = shape;
        let x = Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap();
        let k = Tensor::randn(0f64, 1.0, (c, 1, 3, 3), &dev).unwrap();
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let kv = candle_core::Var::from_tensor(&k).unwrap();
        let out = depthwise_conv2d(xv.as_tensor(), kv.as_tensor(), p).unwrap();
        let r = Tensor::randn(0f64, 1.0, out.dims(), &dev).unwrap();
        let grads = (out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f64> = grads
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let gw: Vec<f64> = grads
            .get(kv.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (nx, nw) = numeric_grads(
            &x.flatten_all().unwrap().to_vec1().unwrap(),
            shape,
            &k.flatten_all().unwrap().to_vec1().unwrap(),
            c,
            &r,
            p,
            1e-6,
        );
        for (a, b) in gx.iter().zip(&nx).chain(gw.iter().zip(&nw)) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{shape:?} {p:?}: analytic {a} vs numeric {b}"
            );
        }
    }
}

#[test]
fn gradients_equal_the_portable_path() {
    let dev = Device::Cpu;
    for &(shape, p) in &[
        (
            (2, 16, 14, 14),
            ConvGeometry {
                stride: 1,
                padding: 1,
                dilation: 1,
            },
        ),
        (
            (2, 24, 15, 15),
            ConvGeometry {
                stride: 2,
                padding: 1,
                dilation: 1,
            },
        ),
    ] {
        let x = candle_core::Var::randn(0f32, 1.0, shape, &dev).unwrap();
        let k = candle_core::Var::randn(0f32, 1.0, (shape.1, 1, 3, 3), &dev).unwrap();
        let a = depthwise_conv2d(x.as_tensor(), k.as_tensor(), p).unwrap();
        let b = depthwise_conv2d_portable(x.as_tensor(), k.as_tensor(), p).unwrap();
        let r = Tensor::randn(0f32, 1.0, a.dims(), &dev).unwrap();
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(
            max_diff(
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap()
            ) <= 1e-4
        );
        assert!(
            max_diff(
                ga.get(k.as_tensor()).unwrap(),
                gb.get(k.as_tensor()).unwrap()
            ) <= 1e-3
        );
    }
}

/// The CUDA kernels against the CPU op (itself checked above), with `--features cuda`
/// on a machine with a GPU; elsewhere they say they are skipped.
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    fn gpu() -> Option<Device> {
        common::cuda_device()
    }

    /// `cases()` plus MobileNetV2-sized planes, 5x5 kernels and a batch over the grid's
    /// usual block count.
    /// Input shape, geometry, kernel size.
    type Case = ((usize, usize, usize, usize), ConvGeometry, usize);

    fn gpu_cases() -> Vec<Case> {
        let mut v: Vec<_> = cases().into_iter().map(|(s, p)| (s, p, 3)).collect();
        let p = |stride, padding, dilation| ConvGeometry {
            stride,
            padding,
            dilation,
        };
        v.extend([
            ((2, 32, 56, 56), p(1, 1, 1), 3),
            ((2, 96, 57, 57), p(2, 1, 1), 3),
            ((8, 144, 28, 28), p(1, 1, 1), 3),
            ((1, 960, 7, 7), p(1, 2, 2), 3),
            ((3, 5, 11, 9), p(1, 2, 1), 5),
            ((2, 4, 12, 13), p(2, 2, 1), 5),
        ]);
        v
    }

    fn grads(x: &Tensor, k: &Tensor, r: &Tensor, p: ConvGeometry) -> (Tensor, Tensor, Tensor) {
        let xv = candle_core::Var::from_tensor(x).unwrap();
        let kv = candle_core::Var::from_tensor(k).unwrap();
        let out = depthwise_conv2d(xv.as_tensor(), kv.as_tensor(), p).unwrap();
        let g = (&out * r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            out,
            g.get(xv.as_tensor()).unwrap().clone(),
            g.get(kv.as_tensor()).unwrap().clone(),
        )
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let a = a
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let b = b
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
        let den = b.sqr().unwrap().sum_all().unwrap();
        let (num, den) = (
            num.to_scalar::<f64>().unwrap(),
            den.to_scalar::<f64>().unwrap(),
        );
        (num / den.max(1e-300)).sqrt()
    }

    #[test]
    fn kernels_equal_the_cpu_op() {
        let Some(gpu) = gpu() else { return };
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-13)] {
            for ((n, c, h, w), p, ks) in gpu_cases() {
                let x = Tensor::randn(0f64, 1.0, (n, c, h, w), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let k = Tensor::randn(0f64, 1.0, (c, 1, ks, ks), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let probe = depthwise_conv2d(&x, &k, p).unwrap();
                let r = Tensor::randn(0f64, 1.0, probe.dims(), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let (o, gx, gk) = grads(&x, &k, &r, p);
                let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                let (og, gxg, gkg) = grads(&on(&x), &on(&k), &on(&r), p);
                assert!(og.device().is_cuda());
                let case = format!("{dtype:?} {:?} {p:?} k{ks}", (n, c, h, w));
                for (name, a, b) in [
                    ("output", &og, &o),
                    ("input grad", &gxg, &gx),
                    ("weight grad", &gkg, &gk),
                ] {
                    let d = rel_diff(a, b);
                    assert!(
                        d <= tol,
                        "{case}: {name} differs from the CPU op by {d:e} (relative)"
                    );
                }
            }
        }
    }

    /// bf16 and f16 (mixed precision): the kernels accumulate in f32 and round once to
    /// nearest even, so they equal the CPU op in f32 on the same narrow operands, rounded
    /// the same way, except where the two f32 sums (in different orders) straddle a
    /// rounding boundary: a rare one-unit difference. The bound, a tenth of the unit
    /// roundoff (2^-8 for bf16, 2^-11 for f16) in relative norm, leaves room for those and
    /// fails a kernel that rounds its products, accumulates narrow, or truncates (each
    /// off by a third of a unit or more on most elements).
    #[test]
    fn narrow_kernels_accumulate_in_f32_and_round_once() {
        let Some(gpu) = gpu() else { return };
        for (dtype, roundoff) in [(DType::BF16, 2f64.powi(-8)), (DType::F16, 2f64.powi(-11))] {
            for ((n, c, h, w), p, ks) in gpu_cases() {
                let narrow = |dims: &[usize]| {
                    Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (x, k) = (narrow(&[n, c, h, w]), narrow(&[c, 1, ks, ks]));
                let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
                let r = narrow(depthwise_conv2d(&f32(&x), &f32(&k), p).unwrap().dims());
                let (o, gx, gk) = grads(&f32(&x), &f32(&k), &f32(&r), p);
                let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                let (og, gxg, gkg) = grads(&on(&x), &on(&k), &on(&r), p);
                let case = format!("{dtype:?} {:?} {p:?} k{ks}", (n, c, h, w));
                for (name, a, b) in [
                    ("output", &og, &o),
                    ("input grad", &gxg, &gx),
                    ("weight grad", &gkg, &gk),
                ] {
                    assert_eq!(a.dtype(), dtype, "{case}: {name}");
                    let d = rel_diff(a, &b.to_dtype(dtype).unwrap());
                    assert!(
                        d <= 0.1 * roundoff,
                        "{case}: {name} differs from the rounded f32 CPU op by {d:e} (relative)"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_equal_the_portable_path_on_the_gpu() {
        let Some(gpu) = gpu() else { return };
        let p = ConvGeometry {
            stride: 2,
            padding: 1,
            dilation: 1,
        };
        let x = Tensor::randn(0f32, 1.0, (4, 24, 33, 31), &gpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (24, 1, 3, 3), &gpu).unwrap();
        let d = max_diff(
            &depthwise_conv2d(&x, &k, p).unwrap(),
            &depthwise_conv2d_portable(&x, &k, p).unwrap(),
        );
        assert!(d <= 1e-4, "custom op vs portable path on the GPU: {d}");
    }
}
