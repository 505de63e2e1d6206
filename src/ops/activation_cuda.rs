//! ReLU6 and its gradient, and bias + activation, as one CUDA kernel each: the GPU
//! counterparts of the CPU ops in `activation.rs`.
//!
//! From stock ops, ReLU6 is a clamp (a maximum, then a minimum: two passes over the tensor)
//! whose gradient autograd builds from comparisons and selects, several passes more; and a
//! bias before an activation is a broadcast add, one more pass. Here each is a single pass.
//! The semantics are the CPU ops': NaN passes through ReLU and ReLU6, the gradient flows
//! where 0 < x < 6 (PyTorch's hardtanh backward), and bf16/f16 compute in f32 and round once.

use super::activation::Activation;
use super::cuda_kernels::{self, grid_1d, i32_of, suffix, view, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use std::sync::OnceLock;

const WHAT: &str = "activation";
const MODULE: &str = "candletron_activation";

const SOURCE: &str = r#"
// Activations in the accumulator type: 0 identity, 1 ReLU, 2 ReLU6, 3 Mish. Compare and
// select, so a NaN input stays NaN.
template <typename A>
__device__ __forceinline__ A act(int kind, A v) {
  if (kind == 1 || kind == 2) {
    v = v < (A)0 ? (A)0 : v;
    if (kind == 2) v = v > (A)6 ? (A)6 : v;
  } else if (kind == 3) {
    A sp = (v > (A)0 ? v : (A)0) + log1p(exp(-fabs(v)));
    v = v * tanh(sp);
  }
  return v;
}

template <typename E>
__device__ void relu6_forward(const typename E::S* __restrict__ x, typename E::S* __restrict__ y,
                              long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x)
    y[i] = E::store(act(2, E::load(x[i])));
}

// The output gradient where 0 < x < 6, else +0.
template <typename E>
__device__ void relu6_backward(const typename E::S* __restrict__ x,
                               const typename E::S* __restrict__ g, typename E::S* __restrict__ gx,
                               long long n) {
  typedef typename E::A A;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    A v = E::load(x[i]);
    gx[i] = (v > (A)0 && v < (A)6) ? g[i] : E::store((A)0);
  }
}

// On a (plane, pixel block) grid: the plane's channel is the block's, no per-element division;
// planes of more than 65535 blocks are covered by a stride.
template <typename E>
__device__ void bias_act(const typename E::S* __restrict__ x, const typename E::S* __restrict__ b,
                         typename E::S* __restrict__ y, int c, int hw, int kind) {
  int ch = (int)(blockIdx.x % (unsigned int)c);
  const typename E::A bias = E::load(b[ch]);
  for (unsigned int p = blockIdx.y * blockDim.x + threadIdx.x; p < (unsigned int)hw;
       p += gridDim.y * blockDim.x) {
    long long i = (long long)blockIdx.x * hw + p;
    y[i] = E::store(act(kind, E::load(x[i]) + bias));
  }
}

#define ACT_KERNELS(E, SUF)                                                                        \
  extern "C" __global__ void relu6_forward_##SUF(const E::S* x, E::S* y, long long n) {           \
    relu6_forward<E>(x, y, n);                                                                     \
  }                                                                                                \
  extern "C" __global__ void relu6_backward_##SUF(const E::S* x, const E::S* g, E::S* gx,         \
      long long n) {                                                                               \
    relu6_backward<E>(x, g, gx, n);                                                                \
  }                                                                                                \
  extern "C" __global__ void bias_act_##SUF(const E::S* x, const E::S* b, E::S* y, int c, int hw, \
      int kind) {                                                                                  \
    bias_act<E>(x, b, y, c, hw, kind);                                                             \
  }

ACT_KERNELS(f32_t, f32)
ACT_KERNELS(f64_t, f64)
ACT_KERNELS(bf16_t, bf16)
ACT_KERNELS(f16_t, f16)
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

/// Whether the kernels cover this dtype; callers keep the stock ops otherwise.
pub(super) fn supports(dtype: DType) -> bool {
    suffix(dtype, WHAT).is_ok()
}

/// The activation's number in SOURCE.
fn kind(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::ReLU => 1,
        Activation::ReLU6 => 2,
        Activation::Mish => 3,
    }
}

/// Runs `launch::<T>` for the storage's dtype and wraps its result.
macro_rules! for_dtype {
    ($s:expr, $launch:ident ($($arg:expr),*)) => {{
        let dev = $s.device().clone();
        match $s.dtype() {
            DType::F32 => CudaStorage::wrap_cuda_slice($launch::<f32>($($arg),*)?, dev),
            DType::F64 => CudaStorage::wrap_cuda_slice($launch::<f64>($($arg),*)?, dev),
            DType::BF16 => CudaStorage::wrap_cuda_slice($launch::<half::bf16>($($arg),*)?, dev),
            DType::F16 => CudaStorage::wrap_cuda_slice($launch::<half::f16>($($arg),*)?, dev),
            other => candle_core::bail!("{WHAT} CUDA kernels: {other:?} is not supported"),
        }
    }};
}

