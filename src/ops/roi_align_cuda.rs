//! ROIAlign on CUDA from the boxes themselves: the GPU counterpart of the planned CPU op in
//! `roi_align.rs`.
//!
//! The portable path runs the host's plan as `index_select` + `index_add`: it uploads every
//! tap (a few MB per call for a Faster R-CNN batch) and materialises one channel vector per
//! tap, an (taps x C) tensor of hundreds of MB at 640 px. Here only each ROI's sampling grid
//! goes up ([`RoiGrid`], seven f64 per ROI, made by the plan's own code) and the kernels
//! place the samples from it with the plan's roundings. The
//! forward is one thread per output bin. The backward is a gather, one thread per input
//! element over the ROIs of its image, rather than torchvision's scatter with atomics, so
//! its sums run in a fixed order and training on the GPU stays deterministic.

use super::cuda_kernels::{self, grid_1d, i32_of, view};
use super::roi_align::{RoiAlignParams, RoiGrid};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::OnceLock;

const WHAT: &str = "roi_align";
const MODULE: &str = "candletron_roi_align";

const SOURCE: &str = r#"
// One ROI's row of the table the host uploads: image, then its RoiGrid (x0, y0, bw, bh, gw,
// gh), computed there by the planned op's own code.
#define ROI_STRIDE 7
struct Grid {
  double x0, y0, bw, bh, count;
  int gw, gh;
};

__device__ Grid grid_of(const double* roi) {
  Grid g;
  g.x0 = roi[1];
  g.y0 = roi[2];
  g.bw = roi[3];
  g.bh = roi[4];
  g.gw = (int)roi[5];
  g.gh = (int)roi[6];
  int n = g.gh * g.gw;
  g.count = (double)(n > 1 ? n : 1);
  return g;
}

// A sample coordinate on an axis of `size` pixels: its low and high pixel and their weights
// (as push_bilinear: more than a pixel outside contributes nothing, within is clamped).
struct Axis {
  int lo, hi;
  double wlo, whi;
  bool valid;
};

__device__ Axis axis_of(double v, int size) {
  Axis a;
  a.valid = !(v < -1.0 || v > (double)size);
  if (!a.valid) return a;
  v = v > 0.0 ? v : 0.0;
  a.lo = (int)floor(v);
  if ((double)a.lo >= (double)size - 1.0) {
    a.lo = size - 1;
    a.hi = a.lo;
    v = (double)a.lo;
  } else {
    a.hi = a.lo + 1;
  }
  double l = v - (double)a.lo;
  a.wlo = 1.0 - l;
  a.whi = l;
  return a;
}

// origin + bin * size + (sample + 0.5) * size / samples, each operation rounded on its own as
// RoiGrid::sample_y/x round them (NVRTC would fuse multiply-adds, and a sample exactly on the
// map's border is kept or dropped by a comparison).
__device__ __forceinline__ double sample_at(double origin, double size, int bin, int sample,
                                            int samples) {
  return __dadd_rn(__dadd_rn(origin, __dmul_rn((double)bin, size)),
                   __ddiv_rn(__dmul_rn(sample + 0.5, size), (double)samples));
}

__device__ __forceinline__ double sample_y(const Grid& g, int by, int iy) {
  return sample_at(g.y0, g.bh, by, iy, g.gh);
}

__device__ __forceinline__ double sample_x(const Grid& g, int bx, int ix) {
  return sample_at(g.x0, g.bw, bx, ix, g.gw);
}

// The bilinear sum of a sample; taps of weight 0 are not read (the plan drops them), so a
// NaN beside a sample on a pixel's centre line does not reach it.
template <typename E>
__device__ __forceinline__ double bilinear(const typename E::S* plane, int w, const Axis& ay,
                                           const Axis& ax) {
  double v = 0.0;
  const double wy[2] = {ay.wlo, ay.whi}, wx[2] = {ax.wlo, ax.whi};
  const int ys[2] = {ay.lo, ay.hi}, xs[2] = {ax.lo, ax.hi};
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 2; ++b) {
      double wt = wy[a] * wx[b];
      if (wt != 0.0) v += wt * (double)E::load(plane[(long long)ys[a] * w + xs[b]]);
    }
  return v;
}

