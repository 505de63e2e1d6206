//! The CUDA kernel of [`super::top_k_mask`]: one block per row finds the k-th largest
//! candidate key by radix select (four passes of 8 bits from the top), then marks the
//! keys above it and, of those equal to it, the first ones in index order. Keys map
//! `f32::total_cmp` order onto unsigned integers, so NaNs, infinities and signed zeros
//! rank as on the CPU.

use super::cuda_kernels::{self, i32_of, view};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};
use std::sync::OnceLock;

const WHAT: &str = "top_k_mask";

/// Threads per block (one block per row): 32 full warps, for the ballot scan.
const ROW_THREADS: u32 = 1024;

const SOURCE: &str = r#"
__device__ __forceinline__ unsigned int key_of(float v) {
  unsigned int u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

extern "C" __global__ void top_k_mask(const float* __restrict__ scores,
                                      const unsigned char* __restrict__ cand,
                                      const unsigned int* __restrict__ ks,
                                      float* __restrict__ out, int r) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned int warp_counts[32];
  __shared__ unsigned int s_count, s_digit, s_remaining, s_tile, s_taken;
  const unsigned int tid = threadIdx.x;
  const long long row = blockIdx.x;
  const float* sc = scores + row * r;
  const unsigned char* ca = cand + row * r;
  float* o = out + row * r;
  const unsigned int k = ks[row];

  if (tid == 0) s_count = 0;
  __syncthreads();
  unsigned int local = 0;
  for (int j = tid; j < r; j += blockDim.x) local += ca[j] != 0;
  atomicAdd(&s_count, local);
  __syncthreads();
  const unsigned int ncand = s_count;
  if (k == 0 || k >= ncand) {
    for (int j = tid; j < r; j += blockDim.x) o[j] = (k > 0 && ca[j]) ? 1.0f : 0.0f;
    return;
  }

  // The key of the k-th largest candidate, and how many candidates with that key belong
  // to the k largest.
  unsigned int prefix = 0, prefix_mask = 0, remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (unsigned int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int j = tid; j < r; j += blockDim.x) {
      if (!ca[j]) continue;
      unsigned int key = key_of(sc[j]);
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      unsigned int above = 0;
      int d = 255;
      for (; d > 0; --d) {
        if (above + hist[d] >= remaining) break;
        above += hist[d];
      }
      s_digit = (unsigned int)d;
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix |= s_digit << shift;
    prefix_mask |= 255u << shift;
    remaining = s_remaining;
    __syncthreads();
  }

  // Keys above the threshold, then its ties in index order: a tile of blockDim indices at
  // a time, ranked by a ballot scan.
  const unsigned int lane = tid & 31u, warp = tid >> 5;
  if (tid == 0) s_taken = 0;
  __syncthreads();
  for (int base = 0; base < r; base += blockDim.x) {
    int j = base + (int)tid;
    bool is_cand = j < r && ca[j] != 0;
    unsigned int key = is_cand ? key_of(sc[j]) : 0u;
    bool tie = is_cand && key == prefix;
    unsigned int ballot = __ballot_sync(0xffffffffu, tie);
    unsigned int before = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    if (tid == 0) {
      unsigned int acc = 0;
      for (unsigned int w = 0; w < (blockDim.x >> 5); ++w) {
        unsigned int c = warp_counts[w];
        warp_counts[w] = acc;
        acc += c;
      }
      s_tile = acc;
    }
    __syncthreads();
    unsigned int rank = s_taken + warp_counts[warp] + before;
    if (j < r) o[j] = (is_cand && (key > prefix || (tie && rank < remaining))) ? 1.0f : 0.0f;
    __syncthreads();
    if (tid == 0) s_taken += s_tile;
    __syncthreads();
  }
}
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

pub(super) fn forward(
    (ss, sl): (&CudaStorage, &Layout),
    (cs, cl): (&CudaStorage, &Layout),
    (ks, kl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (n, r) = sl.shape().dims2()?;
    let ri = i32_of(r, WHAT)?;
    if n > i32::MAX as usize {
        candle_core::bail!("{WHAT}: {n} rows exceed the grid");
    }
    let dev = ss.device();
    let scores = view::<f32>(ss, sl, WHAT)?;
    let candidates = view::<u8>(cs, cl, WHAT)?;
    let k = view::<u32>(ks, kl, WHAT)?;
    // SAFETY: the block of each row writes every element of its row.
    let out = unsafe { dev.alloc::<f32>(n * r)? };
    if n > 0 {
        let func = dev.get_or_load_custom_func("top_k_mask", "candletron_top_k_mask", ptx()?)?;
        let mut builder = func.builder();
        builder
            .arg(&scores)
            .arg(&candidates)
            .arg(&k)
            .arg(&out)
            .arg(&ri);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (ROW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(cfg) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n, r)),
    ))
}
