//! The CUDA kernels of [`super::im2col`]: one thread per column element (im2col, a copy)
//! or per input element (col2im, a gather over the taps that read it, in (ky, kx) order,
//! summed in the prelude's accumulator and rounded once), grid-stride, 64-bit indices.

use super::cuda_kernels::{self, grid_1d, i32_of, suffix, view};
use super::im2col::Im2colDims;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result};
use std::sync::OnceLock;

const WHAT: &str = "im2col";
const MODULE: &str = "candletron_im2col";

const SOURCE: &str = r#"
// Geometry: c channels, h x w input, k x k kernel, stride s, padding p, dilation d, ho x wo out.
struct Geo {
  int c, h, w, k, s, p, d, ho, wo;
};

template <typename E>
__device__ void im2col(const typename E::S* __restrict__ x, typename E::S* __restrict__ cols,
                       long long total, Geo g) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    int ox = (int)(i % g.wo);
    long long t = i / g.wo;
    int oy = (int)(t % g.ho);
    t /= g.ho;
    int kx = (int)(t % g.k);
    t /= g.k;
    int ky = (int)(t % g.k);
    long long nc = t / g.k;
    int iy = oy * g.s - g.p + ky * g.d, ix = ox * g.s - g.p + kx * g.d;
    bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
    cols[i] = inside ? x[(nc * g.h + iy) * g.w + ix] : E::store((typename E::A)0);
  }
}

template <typename E>
__device__ void col2im(const typename E::S* __restrict__ cols, typename E::S* __restrict__ x,
                       long long total, Geo g) {
  typedef typename E::A A;
  const long long col_plane = (long long)g.ho * g.wo;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    int ix = (int)(i % g.w);
    long long t = i / g.w;
    int iy = (int)(t % g.h);
    long long nc = t / g.h;
    const typename E::S* base = cols + nc * g.k * g.k * col_plane;
    A acc = (A)0;
    for (int ky = 0; ky < g.k; ++ky) {
      int ty = iy + g.p - ky * g.d;
      if (ty < 0 || ty % g.s != 0 || ty / g.s >= g.ho) continue;
      for (int kx = 0; kx < g.k; ++kx) {
        int tx = ix + g.p - kx * g.d;
        if (tx < 0 || tx % g.s != 0 || tx / g.s >= g.wo) continue;
        acc = acc + E::load(base[(ky * g.k + kx) * col_plane + (ty / g.s) * g.wo + tx / g.s]);
      }
    }
    x[i] = E::store(acc);
  }
}

#define IM2COL_KERNELS(E, SUF)                                                                     \
  extern "C" __global__ void im2col_##SUF(const E::S* x, E::S* cols, long long total, int c,      \
      int h, int w, int k, int s, int p, int d, int ho, int wo) {                                  \
    im2col<E>(x, cols, total, Geo{c, h, w, k, s, p, d, ho, wo});                                   \
  }                                                                                                \
  extern "C" __global__ void col2im_##SUF(const E::S* cols, E::S* x, long long total, int c,      \
      int h, int w, int k, int s, int p, int d, int ho, int wo) {                                  \
    col2im<E>(cols, x, total, Geo{c, h, w, k, s, p, d, ho, wo});                                   \
  }

IM2COL_KERNELS(f32_t, f32)
IM2COL_KERNELS(f64_t, f64)
IM2COL_KERNELS(bf16_t, bf16)
IM2COL_KERNELS(f16_t, f16)
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

/// Launches `root`_`dtype` over `total` outputs from `src`, the geometry after the counts.
fn run<T: CudaDType + DeviceRepr>(
    root: &str,
    (s, l): (&CudaStorage, &Layout),
    d: &Im2colDims,
    total: usize,
) -> Result<CudaSlice<T>> {
    let dev = s.device();
    let src = view::<T>(s, l, WHAT)?;
    // SAFETY: one thread per output element writes it (grid-stride).
    let out = unsafe { dev.alloc::<T>(total)? };
    if total > 0 {
        let name = format!("{root}_{}", suffix(s.dtype(), WHAT)?);
        let func = dev.get_or_load_custom_func(&name, MODULE, ptx()?)?;
        let geo = [
            d.c,
            d.h,
            d.w,
            d.k,
            d.g.stride,
            d.g.padding,
            d.g.dilation,
            d.ho,
            d.wo,
        ]
        .iter()
        .map(|&v| i32_of(v, WHAT))
        .collect::<Result<Vec<i32>>>()?;
        let total_i64 = total as i64;
        let mut b = func.builder();
        b.arg(&src).arg(&out).arg(&total_i64);
        for v in &geo {
            b.arg(v);
        }
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { b.launch(grid_1d(total)) }.w()?;
    }
    Ok(out)
}

macro_rules! for_dtype {
    ($s:expr, $l:expr, $root:expr, $d:expr, $total:expr) => {{
        let dev = $s.device().clone();
        Ok(match $s.dtype() {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(run::<f32>($root, ($s, $l), $d, $total)?, dev)
            }
            DType::F64 => {
                CudaStorage::wrap_cuda_slice(run::<f64>($root, ($s, $l), $d, $total)?, dev)
            }
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(run::<half::bf16>($root, ($s, $l), $d, $total)?, dev)
            }
            DType::F16 => {
                CudaStorage::wrap_cuda_slice(run::<half::f16>($root, ($s, $l), $d, $total)?, dev)
            }
            other => candle_core::bail!("{WHAT} CUDA kernels: {other:?} is not supported"),
        })
    }};
}

pub(super) fn im2col(s: &CudaStorage, l: &Layout, d: &Im2colDims) -> Result<CudaStorage> {
    let total = d.n * d.c * d.k * d.k * d.ho * d.wo;
    for_dtype!(s, l, "im2col", d, total)
}

pub(super) fn col2im(s: &CudaStorage, l: &Layout, d: &Im2colDims) -> Result<CudaStorage> {
    let total = d.n * d.c * d.h * d.w;
    for_dtype!(s, l, "col2im", d, total)
}