// rois: (R, ROI_STRIDE) f64 rows; out: (R, C, ph, pw).
template <typename E>
__device__ void forward(const typename E::S* __restrict__ x, const double* __restrict__ rois,
                        typename E::S* __restrict__ out, long long total, int c, int h, int w,
                        int ph, int pw) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    int bx = (int)(i % pw);
    long long t = i / pw;
    int by = (int)(t % ph);
    t /= ph;
    int ch = (int)(t % c);
    long long r = t / c;
    const double* roi = rois + r * ROI_STRIDE;
    Grid g = grid_of(roi);
    const typename E::S* plane = x + ((long long)roi[0] * c + ch) * h * w;
    double acc = 0.0;
    for (int iy = 0; iy < g.gh; ++iy) {
      Axis ay = axis_of(sample_y(g, by, iy), h);
      if (!ay.valid) continue;
      for (int ix = 0; ix < g.gw; ++ix) {
        Axis ax = axis_of(sample_x(g, bx, ix), w);
        if (!ax.valid) continue;
        acc += bilinear<E>(plane, w, ay, ax) / g.count;
      }
    }
    out[i] = E::store((typename E::A)acc);
  }
}

// The weight of pixel `p` in a sample on this axis.
__device__ __forceinline__ double weight_at(const Axis& a, int p) {
  return (a.lo == p ? a.wlo : 0.0) + (a.hi == p ? a.whi : 0.0);
}

// One thread per input element (image, channel, y, x): the gradient every bin of every ROI
// of that image sends it, ROIs in order. first[img]..last[img] bound the image's ROIs.
template <typename E>
__device__ void backward(const typename E::S* __restrict__ grad, const double* __restrict__ rois,
                         const unsigned int* __restrict__ first,
                         const unsigned int* __restrict__ last,
                         typename E::S* __restrict__ gx, long long total, int c, int h, int w,
                         int ph, int pw) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    int px = (int)(i % w);
    long long t = i / w;
    int py = (int)(t % h);
    t /= h;
    int ch = (int)(t % c);
    int img = (int)(t / c);
    double acc = 0.0;
    for (unsigned int r = first[img]; r < last[img]; ++r) {
      const double* roi = rois + (long long)r * ROI_STRIDE;
      if ((int)roi[0] != img) continue;
      Grid g = grid_of(roi);
      // Samples lie between y0 and y0 + ph * bh (bh < 0 for an inverted box without the
      // size clamp); they touch rows within a pixel of that. Not finite: no shortcut.
      double y1 = g.y0 + ph * g.bh, x1 = g.x0 + pw * g.bw;
      double ylo = fmin(g.y0, y1), yhi = fmax(g.y0, y1);
      double xlo = fmin(g.x0, x1), xhi = fmax(g.x0, x1);
      if (isfinite(ylo) && isfinite(yhi) && (py < floor(ylo) - 1.0 || py > yhi + 1.0)) continue;
      if (isfinite(xlo) && isfinite(xhi) && (px < floor(xlo) - 1.0 || px > xhi + 1.0)) continue;
      const typename E::S* gr = grad + ((long long)r * c + ch) * ph * pw;
      for (int by = 0; by < ph; ++by) {
        for (int iy = 0; iy < g.gh; ++iy) {
          Axis ay = axis_of(sample_y(g, by, iy), h);
          if (!ay.valid) continue;
          double wy = weight_at(ay, py);
          if (wy == 0.0) continue;
          for (int bx = 0; bx < pw; ++bx) {
            double gv = (double)E::load(gr[by * pw + bx]);
            for (int ix = 0; ix < g.gw; ++ix) {
              Axis ax = axis_of(sample_x(g, bx, ix), w);
              if (!ax.valid) continue;
              double wx = weight_at(ax, px);
              if (wx != 0.0) acc += gv * (wy * wx / g.count);
            }
          }
        }
      }
    }
    gx[i] = E::store((typename E::A)acc);
  }
}