fn name(root: &str, dtype: DType) -> Result<String> {
    Ok(format!("{root}_{}", suffix(dtype, WHAT)?))
}

fn relu6_typed<T: CudaDType + DeviceRepr>(
    (xs, xl): (&CudaStorage, &Layout),
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
    let n = xl.shape().elem_count();
    let dev = xs.device();
    let x = view::<T>(xs, xl, WHAT)?;
    // SAFETY: one thread per element writes it (grid-stride).
    let y = unsafe { dev.alloc::<T>(n)? };
    if n > 0 {
        let func =
            dev.get_or_load_custom_func(&name("relu6_forward", xs.dtype())?, MODULE, ptx()?)?;
        let n_i64 = n as i64;
        let mut builder = func.builder();
        builder.arg(&x).arg(&y).arg(&n_i64);
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(grid_1d(n)) }.w()?;
    }
    Ok(y)
}

/// `clamp(x, 0, 6)` of a contiguous input.
pub(super) fn relu6(xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
    Ok((for_dtype!(xs, relu6_typed((xs, xl))), xl.shape().clone()))
}

fn relu6_grad_typed<T: CudaDType + DeviceRepr>(
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
    let n = xl.shape().elem_count();
    let dev = xs.device();
    let (x, g) = (view::<T>(xs, xl, WHAT)?, view::<T>(gs, gl, WHAT)?);
    // SAFETY: one thread per element writes it (grid-stride).
    let gx = unsafe { dev.alloc::<T>(n)? };
    if n > 0 {
        let func =
            dev.get_or_load_custom_func(&name("relu6_backward", xs.dtype())?, MODULE, ptx()?)?;
        let n_i64 = n as i64;
        let mut builder = func.builder();
        builder.arg(&x).arg(&g).arg(&gx).arg(&n_i64);
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(grid_1d(n)) }.w()?;
    }
    Ok(gx)
}

/// The gradient of [`relu6`] at `x` for the output gradient `g` (same shape and dtype).
pub(super) fn relu6_grad(
    xs: &CudaStorage,
    xl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    if xl.shape() != gl.shape() || xs.dtype() != gs.dtype() {
        candle_core::bail!(
            "relu6-grad: input {:?} {:?}, gradient {:?} {:?}",
            xl.dims(),
            xs.dtype(),
            gl.dims(),
            gs.dtype()
        );
    }
    Ok((
        for_dtype!(xs, relu6_grad_typed((xs, xl), (gs, gl))),
        xl.shape().clone(),
    ))
}

fn bias_act_typed<T: CudaDType + DeviceRepr>(
    a: Activation,
    (xs, xl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>> {
    let (n, c, h, w) = xl.shape().dims4()?;
    let (planes, hw) = (n * c, h * w);
    let dev = xs.device();
    let (x, b) = (view::<T>(xs, xl, WHAT)?, view::<T>(bs, bl, WHAT)?);
    // SAFETY: block (plane, pixel block) writes its pixels of the plane; every block runs.
    let y = unsafe { dev.alloc::<T>(planes * hw)? };
    if planes * hw > 0 {
        let pixel_blocks = hw.div_ceil(THREADS as usize).min(65_535);
        if planes > i32::MAX as usize {
            candle_core::bail!("bias-act: {planes} planes exceed the grid");
        }
        let func = dev.get_or_load_custom_func(&name("bias_act", xs.dtype())?, MODULE, ptx()?)?;
        let (ci, hwi, k) = (i32_of(c, WHAT)?, i32_of(hw, WHAT)?, kind(a));
        let mut builder = func.builder();
        builder.arg(&x).arg(&b).arg(&y).arg(&ci).arg(&hwi).arg(&k);
        let cfg = LaunchConfig {
            grid_dim: (planes as u32, pixel_blocks as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok(y)
}

/// `a(x + b[channel])` for contiguous `x` (N, C, H, W) and `b` (C) of the same dtype.
pub(super) fn bias_act(
    a: Activation,
    xs: &CudaStorage,
    xl: &Layout,
    bs: &CudaStorage,
    bl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let c = xl.shape().dims4()?.1;
    if bl.shape().elem_count() != c || bs.dtype() != xs.dtype() {
        candle_core::bail!(
            "bias-act: {} {:?} biases for {c} {:?} channels",
            bl.shape().elem_count(),
            bs.dtype(),
            xs.dtype()
        );
    }
    Ok((
        for_dtype!(xs, bias_act_typed(a, (xs, xl), (bs, bl))),
        xl.shape().clone(),
    ))
}
