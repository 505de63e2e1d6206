//! 1x1 convolution + bias + activation for inference, in one pass over memory.
//!
//! Through stock ops this is a matmul that writes the whole output, then a second pass
//! that reads and rewrites it for the bias and activation; at 640 px MobileNetV2's
//! expanded tensors are tens of MB, so that second pass streams from DRAM. Here the
//! output is cut into column blocks (pixels) by [`blocked_gemm::blocked_matmul`], and the bias
//! and activation run on each block while it is still in cache.

use super::activation::Activation;
use super::blocked_gemm::{self, Planes};
use super::custom_op::{ConvEpilogue, Input};
use super::geometry::{ConvDims, ConvGeometry};
use super::parallel::cpu_slice;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType};

/// `act(W x + b)` for `x` (N, C, H, W), `W` (O, C, 1, 1), `b` (O). CPU, f32, no gradient.
pub(crate) struct PointwiseBiasAct(pub Activation);

/// `W x` for every image, `x` (n, c, hw) and `w` (o, c) row-major, through the blocked
/// gemm with `epilogue(channel, row)` on each finished block.
fn blocked_matmul<T: WithDType>(
    x: &[T],
    w: &[T],
    (n, c, hw, o): (usize, usize, usize, usize),
    epilogue: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let planes = Planes {
        data: x,
        rows: c,
        pixels: hw,
    };
    blocked_gemm::blocked_matmul(
        w,
        (n, hw, o),
        blocked_gemm::block_width(o, hw),
        &planes,
        epilogue,
    )
}

/// The (n, c, hw, o) of a 1x1 conv, checked.
fn geometry(op: &str, xl: &Layout, wl: &Layout) -> Result<(usize, usize, usize, usize)> {
    let d = dims(op, xl.shape(), wl.shape())?;
    Ok((d.n, d.c, d.in_plane(), d.o))
}

/// The dims of a 1x1 conv, checked.
fn dims(op: &str, x: &Shape, w: &Shape) -> Result<ConvDims> {
    let d = ConvGeometry::default().dense_dims(x, w)?;
    if d.k != 1 {
        candle_core::bail!("{op}: weight {w:?} is not 1x1");
    }
    Ok(d)
}

impl ConvEpilogue for PointwiseBiasAct {
    const NAME: &'static str = "pointwise-conv-bias-act";

    fn activation(&self) -> Activation {
        self.0
    }

    fn dims(&self, x: &Shape, w: &Shape) -> Result<ConvDims> {
        dims(Self::NAME, x, w)
    }

    fn forward_with(
        &self,
        d: &ConvDims,
        x: &[f32],
        w: &[f32],
        epilogue: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        blocked_matmul(x, w, (d.n, d.c, d.in_plane(), d.o), epilogue)
    }
}

bias_act_op!(PointwiseBiasAct);

/// A 1x1, stride-1 convolution `W x` as one autograd node (CPU, f32 and f64). Through
/// stock ops it was reshape, broadcast, batched matmul and reshape: four nodes, and
/// autograd gives each a zero-filled gradient buffer it then adds into, two of them
/// activation-sized. The backward runs the input gradient through the same blocked
/// kernel (a 1x1 conv of the gradient with the transposed weight: no zero-filled output,
/// blocks that stay in cache) and the weight gradient as gemm calls that accumulate
/// over the batch.
pub(crate) struct Pointwise;

fn pointwise_impl<T: WithDType>(
    _: &Pointwise,
    (xs, xl): Input,
    (ws, wl): Input,
) -> Result<(CpuStorage, Shape)> {
    let op = "pointwise conv";
    let g = geometry(op, xl, wl)?;
    let (x, w) = (cpu_slice::<T>(xs, xl, op)?, cpu_slice::<T>(ws, wl, op)?);
    let out = blocked_matmul(x, w, g, |_, _| {});
    let (n, _, h, wd) = xl.shape().dims4()?;
    Ok((T::to_cpu_storage_owned(out), Shape::from((n, g.3, h, wd))))
}

custom_op2!(Pointwise, "pointwise-conv", pointwise_impl, {
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let o = w.dim(0)?;
        let grad = grad.contiguous()?;
        // Wᵀ g is a 1x1 conv of the gradient with the transposed weight.
        let wt = w
            .reshape((o, c))?
            .t()?
            .contiguous()?
            .reshape((c, o, 1, 1))?;
        let gx = grad.apply_op2_no_bwd(&wt, &Pointwise)?;
        let g = grad.reshape((n, o, h * wd))?;
        let gw = g.apply_op2_no_bwd(&x.reshape((n, c, h * wd))?, &WeightGrad)?;
        Ok((Some(gx), Some(gw.reshape((o, c, 1, 1))?)))
    }
});

/// (g (N, O, P), x (N, C, P)) -> Σ_n g_n x_nᵀ (O, C): the weight gradient as gemm calls
/// that accumulate into one output, rather than N products and a reduction over them.
struct WeightGrad;

