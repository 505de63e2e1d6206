//! Depthwise convolution (one filter per channel) as a Candle custom op.
//!
//! Candle runs a grouped convolution as one convolution per group and concatenates the
//! results, and its backward pads every group's gradient to the full tensor: for
//! MobileNet's depthwise layers that made them ~78% of the forward time at 7% of the
//! work. Here each (image, channel) plane is one task on rayon's pool, with the kernel
//! taps as contiguous multiply-adds over output rows, in forward and in both backward
//! passes. On CUDA (feature `cuda`, f32/f64) the same op runs NVRTC-compiled kernels
//! (`depthwise_cuda.rs`). Other devices and dtypes use [`depthwise_conv2d_portable`],
//! built from shifted slices and stock ops that Candle differentiates.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Geometry shared by the three kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    ho: usize,
    wo: usize,
}

impl DwParams {
    pub(crate) fn out_size(&self, size: usize, k: usize) -> Result<usize> {
        let span = self.dilation * (k - 1) + 1;
        if size + 2 * self.padding < span {
            candle_core::bail!("depthwise conv: input size {size} too small for kernel {k} (padding {}, dilation {})", self.padding, self.dilation);
        }
        Ok((size + 2 * self.padding - span) / self.stride + 1)
    }

    fn dims(&self, x: &Layout, w: &Layout) -> Result<Dims> {
        let (n, c, h, wd) = x.shape().dims4()?;
        let (wc, one, k, k2) = w.shape().dims4()?;
        if wc != c || one != 1 || k != k2 {
            candle_core::bail!(
                "depthwise conv: weight {:?} does not fit input {:?}",
                w.shape(),
                x.shape()
            );
        }
        Ok(Dims {
            n,
            c,
            h,
            w: wd,
            k,
            ho: self.out_size(h, k)?,
            wo: self.out_size(wd, k)?,
        })
    }

    /// Output columns `ox` whose input column `ox * stride - padding + tap * dilation` is
    /// inside `0..size`, as a half-open range, and the input column of the first one.
    fn valid(&self, tap: usize, size: usize, out: usize) -> (usize, usize, usize) {
        let shift = tap * self.dilation;
        // ox * s + shift - p >= 0  <=>  ox >= ceil((p - shift) / s)
        let lo = if shift >= self.padding {
            0
        } else {
            (self.padding - shift).div_ceil(self.stride)
        };
        // ox * s + shift - p <= size - 1
        let hi = if size + self.padding > shift {
            ((size + self.padding - shift - 1) / self.stride + 1).min(out)
        } else {
            0
        };
        let lo = lo.min(hi);
        // Empty ranges have no first input column; callers skip them.
        (
            lo,
            hi,
            (lo * self.stride + shift).saturating_sub(self.padding),
        )
    }
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    super::cpu_slice(s, l, "depthwise conv")
}

/// For each kernel tap along one axis: the valid output range and first input index.
fn taps(p: &DwParams, k: usize, size: usize, out: usize) -> Vec<(usize, usize, usize)> {
    (0..k).map(|t| p.valid(t, size, out)).collect()
}

/// Input row read by output row `oy` for kernel row `ky`, if inside the image.
fn in_row(p: &DwParams, oy: usize, ky: usize, h: usize) -> Option<usize> {
    (oy * p.stride + ky * p.dilation)
        .checked_sub(p.padding)
        .filter(|&iy| iy < h)
}

// The three kernels walk output rows outermost, so a row of the output (or of the
// gradient) stays in L1 while the K x K taps update it.

/// The zero-padded input plane, split into `stride` column phases: output column `ox`
/// of tap `kx` reads padded column `ox * s + kx * d`, i.e. element `ox + kx * d / s` of
/// phase `kx * d % s`, so every tap of an output row is one contiguous run of `wo`
/// values. The forward then has no edge cases at all: on MobileNet's narrow planes
/// (7 to 56 px at 224) per-tap edge bookkeeping cost more than the multiply-adds.
struct Padded<'a, T> {
    data: &'a [T],
    /// Padded rows the output reads.
    rows: usize,
    /// Length of one phase row.
    pitch: usize,
    stride: usize,
}

