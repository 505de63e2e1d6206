//! CUDA kernels for the depthwise convolution op of [`super::depthwise`].
//!
//! Candle's grouped convolution on CUDA goes through cuDNN when it is enabled and through
//! its im2col + matmul path otherwise; the portable path of stock ops launches K x K x 4
//! kernels per layer and keeps K x K intermediate tensors for autograd. These three
//! kernels do the convolution and both gradients in one pass each (the weight gradient in
//! two, to stay deterministic without atomics), in f32, f64, and in bf16 and f16 with f32
//! accumulation (mixed precision). The source is compiled once per process
//! with NVRTC, so the build needs no nvcc beyond what Candle's own kernels need.

use super::cuda_kernels::{self, grid_1d, THREADS};
use super::geometry::ConvGeometry;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape};
use std::sync::OnceLock;

const MODULE: &str = "candletron_depthwise";

/// One thread per output (forward) or input (input gradient) element, so every element
/// is written exactly once with no atomics; the weight gradient reduces each
/// (image, channel, tap) in a block, then sums the images in a fixed order.
const SOURCE: &str = r#"
// The element-wise kernels take their index type I: unsigned int where the element count
// allows (64-bit division is a software routine on the GPU, and the index arithmetic is a
// large part of a 3x3 depthwise element's work), long long beyond. Offsets into the other
// tensor are 64-bit either way.
template <typename E, typename I>
__device__ void dw_forward(const typename E::S* __restrict__ x, const typename E::S* __restrict__ wt,
                           typename E::S* __restrict__ y, long long total, int c, int h, int w,
                           int k, int ho, int wo, int s, int p, int d) {
  typedef typename E::A A;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < (I)total;
       i += (I)gridDim.x * blockDim.x) {
    int ox = (int)(i % (I)wo);
    I t = i / (I)wo;
    int oy = (int)(t % (I)ho);
    I plane = t / (I)ho;
    int ch = (int)(plane % (I)c);
    const typename E::S* xp = x + (long long)plane * h * w;
    const typename E::S* wp = wt + (long long)ch * k * k;
    int iy0 = oy * s - p, ix0 = ox * s - p;
    A acc = 0;
    for (int ky = 0; ky < k; ++ky) {
      int iy = iy0 + ky * d;
      if (iy < 0 || iy >= h) continue;
      for (int kx = 0; kx < k; ++kx) {
        int ix = ix0 + kx * d;
        if (ix < 0 || ix >= w) continue;
        acc += E::load(wp[ky * k + kx]) * E::load(xp[(long long)iy * w + ix]);
      }
    }
    y[i] = E::store(acc);
  }
}

template <typename E, typename I>
__device__ void dw_input_grad(const typename E::S* __restrict__ g,
                              const typename E::S* __restrict__ wt, typename E::S* __restrict__ gx,
                              long long total, int c, int h, int w, int k, int ho, int wo,
                              int s, int p, int d) {
  typedef typename E::A A;
  for (I i = blockIdx.x * (I)blockDim.x + threadIdx.x; i < (I)total;
       i += (I)gridDim.x * blockDim.x) {
    int ix = (int)(i % (I)w);
    I t = i / (I)w;
    int iy = (int)(t % (I)h);
    I plane = t / (I)h;
    int ch = (int)(plane % (I)c);
    const typename E::S* gp = g + (long long)plane * ho * wo;
    const typename E::S* wp = wt + (long long)ch * k * k;
    A acc = 0;
    for (int ky = 0; ky < k; ++ky) {
      int ny = iy + p - ky * d;
      if (ny < 0 || ny % s != 0) continue;
      int oy = ny / s;
      if (oy >= ho) continue;
      for (int kx = 0; kx < k; ++kx) {
        int nx = ix + p - kx * d;
        if (nx < 0 || nx % s != 0) continue;
        int ox = nx / s;
        if (ox >= wo) continue;
        acc += E::load(wp[ky * k + kx]) * E::load(gp[(long long)oy * wo + ox]);
      }
    }
    gx[i] = E::store(acc);
  }
}

