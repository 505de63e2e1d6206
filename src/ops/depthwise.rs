//! Depthwise convolution (one filter per channel) as a Candle custom op.
//!
//! Candle runs a grouped convolution as one convolution per group and concatenates the
//! results, and its backward pads every group's gradient to the full tensor: that made
//! MobileNet's depthwise layers most of the forward time for a small share of the work.
//! Here each (image, channel) plane is one task on rayon's pool, with the kernel
//! taps as contiguous multiply-adds over output rows, in forward and in both backward
//! passes. On CUDA (feature `cuda`; f32, f64, bf16, f16) the same op runs NVRTC-compiled kernels
//! (`depthwise_cuda.rs`). Other devices and dtypes use [`depthwise_conv2d_portable`],
//! built from shifted slices and stock ops that Candle differentiates.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::activation::Activation;
use super::custom_op::{ConvEpilogue, Input};
use super::geometry::{ConvDims, ConvGeometry};
use super::parallel::{cpu_slice, par_chunks_zeroed};

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    cpu_slice(s, l, "depthwise conv")
}

/// Where a plane's zero-padded copy lives: split into `stride x stride` phases (padded
/// row `py`, column `px` is element `(py / s) * pitch + px / s` of phase
/// `(py % s, px % s)`). Tap `(ky, kx)` at output `(oy, ox)` reads padded
/// `(oy * s + ky * d, ox * s + kx * d)`, which is element `oy * pitch + ox + offset(tap)`
/// of one phase: over a whole output plane laid out `pitch` values per row, every tap
/// is one contiguous run. The kernels then loop once over the plane instead of once per
/// row: on MobileNet's 7 and 14 px planes the per-row loops were mostly scalar tails.
/// The `pitch - wo` columns past each output row are computed and thrown away.
#[derive(Debug, Clone, Copy)]
struct Phases {
    stride: usize,
    dilation: usize,
    padding: usize,
    /// Padded rows and columns the output reads.
    rows: usize,
    cols: usize,
    /// Values per phase row (also per row of the pitched output).
    pitch: usize,
    /// Values per phase: its rows plus one slack row, which the runs of the last output
    /// row's thrown-away columns reach into.
    len: usize,
    /// Output rows.
    ho: usize,
}

impl Phases {
    fn new(p: &ConvGeometry, d: &ConvDims) -> Self {
        let s = p.stride;
        let span = (d.k - 1) * p.dilation + 1;
        let rows = (d.ho - 1) * s + span;
        let cols = (d.wo - 1) * s + span;
        let pitch = cols.div_ceil(s);
        Self {
            stride: s,
            dilation: p.dilation,
            padding: p.padding,
            rows,
            cols,
            pitch,
            len: (rows.div_ceil(s) + 1) * pitch,
            ho: d.ho,
        }
    }

    /// Values of all phases together.
    fn total(&self) -> usize {
        self.stride * self.stride * self.len
    }

    /// Length of a pitched output plane.
    fn plane(&self) -> usize {
        self.ho * self.pitch
    }

    /// Start of padded row `py`'s values in phase column `rx`.
    fn row_at(&self, py: usize, rx: usize) -> usize {
        let s = self.stride;
        ((py % s) * s + rx) * self.len + (py / s) * self.pitch
    }

    /// Start of tap `(ky, kx)`'s run.
    fn tap_at(&self, ky: usize, kx: usize) -> usize {
        let (sy, sx) = (ky * self.dilation, kx * self.dilation);
        self.row_at(sy, sx % self.stride) + sx / self.stride
    }

    /// The padded row that input row `iy` lands in, if the output reads it.
    fn padded_row(&self, iy: usize) -> Option<usize> {
        Some(iy + self.padding).filter(|&py| py < self.rows)
    }

    /// For each column phase `rx`: the first input column landing in it, and that
    /// column's index within the phase row. Input column `ix` is padded column
    /// `ix + padding`; columns past `cols` are never read and have no place.
    fn column_phases(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let s = self.stride;
        (0..s).map(move |rx| {
            let ix0 = (rx + s - self.padding % s) % s;
            (rx, ix0, (ix0 + self.padding) / s)
        })
    }

    /// Input columns `ix0, ix0 + s, ...` that have a place in a phase row.
    fn columns(&self, ix0: usize, w: usize) -> usize {
        let end = w.min(self.cols.saturating_sub(self.padding));
        end.saturating_sub(ix0).div_ceil(self.stride)
    }