impl<'a, T: WithDType> Padded<'a, T> {
    /// `scratch` must be fresh or hold a previous plane of the same geometry.
    fn new(x: &[T], p: &DwParams, d: &Dims, scratch: &'a mut Vec<T>) -> Self {
        let s = p.stride;
        let span = (d.k - 1) * p.dilation + 1;
        let rows = (d.ho - 1) * s + span;
        let cols = (d.wo - 1) * s + span;
        let pitch = cols.div_ceil(s);
        // Each scratch buffer serves the planes of one op call, which share the geometry,
        // so every plane writes the same interior cells: the padding zeroed for the
        // first plane stays zero, and later planes skip the fill.
        let len = s * rows * pitch;
        if scratch.len() != len {
            scratch.clear();
            scratch.resize(len, T::zero());
        }
        for py in 0..rows {
            let Some(iy) = py.checked_sub(p.padding).filter(|&iy| iy < d.h) else {
                continue;
            };
            let src = &x[iy * d.w..(iy + 1) * d.w];
            // Padded column of input column ix: ix + padding, in phase (ix + padding) % s.
            let phase = |r: usize| (r * rows + py) * pitch;
            match s {
                1 => {
                    let dst = &mut scratch[phase(0)..][..pitch];
                    for (o, v) in dst[p.padding.min(pitch)..].iter_mut().zip(src) {
                        *o = *v;
                    }
                }
                2 => {
                    // Even and odd input columns in one pass over pairs (vector shuffles);
                    // the generic loop below places the last column or two.
                    let even = (p.padding % 2, p.padding / 2);
                    let odd = ((p.padding + 1) % 2, p.padding.div_ceil(2));
                    let (p0, p1) = scratch.split_at_mut(rows * pitch);
                    let (p0, p1) = (
                        &mut p0[py * pitch..][..pitch],
                        &mut p1[py * pitch..][..pitch],
                    );
                    let (e, o) = if even.0 == 0 { (p0, p1) } else { (p1, p0) };
                    let (e, o) = (&mut e[even.1.min(pitch)..], &mut o[odd.1.min(pitch)..]);
                    let n = e.len().min(o.len()).min(d.w / 2);
                    for ((e, o), pair) in
                        e[..n].iter_mut().zip(&mut o[..n]).zip(src.chunks_exact(2))
                    {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    for (ix, v) in src.iter().enumerate().skip(2 * n) {
                        let px = ix + p.padding;
                        if px < cols {
                            scratch[phase(px % 2) + px / 2] = *v;
                        }
                    }
                }
                _ => {
                    for (ix, v) in src.iter().enumerate() {
                        let px = ix + p.padding;
                        if px < cols {
                            scratch[phase(px % s) + px / s] = *v;
                        }
                    }
                }
            }
        }
        Self {
            data: scratch,
            rows,
            pitch,
            stride: s,
        }
    }

    /// The run of padded row `py` from padded column `px`, stepping by the stride.
    fn run(&self, py: usize, px: usize) -> &[T] {
        let (r, j) = (px % self.stride, px / self.stride);
        &self.data[(r * self.rows + py) * self.pitch..][j..self.pitch]
    }
}

/// o = the 3x3 window at every position: nine taps in one pass, one store per output.
fn taps9<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    o: &mut [T],
    w: &[T],
    r: [&[T]; 9],
) {
    let n = o.len();
    let r = r.map(|r| &r[..n]);
    let w: [T; 9] = std::array::from_fn(|i| w[i]);
    for (i, o) in o.iter_mut().enumerate() {
        let top = w[0] * r[0][i] + w[1] * r[1][i] + w[2] * r[2][i];
        let mid = w[3] * r[3][i] + w[4] * r[4][i] + w[5] * r[5][i];
        let bot = w[6] * r[6][i] + w[7] * r[7][i] + w[8] * r[8][i];
        *o = top + mid + bot;
    }
}

