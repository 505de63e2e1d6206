//! Dense (ungrouped) convolution on CPU: im2col + gemm over blocks of output pixels.
//!
//! Candle's CPU conv2d (0.11) takes every output value as a dot product over its kernel
//! window. MobileNetV2's stem (3x3, stride 2, 3 -> 32 channels) went through it at several
//! times its share of a training step's work, and the FPN's 3x3 output convs take the same
//! path. Here each block of output pixels gets its slice of the im2col matrix built in
//! cache and multiplied by the weight in one gemm call (the blocked product the 1x1 conv
//! uses). The backward builds the same slices for the weight gradient (accumulated per
//! task, then summed) and scatters `Wᵀ dy` slices back (col2im) for the input gradient,
//! one image per task so that no two tasks add into the same cells.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use candle_core::{WithDType, D};
use rayon::prelude::*;

use super::activation::Activation;
use super::blocked_gemm::{self, Rhs};
use super::custom_op::{ConvEpilogue, Input};
use super::geometry::{ConvDims, ConvGeometry};
use super::parallel::{cpu_slice, par_chunks_zeroed};

/// The im2col and block sizes of a dense conv call.
trait Im2colDims {
    /// Rows of the im2col matrix: one per (input channel, kernel row, kernel column).
    fn rows(&self) -> usize;
    /// Pixels per block: the im2col slice and the output block both stay in L2.
    fn width(&self) -> usize;
}

impl Im2colDims for ConvDims {
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    fn width(&self) -> usize {
        blocked_gemm::block_width(self.rows().max(self.o), self.out_plane())
    }
}