    /// Copies one input plane (h x w) into `buf`, which holds [`Phases::total`] values.
    /// Cells outside the input are left alone: `buf` must be zero there, as it stays
    /// when it only ever holds planes of this geometry.
    fn scatter<T: WithDType>(&self, x: &[T], w: usize, buf: &mut [T]) {
        for (iy, src) in x.chunks_exact(w).enumerate() {
            let Some(py) = self.padded_row(iy) else {
                break;
            };
            if self.stride == 2 && self.padding % 2 == 1 {
                // Odd padding: even input columns go to phase 1, odd ones to phase 0,
                // one pair per step (the compiler turns this into shuffles).
                let (e, o) = (self.row_at(py, 1) + self.padding / 2, self.row_at(py, 0));
                let o = o + self.padding.div_ceil(2);
                let n = self.columns(0, w).min(self.columns(1, w));
                for (j, pair) in src.chunks_exact(2).take(n).enumerate() {
                    buf[e + j] = pair[0];
                    buf[o + j] = pair[1];
                }
                if self.columns(0, w) > n {
                    buf[e + n] = src[2 * n];
                }
                continue;
            }
            for (rx, ix0, j0) in self.column_phases() {
                let at = self.row_at(py, rx) + j0;
                let n = self.columns(ix0, w);
                let dst = &mut buf[at..at + n];
                if self.stride == 1 {
                    dst.copy_from_slice(&src[..n]);
                } else {
                    for (o, v) in dst.iter_mut().zip(src[ix0..].iter().step_by(self.stride)) {
                        *o = *v;
                    }
                }
            }
        }
    }

    /// The inverse of [`Phases::scatter`]: input plane values from their padded cells,
    /// zero for input cells the output never reads.
    fn gather<T: WithDType>(&self, buf: &[T], w: usize, x: &mut [T]) {
        for (iy, dst) in x.chunks_exact_mut(w).enumerate() {
            let Some(py) = self.padded_row(iy) else {
                dst.fill(T::zero());
                continue;
            };
            for (rx, ix0, j0) in self.column_phases() {
                let at = self.row_at(py, rx) + j0;
                let n = self.columns(ix0, w);
                for (j, o) in dst[ix0..].iter_mut().step_by(self.stride).enumerate() {
                    *o = if j < n { buf[at + j] } else { T::zero() };
                }
            }
        }
    }

    /// Copies an output-shaped plane (`ho` rows of `wo`) into the pitched layout; the
    /// thrown-away columns of `buf` must be (and stay) zero.
    fn pitch_rows<T: WithDType>(&self, g: &[T], wo: usize, buf: &mut [T]) {
        for (src, dst) in g.chunks_exact(wo).zip(buf.chunks_exact_mut(self.pitch)) {
            dst[..wo].copy_from_slice(src);
        }
    }
}

/// `buf` resized to `len` zeros unless it already has that length (then it is left as
/// it is: the scratch of one op call only ever holds planes of one geometry).
fn scratch<T: WithDType>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    if buf.len() != len {
        buf.clear();
        buf.resize(len, T::zero());
    }
    buf
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

/// Scratch of one forward task: the padded input phases and the pitched output.
type FwdScratch<T> = (Vec<T>, Vec<T>);