/// out[oy, ox] = sum_{ky,kx} w[ky,kx] * x[oy*s - p + ky*d, ox*s - p + kx*d], then
/// `epilogue` on each finished row while it is still in L1.
fn forward_plane<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    p: &DwParams,
    d: &Dims,
    x: &Padded<T>,
    w: &[T],
    out: &mut [T],
    epilogue: impl Fn(&mut [T]),
) {
    for oy in 0..d.ho {
        let orow = &mut out[oy * d.wo..(oy + 1) * d.wo];
        let run = |ky: usize, kx: usize| x.run(oy * p.stride + ky * p.dilation, kx * p.dilation);
        if d.k == 3 {
            taps9(orow, w, std::array::from_fn(|t| run(t / 3, t % 3)));
        } else {
            orow.fill(T::zero());
            for ky in 0..d.k {
                for kx in 0..d.k {
                    let wv = w[ky * d.k + kx];
                    for (o, v) in orow.iter_mut().zip(run(ky, kx)) {
                        *o += wv * *v;
                    }
                }
            }
        }
        epilogue(orow);
    }
}

/// gin[iy, ix] += w[ky,kx] * gout[oy, ox] (the transpose of `forward_plane`).
fn input_grad_plane<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    p: &DwParams,
    d: &Dims,
    cols: &[(usize, usize, usize)],
    g: &[T],
    w: &[T],
    gin: &mut [T],
) {
    for oy in 0..d.ho {
        let grow = &g[oy * d.wo..(oy + 1) * d.wo];
        for ky in 0..d.k {
            let Some(iy) = in_row(p, oy, ky, d.h) else {
                continue;
            };
            let irow = &mut gin[iy * d.w..(iy + 1) * d.w];
            for (kx, &(ox0, ox1, ix0)) in cols.iter().enumerate() {
                if ox0 == ox1 {
                    continue;
                }
                let wv = w[ky * d.k + kx];
                let gs = &grow[ox0..ox1];
                if p.stride == 1 {
                    for (i, gv) in irow[ix0..].iter_mut().zip(gs) {
                        *i += wv * *gv;
                    }
                } else {
                    for (j, gv) in gs.iter().enumerate() {
                        irow[ix0 + j * p.stride] += wv * *gv;
                    }
                }
            }
        }
    }
}

/// gw[ky,kx] += sum_{oy,ox} gout[oy, ox] * x[oy*s - p + ky*d, ox*s - p + kx*d]
fn weight_grad_plane<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    p: &DwParams,
    d: &Dims,
    x: &Padded<T>,
    g: &[T],
    gw: &mut [T],
) {
    for oy in 0..d.ho {
        let grow = &g[oy * d.wo..(oy + 1) * d.wo];
        for ky in 0..d.k {
            for kx in 0..d.k {
                let run = x.run(oy * p.stride + ky * p.dilation, kx * p.dilation);
                gw[ky * d.k + kx] += dot(grow, run);
            }
        }
    }
}

/// Σ a[i] * b[i] over `a.len()` elements with eight independent partial sums: a single
/// running sum is a serial chain the compiler may not reorder into vector lanes.
fn dot<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    let mut acc = [T::zero(); 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .fold(T::zero(), |s, (x, y)| s + *x * *y);
    for (ca, cb) in ac.zip(bc) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    acc.iter().fold(tail, |s, v| s + *v)
}

/// The differentiable depthwise op (CPU, and CUDA with the feature).
pub(crate) struct Forward(pub(crate) DwParams);

/// Every (image, channel) plane of the forward in parallel; `epilogue(channel, row)` runs
/// on each finished output row.
fn forward_planes<T, E>(p: &DwParams, d: &Dims, x: &[T], w: &[T], epilogue: E) -> Vec<T>
where
    T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>,
    E: Fn(usize, &mut [T]) + Sync,
{
    let len = d.n * d.c * d.ho * d.wo;
    super::par_chunks_zeroed(len, d.ho * d.wo, Vec::new, |scratch, plane, o| {
        let ch = plane % d.c;
        let x = &x[plane * d.h * d.w..][..d.h * d.w];
        let x = Padded::new(x, p, d, scratch);
        let w = &w[ch * d.k * d.k..][..d.k * d.k];
        forward_plane(p, d, &x, w, o, |row: &mut [T]| epilogue(ch, row));
    })
}

