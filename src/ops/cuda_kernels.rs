//! What the NVRTC-compiled kernels of `ops` share: compiling a module's source once per
//! process, grid sizes, and typed views of contiguous CUDA storage.

use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, Layout, Result};
use std::sync::OnceLock;

/// Threads per block of every kernel here.
pub(super) const THREADS: u32 = 256;

/// The PTX of `source`, compiled on first use and kept in `cache`; `what` names the
/// kernels in the error.
pub(super) fn ptx(
    cache: &'static OnceLock<std::result::Result<String, String>>,
    source: &str,
    what: &str,
) -> Result<&'static str> {
    cache
        .get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(source)
                .map(|p| p.to_src())
                .map_err(|e| format!("{e:?}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("{what}: NVRTC failed: {e}")))
}

/// Blocks for one thread per element (grid-stride loops take the rest).
pub(super) fn blocks(total: usize) -> u32 {
    total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32
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