// Block (channel * k * k + tap, image): one partial sum per image, in the accumulator
// type, written to part[image][channel][tap]. Blocks are 256 threads.
template <typename E>
__device__ void dw_weight_grad_partial(const typename E::S* __restrict__ x,
                                       const typename E::S* __restrict__ g,
                                       typename E::A* __restrict__ part, int c, int h, int w,
                                       int k, int ho, int wo, int s, int p, int d) {
  typedef typename E::A A;
  __shared__ A warp_sums[32];
  int kk = k * k;
  int ch = blockIdx.x / kk, tap = blockIdx.x % kk;
  int ky = tap / k, kx = tap % k;
  long long plane = (long long)blockIdx.y * c + ch;
  const typename E::S* xp = x + plane * h * w;
  const typename E::S* gp = g + plane * ho * wo;
  A acc = 0;
  int count = ho * wo;
  for (int j = threadIdx.x; j < count; j += blockDim.x) {
    int oy = j / wo, ox = j % wo;
    int iy = oy * s - p + ky * d, ix = ox * s - p + kx * d;
    if (iy >= 0 && iy < h && ix >= 0 && ix < w)
      acc += E::load(gp[j]) * E::load(xp[(long long)iy * w + ix]);
  }
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    int warps = (blockDim.x + 31) >> 5;
    acc = lane < warps ? warp_sums[lane] : (A)0;
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) part[(long long)blockIdx.y * c * kk + blockIdx.x] = acc;
  }
}

template <typename E>
__device__ void sum_images(const typename E::A* __restrict__ part, typename E::S* __restrict__ out,
                           int n, int len) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= len) return;
  typename E::A acc = 0;
  for (int b = 0; b < n; ++b) acc += part[(long long)b * len + i];
  out[i] = E::store(acc);
}

#define DW_KERNELS(E, SUF)                                                                         \
  extern "C" __global__ void dw_forward_##SUF(const E::S* x, const E::S* wt, E::S* y,             \
      long long total, int c, int h, int w, int k, int ho, int wo, int s, int p, int d) {         \
    dw_forward<E, unsigned int>(x, wt, y, total, c, h, w, k, ho, wo, s, p, d);                    \
  }                                                                                                \
  extern "C" __global__ void dw_forward_wide_##SUF(const E::S* x, const E::S* wt, E::S* y,        \
      long long total, int c, int h, int w, int k, int ho, int wo, int s, int p, int d) {         \
    dw_forward<E, long long>(x, wt, y, total, c, h, w, k, ho, wo, s, p, d);                       \
  }                                                                                                \
  extern "C" __global__ void dw_input_grad_##SUF(const E::S* g, const E::S* wt, E::S* gx,        \
      long long total, int c, int h, int w, int k, int ho, int wo, int s, int p, int d) {         \
    dw_input_grad<E, unsigned int>(g, wt, gx, total, c, h, w, k, ho, wo, s, p, d);                \
  }                                                                                                \
  extern "C" __global__ void dw_input_grad_wide_##SUF(const E::S* g, const E::S* wt, E::S* gx,   \
      long long total, int c, int h, int w, int k, int ho, int wo, int s, int p, int d) {         \
    dw_input_grad<E, long long>(g, wt, gx, total, c, h, w, k, ho, wo, s, p, d);                   \
  }                                                                                                \
  extern "C" __global__ void dw_weight_grad_partial_##SUF(const E::S* x, const E::S* g,          \
      E::A* part, int c, int h, int w, int k, int ho, int wo, int s, int p, int d) {              \
    dw_weight_grad_partial<E>(x, g, part, c, h, w, k, ho, wo, s, p, d);                           \
  }                                                                                                \
  extern "C" __global__ void dw_sum_images_##SUF(const E::A* part, E::S* out, int n, int len) {   \
    sum_images<E>(part, out, n, len);                                                              \
  }

DW_KERNELS(f32_t, f32)
DW_KERNELS(f64_t, f64)
DW_KERNELS(bf16_t, bf16)
DW_KERNELS(f16_t, f16)
"#;