/// Output columns `lo..hi` whose input column `ox * stride - padding + tap * dilation`
/// lies inside `0..size`.
fn valid_columns(p: &ConvGeometry, tap: usize, size: usize, out: usize) -> (usize, usize) {
    let shift = tap * p.dilation;
    let lo = if shift >= p.padding {
        0
    } else {
        (p.padding - shift).div_ceil(p.stride)
    };
    let hi = if size + p.padding > shift {
        ((size + p.padding - shift - 1) / p.stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Walks the im2col slice of output pixels `col0..col0 + width` (row-major, `width`
/// values per row) in runs: `f(at, len, src)` for `len` slice values from `at`, which
/// read the image at `src = Some((first index, step))` or are padding (`None`).
fn walk(
    p: &ConvGeometry,
    d: &ConvDims,
    col0: usize,
    width: usize,
    mut f: impl FnMut(usize, usize, Option<(usize, usize)>),
) {
    let valid: Vec<(usize, usize)> = (0..d.k).map(|kx| valid_columns(p, kx, d.w, d.wo)).collect();
    for ci in 0..d.c {
        for ky in 0..d.k {
            for (kx, &(lo, hi)) in valid.iter().enumerate() {
                let row = ((ci * d.k + ky) * d.k + kx) * width;
                let mut j = 0;
                while j < width {
                    let (oy, ox0) = ((col0 + j) / d.wo, (col0 + j) % d.wo);
                    let end = ox0 + (d.wo - ox0).min(width - j);
                    let at = |ox: usize| row + j + ox - ox0;
                    let iy = (oy * p.stride + ky * p.dilation)
                        .checked_sub(p.padding)
                        .filter(|&iy| iy < d.h);
                    match iy {
                        None => f(at(ox0), end - ox0, None),
                        Some(iy) => {
                            let a = lo.clamp(ox0, end);
                            let b = hi.clamp(a, end);
                            if a > ox0 {
                                f(at(ox0), a - ox0, None);
                            }
                            if b > a {
                                let ix = a * p.stride + kx * p.dilation - p.padding;
                                let src = (ci * d.h + iy) * d.w + ix;
                                f(at(a), b - a, Some((src, p.stride)));
                            }
                            if end > b {
                                f(at(b), end - b, None);
                            }
                        }
                    }
                    j += end - ox0;
                }
            }
        }
    }
}

/// The im2col slice of output pixels `col0..col0 + width` of image `x` (c, h, w).
fn im2col<T: WithDType>(
    p: &ConvGeometry,
    d: &ConvDims,
    x: &[T],
    col0: usize,
    width: usize,
    col: &mut [T],
) {
    walk(p, d, col0, width, |at, len, src| {
        let dst = &mut col[at..at + len];
        match src {
            None => dst.fill(T::zero()),
            Some((i, 1)) => dst.copy_from_slice(&x[i..i + len]),
            Some((i, step)) => {
                for (o, v) in dst.iter_mut().zip(x[i..].iter().step_by(step)) {
                    *o = *v;
                }
            }
        }
    });
}

/// The transpose of [`im2col`]: adds each slice value into the image cell it was read
/// from.
fn col2im_add<T: WithDType>(
    p: &ConvGeometry,
    d: &ConvDims,
    col: &[T],
    col0: usize,
    width: usize,
    x: &mut [T],
) {
    walk(p, d, col0, width, |at, len, src| {
        if let Some((i, step)) = src {
            for (o, v) in x[i..].iter_mut().step_by(step).zip(&col[at..at + len]) {
                *o += *v;
            }
        }
    });
}

/// The im2col matrix of each image as the gemm's right-hand operand, built block by
/// block into the task's scratch.
struct Im2col<'a, T> {
    x: &'a [T],
    p: ConvGeometry,
    d: ConvDims,
}

impl<T: WithDType> Rhs<T> for Im2col<'_, T> {
    fn rows(&self) -> usize {
        self.d.rows()
    }

    fn block(
        &self,
        scratch: &mut Vec<T>,
        img: usize,
        col0: usize,
        width: usize,
    ) -> (*const T, usize) {
        let d = &self.d;
        let len = d.rows() * width;
        if scratch.len() < len {
            scratch.resize(len, T::zero());
        }
        let x = &self.x[img * d.c * d.h * d.w..][..d.c * d.h * d.w];
        im2col(&self.p, d, x, col0, width, &mut scratch[..len]);
        (scratch.as_ptr(), width)
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    cpu_slice(s, l, "dense conv")
}

/// `conv(x, w)` with `epilogue(channel, row)` on each finished output block.
fn forward<T: WithDType>(
    p: &ConvGeometry,
    d: &ConvDims,
    x: &[T],
    w: &[T],
    epilogue: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let rhs = Im2col { x, p: *p, d: *d };
    blocked_gemm::blocked_matmul(w, (d.n, d.out_plane(), d.o), d.width(), &rhs, epilogue)
}

/// The differentiable op: (x (N, C, H, W), w (O, C, K, K)) -> conv(x, w). CPU, f32/f64.
pub(crate) struct DenseConv(pub ConvGeometry);

fn fwd_impl<T: WithDType>(
    DenseConv(p): &DenseConv,
    (xs, xl): Input,
    (ws, wl): Input,
) -> Result<(CpuStorage, Shape)> {
    let d = p.dense_dims(xl.shape(), wl.shape())?;
    let out = forward(p, &d, slice::<T>(xs, xl)?, slice::<T>(ws, wl)?, |_, _| {});
    Ok((
        T::to_cpu_storage_owned(out),
        Shape::from((d.n, d.o, d.ho, d.wo)),
    ))
}

custom_op2!(DenseConv, "dense-conv2d", fwd_impl, {
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // An input that no variable feeds (the image, for a stem) needs no gradient:
        // the col2im pass is skipped outright.
        self.grads(x, w, grad, x.track_op())
    }
});

impl DenseConv {
    /// The input gradient (when `input_grad`) and the weight gradient. Nodes that hold
    /// this conv inside them say themselves whether they need the input's: theirs may be
    /// a saved tensor that no variable feeds directly.
    pub(crate) fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
        input_grad: bool,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if input_grad {
            let op = InputGrad(self.0, x.dim(2)?, x.dim(D::Minus1)?);
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let gw = x.apply_op2_no_bwd(&grad, &WeightGrad(self.0, w.dim(2)?))?;
        Ok((gx, Some(gw)))
    }
}

/// Gradient w.r.t. the input; carries the input's spatial size (not recoverable from
/// the output's when the stride does not divide it).
struct InputGrad(ConvGeometry, usize, usize);

fn input_grad_impl<T: WithDType>(
    op: &InputGrad,
    (gs, gl): Input,
    (ws, wl): Input,
) -> Result<(CpuStorage, Shape)> {
    let p = &op.0;
    let (n, _, _, _) = gl.shape().dims4()?;
    let c = wl.shape().dims4()?.1;
    let x = Shape::from((n, c, op.1, op.2));
    let d = p
        .dense_dims(&x, wl.shape())?
        .check_grad(gl.shape(), "dense conv input grad")?;
    let o = d.o;
    let (g, w) = (slice::<T>(gs, gl)?, slice::<T>(ws, wl)?);
    let (rows, pixels, width) = (d.rows(), d.out_plane(), d.width());
    let plane = c * d.h * d.w;
    let gx = par_chunks_zeroed(n * plane, plane, Vec::new, |dcol, img, dx| {
        let g = &g[img * o * pixels..][..o * pixels];
        for col0 in (0..pixels).step_by(width) {
            let cols = width.min(pixels - col0);
            dcol.resize(rows * cols, T::zero());
            // SAFETY: `dcol` holds the row-major (rows, cols) product; the weight read
            // transposed is (rows, o) with column stride `rows`; the gradient block is
            // (o, cols) with row stride `pixels`; all in bounds.
            unsafe {
                gemm::gemm(
                    rows,
                    cols,
                    o,
                    dcol.as_mut_ptr(),
                    1,
                    cols as isize,
                    false,
                    w.as_ptr(),
                    rows as isize,
                    1,
                    g[col0..].as_ptr(),
                    1,
                    pixels as isize,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            col2im_add(p, &d, dcol, col0, cols, dx);
        }
    });
    Ok((T::to_cpu_storage_owned(gx), Shape::from((n, c, d.h, d.w))))
}

custom_op2!(InputGrad, "dense-conv2d-input-grad", input_grad_impl);

/// Gradient w.r.t. the weight (O, C, K, K): Σ over images and blocks of dy · im2colᵀ.
struct WeightGrad(ConvGeometry, usize);

fn weight_grad_impl<T: WithDType>(
    op: &WeightGrad,
    (xs, xl): Input,
    (gs, gl): Input,
) -> Result<(CpuStorage, Shape)> {
    let (p, k) = (&op.0, op.1);
    let (n, c, _, _) = xl.shape().dims4()?;
    let o = gl.shape().dims4()?.1;
    let w = Shape::from((o, c, k, k));
    let d = p
        .dense_dims(xl.shape(), &w)?
        .check_grad(gl.shape(), "dense conv weight grad")?;
    let (x, g) = (slice::<T>(xs, xl)?, slice::<T>(gs, gl)?);
    let (rows, pixels, width) = (d.rows(), d.out_plane(), d.width());
    let blocks = pixels.div_ceil(width);
    let rhs = Im2col { x, p: *p, d };
    // A fixed split of the tasks into at most `PARTS` runs, each summed in order, and the
    // runs' sums added in order: the result does not depend on how rayon schedules them
    // (a fold/reduce did, and two identical backward passes could differ in the last bit).
    const PARTS: usize = 16;
    let tasks = n * blocks;
    let per_part = tasks.div_ceil(PARTS).max(1);
    let parts: Vec<Vec<T>> = (0..tasks.div_ceil(per_part))
        .into_par_iter()
        .map(|part| {
            let (mut acc, mut scratch) = (vec![T::zero(); o * rows], Vec::new());
            for task in part * per_part..((part + 1) * per_part).min(tasks) {
                let (img, col0) = (task / blocks, (task % blocks) * width);
                let cols = width.min(pixels - col0);
                let (col, _) = rhs.block(&mut scratch, img, col0, cols);
                // SAFETY: `acc` is the row-major (o, rows) sum; the gradient block is
                // (o, cols) with row stride `pixels`; the slice `col` points at is the
                // row-major (rows, cols) im2col block, read transposed; all in bounds.
                unsafe {
                    gemm::gemm(
                        o,
                        rows,
                        cols,
                        acc.as_mut_ptr(),
                        1,
                        rows as isize,
                        true,
                        g[img * o * pixels + col0..].as_ptr(),
                        1,
                        pixels as isize,
                        col,
                        cols as isize,
                        1,
                        T::one(),
                        T::one(),
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            acc
        })
        .collect();
    let mut gw = vec![T::zero(); o * rows];
    for part in parts {
        for (a, b) in gw.iter_mut().zip(part) {
            *a += b;
        }
    }
    Ok((T::to_cpu_storage_owned(gw), Shape::from((o, c, k, k))))
}

custom_op2!(WeightGrad, "dense-conv2d-weight-grad", weight_grad_impl);

/// Inference only: `act(conv(x, w) + b)`, the bias and activation applied to each
/// output block while it is in cache. CPU, f32.
pub(crate) struct DenseConvBiasAct(pub ConvGeometry, pub Activation);

impl ConvEpilogue for DenseConvBiasAct {
    const NAME: &'static str = "dense-conv2d-bias-act";

    fn activation(&self) -> Activation {
        self.1
    }

    fn dims(&self, x: &Shape, w: &Shape) -> Result<ConvDims> {
        self.0.dense_dims(x, w)
    }

    fn forward_with(
        &self,
        d: &ConvDims,
        x: &[f32],
        w: &[f32],
        epilogue: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        forward(&self.0, d, x, w, epilogue)
    }
}

bias_act_op!(DenseConvBiasAct);

/// Whether [`dense_conv2d`] runs as the op for this input and weight (CPU, f32 or f64,
/// one dtype).
pub fn supported(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && w.dtype() == x.dtype()
}

/// The convolution of `x` (N, C, H, W) with `w` (O, C, K, K), differentiable in both;
/// the caller checks [`supported`].
pub fn dense_conv2d(x: &Tensor, w: &Tensor, p: ConvGeometry) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, DenseConv(p))
}