fn fwd_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    p: &DwParams,
    xs: &CpuStorage,
    xl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let d = p.dims(xl, wl)?;
    let (x, w) = (slice::<T>(xs, xl)?, slice::<T>(ws, wl)?);
    let out = forward_planes(p, &d, x, w, |_, _| {});
    Ok((
        T::to_cpu_storage_owned(out),
        Shape::from((d.n, d.c, d.ho, d.wo)),
    ))
}

/// The forward with `act(row + bias[channel])` applied to each output row as it
/// completes: the inference path's depthwise layer (norm folded) in one pass over memory
/// instead of two. CPU and f32 only, no gradient.
pub(crate) struct ForwardBiasAct(pub DwParams, pub super::Activation);

impl candle_core::CustomOp3 for ForwardBiasAct {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-bias-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.0.dims(xl, wl)?;
        let (x, w, b) = (
            slice::<f32>(xs, xl)?,
            slice::<f32>(ws, wl)?,
            slice::<f32>(bs, bl)?,
        );
        if b.len() != d.c {
            candle_core::bail!("depthwise conv: {} biases for {} channels", b.len(), d.c);
        }
        let act = self.1;
        let out = forward_planes(&self.0, &d, x, w, |ch, row| {
            super::fused::bias_act_in_place(act, row, b[ch])
        });
        Ok((CpuStorage::F32(out), Shape::from((d.n, d.c, d.ho, d.wo))))
    }
}

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(
            "depthwise conv",
            xs.dtype(),
            fwd_impl,
            &self.0,
            xs,
            xl,
            ws,
            wl
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::depthwise_cuda::forward(&self.0, xs, xl, ws, wl)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = grad.apply_op2_no_bwd(w, &InputGrad(self.0, x.dims()[2], x.dims()[3]))?;
        let gw = x.apply_op2_no_bwd(&grad, &WeightGrad(self.0, w.dims()[2]))?;
        Ok((Some(gx), Some(gw)))
    }
}

/// Gradient w.r.t. the input; carries the input's spatial size (not recoverable from
/// the output's when the stride does not divide it).
struct InputGrad(DwParams, usize, usize);

fn input_grad_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    op: &InputGrad,
    gs: &CpuStorage,
    gl: &Layout,
    ws: &CpuStorage,
    wl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, ho, wo) = gl.shape().dims4()?;
    let (_, _, k, _) = wl.shape().dims4()?;
    let d = Dims {
        n,
        c,
        h: op.1,
        w: op.2,
        k,
        ho,
        wo,
    };
    let (g, w) = (slice::<T>(gs, gl)?, slice::<T>(ws, wl)?);
    let p = &op.0;
    // How far the kernel reaches past its first tap.
    let reach = (k - 1) * p.dilation;
    if p.stride == 1 && p.padding <= reach {
        // With stride 1 the transposed conv is a plain correlation of the gradient,
        // padded by `reach - padding`, with the kernel rotated by 180 degrees: the
        // forward's edge-free padded kernels then do the work, rather than per-tap
        // scatter-adds with edge bookkeeping.
        let flipped = DwParams {
            stride: 1,
            padding: reach - p.padding,
            dilation: p.dilation,
        };
        let dg = Dims {
            h: ho,
            w: wo,
            ho: d.h,
            wo: d.w,
            ..d
        };
        let rotated: Vec<T> = w
            .chunks_exact(k * k)
            .flat_map(|taps| taps.iter().rev().copied())
            .collect();
        let gin = forward_planes(&flipped, &dg, g, &rotated, |_, _| {});
        return Ok((T::to_cpu_storage_owned(gin), Shape::from((n, c, d.h, d.w))));
    }
    let cols = taps(&op.0, k, d.w, wo);
    let gin = super::par_chunks_zeroed(
        n * c * d.h * d.w,
        d.h * d.w,
        || (),
        |_, plane, gi| {
            let ch = plane % c;
            input_grad_plane(
                &op.0,
                &d,
                &cols,
                &g[plane * ho * wo..][..ho * wo],
                &w[ch * k * k..][..k * k],
                gi,
            );
        },
    );
    Ok((T::to_cpu_storage_owned(gin), Shape::from((n, c, d.h, d.w))))
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(
            "depthwise conv",
            gs.dtype(),
            input_grad_impl,
            self,
            gs,
            gl,
            ws,
            wl
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::depthwise_cuda::input_grad(&self.0, (self.1, self.2), gs, gl, ws, wl)
    }
}