#define ROI_KERNELS(E, SUF)                                                                        \
  extern "C" __global__ void roi_align_forward_##SUF(const E::S* x, const double* rois,           \
      E::S* out, long long total, int c, int h, int w, int ph, int pw) {                           \
    forward<E>(x, rois, out, total, c, h, w, ph, pw);                                              \
  }                                                                                                \
  extern "C" __global__ void roi_align_backward_##SUF(const E::S* grad, const double* rois,       \
      const unsigned int* first, const unsigned int* last, E::S* gx, long long total, int c,       \
      int h, int w, int ph, int pw) {                                                              \
    backward<E>(grad, rois, first, last, gx, total, c, h, w, ph, pw);                              \
  }

ROI_KERNELS(f32_t, f32)
ROI_KERNELS(f64_t, f64)
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

/// Whether the kernels run for these features (CUDA, f32 or f64).
pub(super) fn supported(features: &Tensor) -> bool {
    features.device().is_cuda() && matches!(features.dtype(), DType::F32 | DType::F64)
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        other => candle_core::bail!("{WHAT} CUDA kernels: {other:?} is not supported"),
    }
}

/// The boxes on the device, and per image the range of ROI indices that holds its boxes.
#[derive(Clone)]
struct Rois {
    /// (R, 7) f64: image, then the ROI's grid (x0, y0, bw, bh, gw, gh).
    boxes: Tensor,
    /// (N) u32 each: the first ROI of each image and one past its last (equal if none).
    first: Tensor,
    last: Tensor,
    count: usize,
}

/// The geometry arguments after the tensors: c, h, w, ph, pw.
#[derive(Clone, Copy)]
struct Geometry {
    c: i32,
    h: i32,
    w: i32,
    ph: i32,
    pw: i32,
}

struct Forward {
    rois: Rois,
    geo: Geometry,
}

struct Backward {
    rois: Rois,
    geo: Geometry,
    images: usize,
}

/// The contiguous CUDA storage of `t`, typed.
fn with_storage<R>(t: &Tensor, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => f(s, layout),
        _ => candle_core::bail!("{WHAT}: the boxes must be on the features' CUDA device"),
    }
}

fn forward_typed<T: CudaDType + DeviceRepr>(
    op: &Forward,
    (xs, xl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let g = op.geo;
    let total = op.rois.count * g.c as usize * g.ph as usize * g.pw as usize;
    let dev = xs.device();
    let x = view::<T>(xs, xl, WHAT)?;
    // SAFETY: one thread per output element writes it (grid-stride).
    let out = unsafe { dev.alloc::<T>(total)? };
    with_storage(&op.rois.boxes, |bs, bl| {
        let boxes = view::<f64>(bs, bl, WHAT)?;
        let name = format!("roi_align_forward_{}", suffix(xs.dtype())?);
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx()?)?;
        let total_i64 = total as i64;
        let mut b = func.builder();
        b.arg(&x).arg(&boxes).arg(&out).arg(&total_i64);
        b.arg(&g.c).arg(&g.h).arg(&g.w).arg(&g.ph).arg(&g.pw);
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { b.launch(grid_1d(total)) }.w()?;
        Ok(())
    })?;
    Ok(out)
}

fn backward_typed<T: CudaDType + DeviceRepr>(
    op: &Backward,
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let g = op.geo;
    let total = op.images * g.c as usize * g.h as usize * g.w as usize;
    let dev = gs.device();
    let grad = view::<T>(gs, gl, WHAT)?;
    // SAFETY: one thread per input element writes it (grid-stride).
    let gx = unsafe { dev.alloc::<T>(total)? };
    with_storage(&op.rois.boxes, |bs, bl| {
        with_storage(&op.rois.first, |fs, fl| {
            with_storage(&op.rois.last, |ls, ll| {
                let boxes = view::<f64>(bs, bl, WHAT)?;
                let (first, last) = (view::<u32>(fs, fl, WHAT)?, view::<u32>(ls, ll, WHAT)?);
                let name = format!("roi_align_backward_{}", suffix(gs.dtype())?);
                let func = dev.get_or_load_custom_func(&name, MODULE, ptx()?)?;
                let total_i64 = total as i64;
                let mut b = func.builder();
                b.arg(&grad).arg(&boxes).arg(&first).arg(&last).arg(&gx);
                b.arg(&total_i64)
                    .arg(&g.c)
                    .arg(&g.h)
                    .arg(&g.w)
                    .arg(&g.ph)
                    .arg(&g.pw);
                // SAFETY: the arguments match the kernel's signature in SOURCE.
                unsafe { b.launch(grid_1d(total)) }.w()?;
                Ok(())
            })
        })
    })?;
    Ok(gx)
}

