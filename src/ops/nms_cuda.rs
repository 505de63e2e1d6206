//! The CUDA kernel of [`super::nms_segments`]: one block per image and segment (a launch
//! per segment) walks the segment's boxes in rank order; the output row holds which
//! boxes are still alive, and each kept box clears the later ones it overlaps, the
//! block's threads splitting them. The IoU uses explicitly rounded operations, so no
//! multiply-add is fused and each value is the host's.

use super::cuda_kernels::{self, i32_of, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};
use std::sync::OnceLock;

const WHAT: &str = "nms_segments";

const SOURCE: &str = r#"
__device__ __forceinline__ float box_area(const float* b) {
  return __fmul_rn(fmaxf(__fsub_rn(b[2], b[0]), 0.0f), fmaxf(__fsub_rn(b[3], b[1]), 0.0f));
}

// boxes (N, S, 4) in rank order within each segment, cand and alive (N, S); the block of
// image blockIdx.x handles boxes [a, b) of its row.
extern "C" __global__ void nms_segment(const float* __restrict__ boxes,
                                       const unsigned char* __restrict__ cand,
                                       unsigned char* alive, int s, int a, int b,
                                       float threshold) {
  const long long row = (long long)blockIdx.x * s;
  const float* bx = boxes + row * 4;
  unsigned char* live = alive + row;
  for (int j = a + (int)threadIdx.x; j < b; j += blockDim.x) live[j] = cand[row + j] != 0;
  for (int i = a; i < b; ++i) {
    // Box i's fate is settled by the boxes before it; the barrier makes their writes seen.
    __syncthreads();
    if (!live[i]) continue;
    const float* p = bx + (long long)i * 4;
    const float ax0 = p[0], ay0 = p[1], ax1 = p[2], ay1 = p[3];
    const float aa = box_area(p);
    for (int j = i + 1 + (int)threadIdx.x; j < b; j += blockDim.x) {
      const float* q = bx + (long long)j * 4;
      float w = fmaxf(__fsub_rn(fminf(ax1, q[2]), fmaxf(ax0, q[0])), 0.0f);
      float h = fmaxf(__fsub_rn(fminf(ay1, q[3]), fmaxf(ay0, q[1])), 0.0f);
      float inter = __fmul_rn(w, h);
      float uni = __fsub_rn(__fadd_rn(aa, box_area(q)), inter);
      float overlap = uni > 0.0f ? __fdiv_rn(inter, uni) : 0.0f;
      if (overlap > threshold) live[j] = 0;
    }
  }
}
"#;

/// Threads per block: a segment is a few thousand boxes at most.
const BLOCK_THREADS: u32 = 256;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

pub(super) fn forward(
    (bs, bl): (&CudaStorage, &Layout),
    (cs, cl): (&CudaStorage, &Layout),
    offsets: &[usize],
    threshold: f32,
) -> Result<(CudaStorage, Shape)> {
    let (n, s, _) = bl.shape().dims3()?;
    let si = i32_of(s, WHAT)?;
    i32_of(s * 4, WHAT)?;
    if n > i32::MAX as usize {
        candle_core::bail!("{WHAT}: {n} images exceed the grid");
    }
    let dev = bs.device();
    let boxes = view::<f32>(bs, bl, WHAT)?;
    let candidates = view::<u8>(cs, cl, WHAT)?;
    // SAFETY: every element lies in one segment (the offsets run from 0 to S), whose
    // block writes it.
    let alive = unsafe { dev.alloc::<u8>(n * s)? };
    let func = dev.get_or_load_custom_func("nms_segment", "candletron_nms", ptx()?)?;
    for w in offsets.windows(2) {
        if w[0] == w[1] || n == 0 {
            continue;
        }
        let (a, b) = (i32_of(w[0], WHAT)?, i32_of(w[1], WHAT)?);
        let mut builder = func.builder();
        builder
            .arg(&boxes)
            .arg(&candidates)
            .arg(&alive)
            .arg(&si)
            .arg(&a)
            .arg(&b)
            .arg(&threshold);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(alive, dev.clone()),
        Shape::from((n, s)),
    ))
}