const WHAT: &str = "depthwise conv";

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

fn suffix(dtype: DType) -> Result<&'static str> {
    cuda_kernels::suffix(dtype, WHAT)
}

/// Whether the kernels cover this dtype; callers fall back to the portable path if not.
pub fn supports(dtype: DType) -> bool {
    suffix(dtype).is_ok()
}

fn i32_of(v: usize) -> Result<i32> {
    cuda_kernels::i32_of(v, WHAT)
}

/// The geometry as kernel arguments: c, h, w, k, ho, wo, stride, padding, dilation.
struct Geometry([i32; 9]);

impl Geometry {
    /// `[c, h, w, k, ho, wo]` and the geometry.
    fn new(p: &ConvGeometry, [c, h, w, k, ho, wo]: [usize; 6]) -> Result<Self> {
        let mut g = [0i32; 9];
        for (slot, v) in g
            .iter_mut()
            .zip([c, h, w, k, ho, wo, p.stride, p.padding, p.dilation])
        {
            *slot = i32_of(v)?;
        }
        Ok(Geometry(g))
    }
}

fn view<'a, T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    cuda_kernels::view(s, l, WHAT)
}

/// Launches an element-wise kernel (forward or input gradient): `a`, `b` in, `total` out.
fn elementwise<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
    name: &str,
    dev: &CudaDevice,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    total: usize,
    geo: &Geometry,
) -> Result<CudaSlice<T>> {
    let func = dev.get_or_load_custom_func(name, MODULE, ptx()?)?;
    let (av, bv) = (view::<T>(a.0, a.1)?, view::<T>(b.0, b.1)?);
    // SAFETY: every element is written by the kernel (one thread per element).
    let out = unsafe { dev.alloc::<T>(total)? };
    let total_i64 = total as i64;
    let mut builder = func.builder();
    builder.arg(&av);
    builder.arg(&bv);
    builder.arg(&out);
    builder.arg(&total_i64);
    for v in &geo.0 {
        builder.arg(v);
    }
    let cfg = grid_1d(total);
    // SAFETY: the argument list matches the kernel's signature in SOURCE.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

/// `elementwise` for the storage's dtype, wrapped as a storage.
fn elementwise_storage(
    root: &str,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    total: usize,
    geo: &Geometry,
) -> Result<CudaStorage> {
    let dev = a.0.device();
    // 32-bit index arithmetic while every index fits (the `_wide` kernels beyond).
    let wide = if total > i32::MAX as usize {
        "_wide"
    } else {
        ""
    };
    let name = format!("{root}{wide}_{}", suffix(a.0.dtype())?);
    match a.0.dtype() {
        DType::F32 => Ok(CudaStorage::wrap_cuda_slice(
            elementwise::<f32>(&name, dev, a, b, total, geo)?,
            dev.clone(),
        )),
        DType::F64 => Ok(CudaStorage::wrap_cuda_slice(
            elementwise::<f64>(&name, dev, a, b, total, geo)?,
            dev.clone(),
        )),
        DType::BF16 => Ok(CudaStorage::wrap_cuda_slice(
            elementwise::<half::bf16>(&name, dev, a, b, total, geo)?,
            dev.clone(),
        )),
        DType::F16 => Ok(CudaStorage::wrap_cuda_slice(
            elementwise::<half::f16>(&name, dev, a, b, total, geo)?,
            dev.clone(),
        )),
        other => candle_core::bail!("depthwise conv CUDA kernels: {other:?} is not supported"),
    }
}

pub(super) fn forward(
    p: &ConvGeometry,
    xs: &CudaStorage,
    xl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = xl.shape().dims4()?;
    let (_, _, k, _) = wl.shape().dims4()?;
    let (ho, wo) = (p.out_size(h, k)?, p.out_size(w, k)?);
    let geo = Geometry::new(p, [c, h, w, k, ho, wo])?;
    let total = n * c * ho * wo;
    let storage = elementwise_storage("dw_forward", (xs, xl), (ws, wl), total, &geo)?;
    Ok((storage, Shape::from((n, c, ho, wo))))
}

pub(super) fn input_grad(
    p: &ConvGeometry,
    (h, w): (usize, usize),
    gs: &CudaStorage,
    gl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, c, ho, wo) = gl.shape().dims4()?;
    let (_, _, k, _) = wl.shape().dims4()?;
    let geo = Geometry::new(p, [c, h, w, k, ho, wo])?;
    let total = n * c * h * w;
    let storage = elementwise_storage("dw_input_grad", (gs, gl), (ws, wl), total, &geo)?;
    Ok((storage, Shape::from((n, c, h, w))))
}

