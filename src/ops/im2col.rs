//! im2col and its adjoint col2im as one differentiable op, so that a dense convolution on
//! a GPU is `W · im2col(x)`: a cuBLAS matmul, forward and backward.
//!
//! Candle's CUDA convolution already multiplies through im2col going forward, but its
//! input gradient is a transposed convolution in a naive kernel (one thread per input
//! element looping over channels and taps) and its weight gradient a convolution with the
//! output gradient as a (huge) kernel. Written as a matmul over this op, autograd takes
//! both gradients from cuBLAS (`dy · colsᵀ` and `Wᵀ · dy`), and the only other work is
//! col2im, a gather that sums each input element's taps in a fixed order (deterministic,
//! no atomics). An input that needs no gradient (the stem's image) skips col2im entirely.
//!
//! `cols` is (N, C·K·K, Ho·Wo) with row `(c·K + ky)·K + kx`, the order of a weight
//! reshaped to (O, C·K·K). The CPU form exists for tests and as the reference the CUDA
//! kernels are checked against; the CPU convolutions use `dense_conv`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::ConvGeometry;
use super::parallel::cpu_slice;

/// The shapes of one call: input (N, C, H, W), kernel K, output Ho x Wo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Im2colDims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub ho: usize,
    pub wo: usize,
    pub g: ConvGeometry,
}

impl Im2colDims {
    fn new(input: &Shape, k: usize, g: ConvGeometry) -> Result<Self> {
        let (n, c, h, w) = input.dims4()?;
        Ok(Self {
            n,
            c,
            h,
            w,
            k,
            ho: g.out_size(h, k)?,
            wo: g.out_size(w, k)?,
            g,
        })
    }

    fn cols_shape(&self) -> Shape {
        Shape::from((self.n, self.c * self.k * self.k, self.ho * self.wo))
    }

    /// The input cell under output (oy, ox) and tap (ky, kx), if inside the image.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let ConvGeometry {
            stride: s,
            padding: p,
            dilation: d,
        } = self.g;
        let (iy, ix) = (
            (oy * s + ky * d).checked_sub(p)?,
            (ox * s + kx * d).checked_sub(p)?,
        );
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

/// `x` (N, C, H, W) -> (N, C·K·K, Ho·Wo): the input cell each tap of each output reads
/// (zero outside the image), differentiable.
pub fn im2col(x: &Tensor, k: usize, g: ConvGeometry) -> Result<Tensor> {
    let dims = Im2colDims::new(x.shape(), k, g)?;
    x.contiguous()?.apply_op1(Im2col(dims))
}

/// The dense convolution `w` (O, C, K, K) over `x` (N, C, H, W) as `W · im2col(x)`, in
/// batches of images whose columns stay under 2^27 elements.
pub fn im2col_conv2d(x: &Tensor, w: &Tensor, g: ConvGeometry) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, k, k2) = w.dims4()?;
    if wc != c || k != k2 {
        candle_core::bail!(
            "im2col conv: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    let (ho, wo) = (g.out_size(h, k)?, g.out_size(wd, k)?);
    let per_image = (c * k * k * ho * wo).max(1);
    let step = ((1usize << 27) / per_image).clamp(1, n.max(1));
    let weight = w.reshape((o, c * k * k))?;
    let mut outs = Vec::new();
    for start in (0..n).step_by(step) {
        let len = step.min(n - start);
        let cols = im2col(&x.narrow(0, start, len)?, k, g)?;
        outs.push(weight.broadcast_left(len)?.matmul(&cols)?);
    }
    if outs.is_empty() {
        return Tensor::zeros((0, o, ho, wo), x.dtype(), x.device());
    }
    Tensor::cat(&outs, 0)?.reshape((n, o, ho, wo))
}

/// Whether [`im2col_conv2d`] runs these operands on the device's kernels (CUDA, one of
/// f32, f64, bf16, f16, both operands alike).
pub fn supported(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cuda()
        && x.dtype() == w.dtype()
        && matches!(
            x.dtype(),
            DType::F32 | DType::F64 | DType::BF16 | DType::F16
        )
}

struct Im2col(Im2colDims);

struct Col2im(Im2colDims);

fn im2col_cpu<T: Copy + Default + Send + Sync>(x: &[T], d: &Im2colDims) -> Vec<T> {
    let plane = d.ho * d.wo;
    let mut out = vec![T::default(); d.n * d.c * d.k * d.k * plane];
    if plane == 0 {
        return out;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(row, o)| {
        let (nc, tap) = (row / (d.k * d.k), row % (d.k * d.k));
        let (ky, kx) = (tap / d.k, tap % d.k);
        let src = &x[nc * d.h * d.w..(nc + 1) * d.h * d.w];
        for oy in 0..d.ho {
            for ox in 0..d.wo {
                if let Some((iy, ix)) = d.source(oy, ox, ky, kx) {
                    o[oy * d.wo + ox] = src[iy * d.w + ix];
                }
            }
        }
    });
    out
}

/// Each input cell's sum over the columns that read it, taps in (ky, kx) order, in `T`
/// (f32 or f64, as the CUDA kernels accumulate).
fn col2im_cpu<T>(cols: &[T], d: &Im2colDims) -> Vec<T>
where
    T: Copy + Default + Send + Sync + std::ops::Add<Output = T>,
{
    let plane = d.h * d.w;
    let mut out = vec![T::default(); d.n * d.c * plane];
    if plane == 0 {
        return out;
    }
    let ConvGeometry {
        stride: s,
        padding: p,
        dilation: dl,
    } = d.g;
    let col_plane = d.ho * d.wo;
    out.par_chunks_mut(plane).enumerate().for_each(|(nc, o)| {
        let base = nc * d.k * d.k * col_plane;
        for y in 0..d.h {
            for x in 0..d.w {
                let mut acc = T::default();
                for ky in 0..d.k {
                    let Some(ty) = (y + p).checked_sub(ky * dl) else {
                        continue;
                    };
                    if ty % s != 0 || ty / s >= d.ho {
                        continue;
                    }
                    for kx in 0..d.k {
                        let Some(tx) = (x + p).checked_sub(kx * dl) else {
                            continue;
                        };
                        if tx % s != 0 || tx / s >= d.wo {
                            continue;
                        }
                        let row = ky * d.k + kx;
                        acc = acc + cols[base + row * col_plane + (ty / s) * d.wo + tx / s];
                    }
                }
                o[y * d.w + x] = acc;
            }
        }
    });
    out
}

/// `f32` or `f64` applied to the storage's values, by its dtype.
fn on_floats(
    s: &CpuStorage,
    l: &Layout,
    what: &str,
    f32s: impl Fn(&[f32]) -> Vec<f32>,
    f64s: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match s {
        CpuStorage::F32(_) => CpuStorage::F32(f32s(cpu_slice::<f32>(s, l, what)?)),
        CpuStorage::F64(_) => CpuStorage::F64(f64s(cpu_slice::<f64>(s, l, what)?)),
        _ => candle_core::bail!("{what}: {:?} is not supported on CPU", s.dtype()),
    })
}

