//! What the NVRTC-compiled kernels of `ops` share: the element types, compiling a module's
//! source once per process, grid sizes, and typed views of contiguous CUDA storage.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Result};
use std::sync::OnceLock;

/// Threads per block of every kernel here.
pub(super) const THREADS: u32 = 256;

/// Compiled before every kernel source (`tools/compare/nvrtc_check.py` and the CPU
/// emulation test do the same): the element types that kernels generic over the dtype
/// take as `E`.
const PRELUDE: &str = r#"
// Element types: storage S, accumulator A. f32 and f64 accumulate in themselves; bf16 and
// f16 (16-bit words, converted here because NVRTC may lack the CUDA headers) accumulate in
// f32 and round once per output, as cuDNN's narrow convolutions do.
struct f32_t {
  typedef float S; typedef float A;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};
struct f64_t {
  typedef double S; typedef double A;
  static __device__ __forceinline__ A load(S v) { return v; }
  static __device__ __forceinline__ S store(A v) { return v; }
};
struct bf16_t {
  typedef unsigned short S; typedef float A;
  static __device__ __forceinline__ A load(S v) { return __uint_as_float(((unsigned int)v) << 16); }
  // Round to nearest even; NaN stays a (quiet) NaN.
  static __device__ __forceinline__ S store(A v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (S)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (S)(u >> 16);
  }
};
struct f16_t {
  typedef unsigned short S; typedef float A;
  static __device__ __forceinline__ A load(S v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
  }
  static __device__ __forceinline__ S store(A v) {
    S h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
  }
};
"#;

/// The PTX of `source` after [`PRELUDE`], compiled on first use and kept in `cache`;
/// `what` names the kernels in the error.
pub(super) fn ptx(
    cache: &'static OnceLock<std::result::Result<String, String>>,
    source: &str,
    what: &str,
) -> Result<&'static str> {
    cache
        .get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(format!("{PRELUDE}{source}"))
                .map(|p| p.to_src())
                .map_err(|e| format!("{e:?}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("{what}: NVRTC failed: {e}")))
}

/// The kernel name suffix of the prelude's element type for `dtype` (f32, f64, bf16, f16);
/// `what` names the kernels in the error.
pub(super) fn suffix(dtype: DType, what: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        DType::BF16 => Ok("bf16"),
        DType::F16 => Ok("f16"),
        other => candle_core::bail!("{what} CUDA kernels: {other:?} is not supported"),
    }
}

/// Blocks for one thread per element (grid-stride loops take the rest).
pub(super) fn blocks(total: usize) -> u32 {
    total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32
}

/// The 1-D launch of a one-thread-per-element kernel over `total` elements.
pub(super) fn grid_1d(total: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(total), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `v` as a kernel's `int`.
pub(super) fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} overflows i32")))
}

/// The elements of a contiguous `(storage, layout)` as a typed device view.
pub(super) fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: the CUDA kernels need contiguous inputs");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}