/// `T` the storage type, `A` the kernels' accumulator (f32 for bf16 and f16).
fn weight_grad_typed<T, A>(
    dev: &CudaDevice,
    sfx: &str,
    x: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    n: usize,
    geo: &Geometry,
) -> Result<CudaSlice<T>>
where
    T: candle_core::cuda_backend::CudaDType + DeviceRepr,
    A: DeviceRepr,
{
    let [c, _, _, k, ..] = geo.0.map(|v| v as usize);
    let len = c * k * k;
    let (xv, gv) = (view::<T>(x.0, x.1)?, view::<T>(g.0, g.1)?);
    // SAFETY: one block per (channel, tap, image) writes each partial once.
    let part = unsafe { dev.alloc::<A>(n * len)? };
    let func =
        dev.get_or_load_custom_func(&format!("dw_weight_grad_partial_{sfx}"), MODULE, ptx()?)?;
    let mut builder = func.builder();
    builder.arg(&xv);
    builder.arg(&gv);
    builder.arg(&part);
    for v in &geo.0 {
        builder.arg(v);
    }
    let cfg = LaunchConfig {
        grid_dim: (len as u32, n as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the argument list matches the kernel's signature in SOURCE.
    unsafe { builder.launch(cfg) }.w()?;

    // SAFETY: one thread per output element writes it.
    let out = unsafe { dev.alloc::<T>(len)? };
    let func = dev.get_or_load_custom_func(&format!("dw_sum_images_{sfx}"), MODULE, ptx()?)?;
    let (n_i32, len_i32) = (i32_of(n)?, i32_of(len)?);
    let mut builder = func.builder();
    builder.arg(&part);
    builder.arg(&out);
    builder.arg(&n_i32);
    builder.arg(&len_i32);
    let cfg = grid_1d(len);
    // SAFETY: as above.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

pub(super) fn weight_grad(
    p: &ConvGeometry,
    k: usize,
    xs: &CudaStorage,
    xl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = xl.shape().dims4()?;
    let (_, _, ho, wo) = gl.shape().dims4()?;
    if n > 65_535 {
        candle_core::bail!("depthwise conv CUDA weight gradient: batch {n} exceeds 65535");
    }
    let geo = Geometry::new(p, [c, h, w, k, ho, wo])?;
    let dev = xs.device();
    let sfx = suffix(xs.dtype())?;
    let (x, g) = ((xs, xl), (gs, gl));
    let storage = match xs.dtype() {
        DType::F32 => CudaStorage::wrap_cuda_slice(
            weight_grad_typed::<f32, f32>(dev, sfx, x, g, n, &geo)?,
            dev.clone(),
        ),
        DType::F64 => CudaStorage::wrap_cuda_slice(
            weight_grad_typed::<f64, f64>(dev, sfx, x, g, n, &geo)?,
            dev.clone(),
        ),
        DType::BF16 => CudaStorage::wrap_cuda_slice(
            weight_grad_typed::<half::bf16, f32>(dev, sfx, x, g, n, &geo)?,
            dev.clone(),
        ),
        _ => CudaStorage::wrap_cuda_slice(
            weight_grad_typed::<half::f16, f32>(dev, sfx, x, g, n, &geo)?,
            dev.clone(),
        ),
    };
    Ok((storage, Shape::from((c, 1, k, k))))
}