fn weight_grad_impl<T: WithDType>(
    _: &WeightGrad,
    (gs, gl): Input,
    (xs, xl): Input,
) -> Result<(CpuStorage, Shape)> {
    let op = "pointwise conv weight grad";
    let ((n, o, p), (xn, c, xp)) = (gl.shape().dims3()?, xl.shape().dims3()?);
    if (n, p) != (xn, xp) {
        candle_core::bail!("{op}: gradient {:?} and input {:?}", gl.shape(), xl.shape());
    }
    let (g, x) = (cpu_slice::<T>(gs, gl, op)?, cpu_slice::<T>(xs, xl, op)?);
    let mut gw = vec![T::zero(); o * c];
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    for img in 0..n {
        // SAFETY: the strides describe the row-major (o, c) output, the row-major
        // (o, p) gradient plane and the transposed (c, p) input plane, all in bounds.
        unsafe {
            gemm::gemm(
                o,
                c,
                p,
                gw.as_mut_ptr(),
                1,
                c as isize,
                img > 0,
                g[img * o * p..].as_ptr(),
                1,
                p as isize,
                x[img * c * p..].as_ptr(),
                p as isize,
                1,
                T::one(),
                T::one(),
                false,
                false,
                false,
                threads,
            );
        }
    }
    Ok((T::to_cpu_storage_owned(gw), Shape::from((o, c))))
}

custom_op2!(WeightGrad, "pointwise-conv-weight-grad", weight_grad_impl);

/// Whether [`pointwise_conv`] runs as the op here (CPU, f32 or f64).
pub(crate) fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// `W x` for `x` (N, C, H, W) and `W` (O, C, 1, 1), differentiable in both.
pub(crate) fn pointwise_conv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Pointwise)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64))
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap()
    }

    /// (n, c, o, h, w): ragged column blocks, many output channels (narrow blocks), one
    /// pixel, one channel.
    const SHAPES: [(usize, usize, usize, usize, usize); 5] = [
        (2, 8, 24, 13, 11),
        (1, 16, 1280, 7, 7),
        (3, 5, 7, 1, 1),
        (2, 1, 3, 4, 5),
        (4, 32, 16, 28, 28),
    ];

    /// Output and both gradients against Candle's conv2d and its autograd.
    #[test]
    fn op_equals_conv2d_forward_and_backward() {
        let dev = Device::Cpu;
        for (n, c, o, h, w) in SHAPES {
            for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
                let x = Var::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
                let k = Var::randn(0f32, 0.5, (o, c, 1, 1), &dev).unwrap();
                let r = Tensor::randn(0f32, 1.0, (n, o, h, w), &dev).unwrap();
                let (x, k, r) = (
                    Var::from_tensor(&x.to_dtype(dtype).unwrap()).unwrap(),
                    Var::from_tensor(&k.to_dtype(dtype).unwrap()).unwrap(),
                    r.to_dtype(dtype).unwrap(),
                );
                let run = |y: Tensor| {
                    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    [
                        y,
                        g.get(x.as_tensor()).unwrap().clone(),
                        g.get(k.as_tensor()).unwrap().clone(),
                    ]
                };
                let got = run(pointwise_conv(x.as_tensor(), k.as_tensor()).unwrap());
                let want = run(x.as_tensor().conv2d(k.as_tensor(), 0, 1, 1, 1).unwrap());
                for (name, (a, b)) in ["output", "input grad", "weight grad"]
                    .iter()
                    .zip(got.iter().zip(&want))
                {
                    // Sums over up to n*h*w terms: scale the tolerance with them.
                    let scale = 1.0 + (n * h * w) as f64 / 100.0;
                    let d = max_diff(a, b);
                    assert!(
                        d < tol * scale,
                        "{dtype:?} {:?} {name}: {d}",
                        (n, c, o, h, w)
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        let dev = Device::Cpu;
        let (n, c, o, h, w) = (2, 3, 4, 3, 2);
        let x = Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap();
        let k = Tensor::randn(0f64, 1.0, (o, c, 1, 1), &dev).unwrap();
        let r = Tensor::randn(0f64, 1.0, (n, o, h, w), &dev).unwrap();
        let loss = |x: &Tensor, k: &Tensor| {
            (pointwise_conv(x, k).unwrap() * &r)
                .and_then(|t| t.sum_all()?.to_scalar::<f64>())
                .unwrap()
        };
        let (xv, kv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap());
        let g = (pointwise_conv(xv.as_tensor(), kv.as_tensor()).unwrap() * &r)
            .and_then(|t| t.sum_all()?.backward())
            .unwrap();
        for (which, v) in [&xv, &kv].into_iter().enumerate() {
            let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let analytic: Vec<f64> = g
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for i in 0..base.len() {
                let bump = |d: f64| {
                    let mut b = base.clone();
                    b[i] += d;
                    let t = Tensor::from_vec(b, v.dims(), &dev).unwrap();
                    if which == 0 {
                        loss(&t, &k)
                    } else {
                        loss(&x, &t)
                    }
                };
                let numeric = (bump(1e-6) - bump(-1e-6)) / 2e-6;
                assert!(
                    (analytic[i] - numeric).abs() < 1e-6 * (1.0 + numeric.abs()),
                    "arg {which}[{i}]: {} vs {numeric}",
                    analytic[i]
                );
            }
        }
    }
}