/// Gradient w.r.t. the weight: per channel, summed over the batch.
struct WeightGrad(DwParams, usize);

fn weight_grad_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    op: &WeightGrad,
    xs: &CpuStorage,
    xl: &Layout,
    gs: &CpuStorage,
    gl: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = xl.shape().dims4()?;
    let (_, _, ho, wo) = gl.shape().dims4()?;
    let k = op.1;
    let d = Dims {
        n,
        c,
        h,
        w,
        k,
        ho,
        wo,
    };
    let (x, g) = (slice::<T>(xs, xl)?, slice::<T>(gs, gl)?);
    let mut gw = vec![T::zero(); c * k * k];
    gw.par_chunks_mut(k * k)
        .enumerate()
        .for_each_init(Vec::new, |scratch, (ch, gwc)| {
            for b in 0..n {
                let plane = b * c + ch;
                let x = Padded::new(&x[plane * h * w..][..h * w], &op.0, &d, scratch);
                let g = &g[plane * ho * wo..][..ho * wo];
                weight_grad_plane(&op.0, &d, &x, g, gwc);
            }
        });
    Ok((T::to_cpu_storage_owned(gw), Shape::from((c, 1, k, k))))
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float_dispatch!(
            "depthwise conv",
            xs.dtype(),
            weight_grad_impl,
            self,
            xs,
            xl,
            gs,
            gl
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::depthwise_cuda::weight_grad(&self.0, self.1, xs, xl, gs, gl)
    }
}

/// Depthwise convolution of `x` (N, C, H, W) with `w` (C, 1, K, K): the custom op on CPU
/// and on CUDA (f32/f64), the portable path elsewhere. `CANDLETRON_DEPTHWISE=portable`
/// forces the portable path everywhere, to compare the two.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, p: DwParams) -> Result<Tensor> {
    if custom_op_for(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Forward(p))
    } else {
        depthwise_conv2d_portable(x, w, p)
    }
}

pub(crate) fn custom_op_for(x: &Tensor) -> bool {
    static FORCE_PORTABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *FORCE_PORTABLE.get_or_init(|| {
        std::env::var("CANDLETRON_DEPTHWISE").is_ok_and(|v| v.eq_ignore_ascii_case("portable"))
    }) {
        return false;
    }
    match x.device() {
        candle_core::Device::Cpu => true,
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => super::depthwise_cuda::supports(x.dtype()),
        _ => false,
    }
}

/// The same convolution from stock ops (pad, shifted slices, broadcast multiply-adds),
/// which every Candle device runs and differentiates.
pub fn depthwise_conv2d_portable(x: &Tensor, w: &Tensor, p: DwParams) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (_, _, k, _) = w.dims4()?;
    let ho = p.out_size(h, k)?;
    let wo = p.out_size(wd, k)?;
    // Pad so every shifted window of `ho * stride` rows (and columns) fits.
    let need_h = (k - 1) * p.dilation + ho * p.stride;
    let need_w = (k - 1) * p.dilation + wo * p.stride;
    let xp = x
        .pad_with_zeros(2, p.padding, need_h.saturating_sub(h + p.padding))?
        .pad_with_zeros(3, p.padding, need_w.saturating_sub(wd + p.padding))?;
    let mut out: Option<Tensor> = None;
    for ky in 0..k {
        for kx in 0..k {
            let mut win = xp.narrow(2, ky * p.dilation, ho * p.stride)?.narrow(
                3,
                kx * p.dilation,
                wo * p.stride,
            )?;
            if p.stride > 1 {
                win = win
                    .reshape((n, c, ho, p.stride, wo, p.stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((n, c, ho, wo))?;
            }
            let tap = w
                .narrow(2, ky, 1)?
                .narrow(3, kx, 1)?
                .reshape((1, c, 1, 1))?;
            let term = win.broadcast_mul(&tap)?;
            out = Some(match out {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("depthwise conv with an empty kernel".into()))
}