fn cuda_only<R>(op: &str) -> Result<R> {
    candle_core::bail!("{op} runs on CUDA only; the CPU has the planned op")
}

impl candle_core::CustomOp1 for Forward {
    fn name(&self) -> &'static str {
        "roi-align-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let out = match xs.dtype() {
            DType::F32 => CudaStorage::wrap_cuda_slice(forward_typed::<f32>(self, (xs, xl))?, dev),
            DType::F64 => CudaStorage::wrap_cuda_slice(forward_typed::<f64>(self, (xs, xl))?, dev),
            other => candle_core::bail!("{WHAT} CUDA kernels: {other:?} is not supported"),
        };
        let g = self.geo;
        let shape = (self.rois.count, g.c as usize, g.ph as usize, g.pw as usize);
        Ok((out, Shape::from(shape)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Backward {
            rois: self.rois.clone(),
            geo: self.geo,
            images: arg.dim(0)?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl candle_core::CustomOp1 for Backward {
    fn name(&self) -> &'static str {
        "roi-align-backward-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cuda_only(self.name())
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = gs.device().clone();
        let gx = match gs.dtype() {
            DType::F32 => CudaStorage::wrap_cuda_slice(backward_typed::<f32>(self, (gs, gl))?, dev),
            DType::F64 => CudaStorage::wrap_cuda_slice(backward_typed::<f64>(self, (gs, gl))?, dev),
            other => candle_core::bail!("{WHAT} CUDA kernels: {other:?} is not supported"),
        };
        let g = self.geo;
        let shape = (self.images, g.c as usize, g.h as usize, g.w as usize);
        Ok((gx, Shape::from(shape)))
    }
}

/// Pools `rois` (image index, XYXY box in input pixels) from CUDA `features` (N, C, H, W),
/// f32 or f64, into (R, C, out_h, out_w); differentiable in the features.
pub(super) fn roi_align(
    features: &Tensor,
    rois: &[(usize, [f32; 4])],
    p: &RoiAlignParams,
) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    if let Some(&(b, _)) = rois.iter().find(|r| r.0 >= n) {
        candle_core::bail!("roi_align: box of image {b} but the batch has {n} images");
    }
    let dev = features.device();
    let mut flat = Vec::with_capacity(rois.len() * 7);
    let (mut first, mut last) = (vec![0u32; n], vec![0u32; n]);
    for (i, (b, bx)) in rois.iter().enumerate() {
        let (b, g) = (*b, RoiGrid::new(bx, p));
        // The kernels count samples in `int`; a grid that large is no real box.
        if g.gw.max(g.gh) > i32::MAX as usize / g.gw.min(g.gh).max(1) {
            candle_core::bail!(
                "roi_align: box {bx:?} takes {} x {} samples per bin",
                g.gw,
                g.gh
            );
        }
        flat.extend([b as f64, g.x0, g.y0, g.bw, g.bh, g.gw as f64, g.gh as f64]);
        let i = i32_of(i, WHAT)? as u32;
        if first[b] == last[b] {
            first[b] = i;
        }
        last[b] = i + 1;
    }
    let (ph, pw) = p.output_size;
    let geo = Geometry {
        c: i32_of(c, WHAT)?,
        h: i32_of(h, WHAT)?,
        w: i32_of(w, WHAT)?,
        ph: i32_of(ph, WHAT)?,
        pw: i32_of(pw, WHAT)?,
    };
    let rois = Rois {
        boxes: Tensor::from_vec(flat, (rois.len(), 7), dev)?,
        first: Tensor::from_vec(first, n, dev)?,
        last: Tensor::from_vec(last, n, dev)?,
        count: rois.len(),
    };
    features.contiguous()?.apply_op1(Forward { rois, geo })
}