/// out[oy, ox] = sum_{ky,kx} w[ky,kx] * x[oy*s - p + ky*d, ox*s - p + kx*d], then
/// `epilogue` on each output row as it is copied out of the pitched result.
fn forward_plane<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    ph: &Phases,
    d: &ConvDims,
    x: &[T],
    w: &[T],
    (padded, pitched): &mut FwdScratch<T>,
    out: &mut [T],
    epilogue: impl Fn(&mut [T]),
) {
    let padded = scratch(padded, ph.total());
    ph.scatter(x, d.w, padded);
    let n = ph.plane();
    let acc = scratch(pitched, n);
    let run = |ky: usize, kx: usize| &padded[ph.tap_at(ky, kx)..][..n];
    if d.k == 3 {
        taps9(acc, w, std::array::from_fn(|t| run(t / 3, t % 3)));
    } else {
        acc.fill(T::zero());
        for (t, &wv) in w.iter().enumerate() {
            for (o, v) in acc.iter_mut().zip(run(t / d.k, t % d.k)) {
                *o += wv * *v;
            }
        }
    }
    for (row, src) in out.chunks_exact_mut(d.wo).zip(acc.chunks_exact(ph.pitch)) {
        row.copy_from_slice(&src[..d.wo]);
        epilogue(row);
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
pub(crate) struct Forward(pub(crate) ConvGeometry);

/// Every (image, channel) plane of the forward in parallel; `epilogue(channel, row)` runs
/// on each finished output row.
fn forward_planes<T, E>(p: &ConvGeometry, d: &ConvDims, x: &[T], w: &[T], epilogue: E) -> Vec<T>
where
    T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>,
    E: Fn(usize, &mut [T]) + Sync,
{
    let ph = Phases::new(p, d);
    let len = d.n * d.c * d.ho * d.wo;
    let init = || (Vec::new(), Vec::new());
    par_chunks_zeroed(len, d.ho * d.wo, init, |scratch, plane, o| {
        let ch = plane % d.c;
        let x = &x[plane * d.h * d.w..][..d.h * d.w];
        let w = &w[ch * d.k * d.k..][..d.k * d.k];
        forward_plane(&ph, d, x, w, scratch, o, |row: &mut [T]| epilogue(ch, row));
    })
}

fn fwd_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    Forward(p): &Forward,
    (xs, xl): Input,
    (ws, wl): Input,
) -> Result<(CpuStorage, Shape)> {
    let d = p.depthwise_dims(xl.shape(), wl.shape())?;
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
pub(crate) struct ForwardBiasAct(pub ConvGeometry, pub Activation);

impl ConvEpilogue for ForwardBiasAct {
    const NAME: &'static str = "depthwise-conv2d-bias-act";

    fn activation(&self) -> Activation {
        self.1
    }

    fn dims(&self, x: &Shape, w: &Shape) -> Result<ConvDims> {
        self.0.depthwise_dims(x, w)
    }

    fn forward_with(
        &self,
        d: &ConvDims,
        x: &[f32],
        w: &[f32],
        epilogue: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        forward_planes(&self.0, d, x, w, epilogue)
    }
}

bias_act_op!(ForwardBiasAct);

custom_op2!(Forward, "depthwise-conv2d", fwd_impl, {
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
});

/// Gradient w.r.t. the input; carries the input's spatial size (not recoverable from
/// the output's when the stride does not divide it).
struct InputGrad(ConvGeometry, usize, usize);

fn input_grad_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    op: &InputGrad,
    (gs, gl): Input,
    (ws, wl): Input,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, ho, wo) = gl.shape().dims4()?;
    let (_, _, k, _) = wl.shape().dims4()?;
    let d = ConvDims {
        n,
        c,
        h: op.1,
        w: op.2,
        o: c,
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
        let flipped = ConvGeometry {
            stride: 1,
            padding: reach - p.padding,
            dilation: p.dilation,
        };
        let dg = ConvDims {
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
    // Otherwise the transposed conv runs on the padded phase layout: each tap adds its
    // weight times the pitched gradient plane into its run (the thrown-away columns are
    // zero, so they add nothing), and the input cells are gathered back.
    let ph = Phases::new(p, &d);
    let gin = par_chunks_zeroed(
        n * c * d.h * d.w,
        d.h * d.w,
        || (Vec::new(), Vec::new()),
        |(acc, gp), plane, gi| {
            let ch = plane % c;
            let np = ph.plane();
            let gp = scratch(gp, np);
            ph.pitch_rows(&g[plane * ho * wo..][..ho * wo], wo, gp);
            let acc = scratch(acc, ph.total());
            acc.fill(T::zero());
            for (t, &wv) in w[ch * k * k..][..k * k].iter().enumerate() {
                let run = &mut acc[ph.tap_at(t / k, t % k)..][..np];
                for (a, gv) in run.iter_mut().zip(gp.iter()) {
                    *a += wv * *gv;
                }
            }
            ph.gather(acc, d.w, gi);
        },
    );
    Ok((T::to_cpu_storage_owned(gin), Shape::from((n, c, d.h, d.w))))
}

custom_op2!(InputGrad, "depthwise-conv2d-input-grad", input_grad_impl, {
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
});

/// Gradient w.r.t. the weight: per channel, summed over the batch.
struct WeightGrad(ConvGeometry, usize);

fn weight_grad_impl<T: WithDType + std::ops::AddAssign + std::ops::Mul<Output = T>>(
    op: &WeightGrad,
    (xs, xl): Input,
    (gs, gl): Input,
) -> Result<(CpuStorage, Shape)> {
    let (n, c, h, w) = xl.shape().dims4()?;
    let (_, _, ho, wo) = gl.shape().dims4()?;
    let k = op.1;
    let d = ConvDims {
        n,
        c,
        h,
        w,
        o: c,
        k,
        ho,
        wo,
    };
    let (x, g) = (slice::<T>(xs, xl)?, slice::<T>(gs, gl)?);
    let ph = Phases::new(&op.0, &d);
    let mut gw = vec![T::zero(); c * k * k];
    gw.par_chunks_mut(k * k).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(padded, gp), (ch, gwc)| {
            for b in 0..n {
                let plane = b * c + ch;
                let padded = scratch(padded, ph.total());
                ph.scatter(&x[plane * h * w..][..h * w], w, padded);
                let gp = scratch(gp, ph.plane());
                ph.pitch_rows(&g[plane * ho * wo..][..ho * wo], wo, gp);
                for (t, gv) in gwc.iter_mut().enumerate() {
                    *gv += dot(gp, &padded[ph.tap_at(t / k, t % k)..]);
                }
            }
        },
    );
    Ok((T::to_cpu_storage_owned(gw), Shape::from((c, 1, k, k))))
}

custom_op2!(
    WeightGrad,
    "depthwise-conv2d-weight-grad",
    weight_grad_impl,
    {
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
);

/// Depthwise convolution of `x` (N, C, H, W) with `w` (C, 1, K, K): the custom op on CPU
/// (f32/f64) and on CUDA (f32/f64/bf16/f16), the portable path elsewhere. `CANDLETRON_DEPTHWISE=portable`
/// forces the portable path everywhere, to compare the two.
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, p: ConvGeometry) -> Result<Tensor> {
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
        candle_core::Device::Cpu => {
            matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
        }
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(_) => super::depthwise_cuda::supports(x.dtype()),
        _ => false,
    }
}

/// The same convolution from stock ops (pad, shifted slices, broadcast multiply-adds),
/// which every Candle device runs and differentiates.
pub fn depthwise_conv2d_portable(x: &Tensor, w: &Tensor, p: ConvGeometry) -> Result<Tensor> {
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