impl candle_core::CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = &self.0;
        let out = on_floats(s, l, "im2col", |x| im2col_cpu(x, d), |x| im2col_cpu(x, d))?;
        Ok((out, d.cols_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((
            super::im2col_cuda::im2col(s, l, &self.0)?,
            self.0.cols_shape(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2im(self.0))?))
    }
}

impl candle_core::CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = &self.0;
        let out = on_floats(s, l, "col2im", |c| col2im_cpu(c, d), |c| col2im_cpu(c, d))?;
        Ok((out, Shape::from((d.n, d.c, d.h, d.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = &self.0;
        Ok((
            super::im2col_cuda::col2im(s, l, d)?,
            Shape::from((d.n, d.c, d.h, d.w)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `W · im2col(x)` is the CPU's dense convolution op, forward and both gradients, in
    /// f64 and f32 over strides, paddings, dilations, kernel sizes and a non-square input
    /// (Candle 0.11's own conv2d backward fails on that one: its transposed convolution
    /// takes the output padding of the height for the width too).
    #[test]
    fn matmul_over_im2col_is_the_convolution_with_its_gradients() {
        let dev = Device::Cpu;
        for (k, g) in [
            (3, ConvGeometry::new(1, 1, 1)),
            (3, ConvGeometry::new(2, 1, 1)),
            (3, ConvGeometry::new(1, 2, 2)),
            (5, ConvGeometry::new(2, 2, 1)),
            (1, ConvGeometry::new(2, 0, 1)),
            (3, ConvGeometry::new(3, 0, 1)),
        ] {
            for dtype in [DType::F64, DType::F32] {
                let x = Var::from_tensor(
                    &Tensor::randn(0f64, 1.0, (2, 3, 9, 11), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                let w = Var::from_tensor(
                    &Tensor::randn(0f64, 1.0, (4, 3, k, k), &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap();
                let r = Tensor::randn(
                    0f64,
                    1.0,
                    (2, 4, g.out_size(9, k).unwrap(), g.out_size(11, k).unwrap()),
                    &dev,
                )
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
                let ours = im2col_conv2d(x.as_tensor(), w.as_tensor(), g).unwrap();
                let theirs =
                    super::super::dense_conv::dense_conv2d(x.as_tensor(), w.as_tensor(), g)
                        .unwrap();
                let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
                let diff = |a: &Tensor, b: &Tensor| {
                    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
                    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
                    f(d.max(0).unwrap()) / f(scale).max(1.0)
                };
                assert!(diff(&ours, &theirs) < tol, "forward {k} {g:?} {dtype:?}");
                let ga = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (theirs * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, v) in [("input", &x), ("weight", &w)] {
                    let (a, b) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                    assert!(diff(a, b) < tol, "{name} gradient {k} {g:?} {dtype:?}");
                }
            }
        }
    }

    /// An input that needs no gradient (an image) gets none: col2im never runs for it.
    #[test]
    fn a_constant_input_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev).unwrap()).unwrap();
        let y = im2col_conv2d(&x, w.as_tensor(), ConvGeometry::new(2, 1, 1)).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none() && grads.get(w.as_tensor()).is_some());
    }
}
