//! The CUDA kernels of [`super::top_k_mask`] and [`super::top_k_indices`]: one block per
//! row finds the k-th largest candidate key by radix select (four passes of 8 bits from
//! the top), then picks the keys above it and, of those equal to it, the first ones in
//! index order; the mask marks them, the indices kernel sorts them (bitonic, in shared
//! memory) by score, then index. Keys map `f32::total_cmp` order onto unsigned integers,
//! so NaNs, infinities and signed zeros rank as on the CPU.

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

// What the block's threads share (one row per block).
struct Selection {
  unsigned int hist[256];
  unsigned int warp_counts[32];
  unsigned int count, digit, remaining, tile;
};

// The number of the row's candidates, summed over the block.
__device__ unsigned int count_candidates(const unsigned char* ca, int r, Selection& s) {
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  unsigned int local = 0;
  for (int j = threadIdx.x; j < r; j += blockDim.x) local += ca[j] != 0;
  atomicAdd(&s.count, local);
  __syncthreads();
  return s.count;
}

// Radix select (four passes of 8 bits from the top): the key of the k-th largest candidate
// (0 < k <= candidates) in *prefix, and in *remaining how many candidates with that key
// belong to the k largest.
__device__ void kth_key(const float* sc, const unsigned char* ca, int r, unsigned int k,
                        Selection& s, unsigned int* prefix, unsigned int* remaining) {
  const unsigned int tid = threadIdx.x;
  unsigned int pre = 0, mask = 0, rem = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (unsigned int b = tid; b < 256; b += blockDim.x) s.hist[b] = 0;
    __syncthreads();
    for (int j = tid; j < r; j += blockDim.x) {
      if (!ca[j]) continue;
      unsigned int key = key_of(sc[j]);
      if ((key & mask) == pre) atomicAdd(&s.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      unsigned int above = 0;
      int d = 255;
      for (; d > 0; --d) {
        if (above + s.hist[d] >= rem) break;
        above += s.hist[d];
      }
      s.digit = (unsigned int)d;
      s.remaining = rem - above;
    }
    __syncthreads();
    pre |= s.digit << shift;
    mask |= 255u << shift;
    rem = s.remaining;
    __syncthreads();
  }
  *prefix = pre;
  *remaining = rem;
}

// Over a tile of blockDim consecutive elements (every thread calls it): how many threads
// before this one have `pred`, by a ballot scan; s.tile holds the tile's total after it.
__device__ unsigned int tile_rank(bool pred, Selection& s) {
  const unsigned int tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5;
  unsigned int ballot = __ballot_sync(0xffffffffu, pred);
  unsigned int before = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) s.warp_counts[warp] = __popc(ballot);
  __syncthreads();
  if (tid == 0) {
    unsigned int acc = 0;
    for (unsigned int w = 0; w < (blockDim.x >> 5); ++w) {
      unsigned int c = s.warp_counts[w];
      s.warp_counts[w] = acc;
      acc += c;
    }
    s.tile = acc;
  }
  __syncthreads();
  return s.warp_counts[warp] + before;
}

// Walks the row a tile at a time and calls emit(j, picked, position) for every j < r:
// picked when j is among the k largest candidates (keys above the k-th, then its ties in
// index order), position its place among the picked in index order. Every thread calls it.
template <typename Emit>
__device__ void scan_picked(const float* sc, const unsigned char* ca, int r, unsigned int k,
                            unsigned int ncand, Selection& s, Emit emit) {
  unsigned int prefix = 0, remaining = 0;
  const bool all = k >= ncand;
  if (!all) kth_key(sc, ca, r, k, s, &prefix, &remaining);
  unsigned int ties_taken = 0, picked_taken = 0;
  for (int base = 0; base < r; base += blockDim.x) {
    int j = base + (int)threadIdx.x;
    bool is_cand = j < r && ca[j] != 0;
    unsigned int key = is_cand ? key_of(sc[j]) : 0u;
    bool tie = is_cand && key == prefix;
    unsigned int tie_rank = ties_taken + tile_rank(tie, s);
    ties_taken += s.tile;
    bool picked = is_cand && (all || key > prefix || (tie && tie_rank < remaining));
    __syncthreads();
    unsigned int position = picked_taken + tile_rank(picked, s);
    picked_taken += s.tile;
    if (j < r) emit(j, picked, position);
    __syncthreads();
  }
}

extern "C" __global__ void top_k_mask(const float* __restrict__ scores,
                                      const unsigned char* __restrict__ cand,
                                      const unsigned int* __restrict__ ks,
                                      float* __restrict__ out, int r) {
  __shared__ Selection s;
  const long long row = blockIdx.x;
  const float* sc = scores + row * r;
  const unsigned char* ca = cand + row * r;
  float* o = out + row * r;
  const unsigned int k = ks[row];
  const unsigned int ncand = count_candidates(ca, r, s);
  if (k == 0) {
    for (int j = threadIdx.x; j < r; j += blockDim.x) o[j] = 0.0f;
    return;
  }
  scan_picked(sc, ca, r, k, ncand, s,
              [&](int j, bool picked, unsigned int) { o[j] = picked ? 1.0f : 0.0f; });
}

// Largest k handled (a block sorts the picked in shared memory).
#define TOP_K_MAX 4096

// Sorting keys: score descending, then index ascending; 0 pads (below every real key).
__device__ __forceinline__ unsigned long long rank_key(unsigned int key, int j) {
  return ((unsigned long long)key << 32) | (unsigned long long)(0xffffffffu - (unsigned int)j);
}

extern "C" __global__ void top_k_indices(const float* __restrict__ scores,
                                         const unsigned char* __restrict__ cand,
                                         unsigned int* __restrict__ out, int r, int k) {
  __shared__ Selection s;
  __shared__ unsigned long long sorted[TOP_K_MAX];
  const long long row = blockIdx.x;
  const float* sc = scores + row * r;
  const unsigned char* ca = cand + row * r;
  unsigned int* o = out + row * k;
  const unsigned int ncand = count_candidates(ca, r, s);
  const unsigned int picked = min((unsigned int)k, ncand);
  unsigned int width = 1;
  while (width < picked) width <<= 1;
  for (unsigned int t = threadIdx.x; t < width; t += blockDim.x) sorted[t] = 0ull;
  __syncthreads();
  if (picked > 0) {
    scan_picked(sc, ca, r, picked, ncand, s, [&](int j, bool is_picked, unsigned int position) {
      if (is_picked) sorted[position] = rank_key(key_of(sc[j]), j);
    });
  }
  __syncthreads();
  // Bitonic sort, descending, of the padded power of two.
  for (unsigned int size = 2; size <= width; size <<= 1) {
    for (unsigned int stride = size >> 1; stride > 0; stride >>= 1) {
      for (unsigned int t = threadIdx.x; t < width; t += blockDim.x) {
        unsigned int partner = t ^ stride;
        if (partner > t) {
          bool descending = (t & size) == 0;
          unsigned long long a = sorted[t], b = sorted[partner];
          if ((a < b) == descending) {
            sorted[t] = b;
            sorted[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int t = threadIdx.x; t < k; t += blockDim.x)
    o[t] = (unsigned int)t < picked ? 0xffffffffu - (unsigned int)(sorted[t] & 0xffffffffull)
                                    : (unsigned int)r;
}
"#;

/// One block of [`ROW_THREADS`] per row (the callers check that `n` fits the grid).
fn per_row(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

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
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(per_row(n)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n, r)),
    ))
}

pub(super) fn indices(
    (ss, sl): (&CudaStorage, &Layout),
    (cs, cl): (&CudaStorage, &Layout),
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    let (n, r) = sl.shape().dims2()?;
    let max = super::top_k_mask::CUDA_TOP_K_MAX;
    if k > max {
        candle_core::bail!("top_k_indices: k {k} above the CUDA kernel's {max}");
    }
    let (ri, ki) = (i32_of(r, WHAT)?, i32_of(k, WHAT)?);
    if n > i32::MAX as usize {
        candle_core::bail!("top_k_indices: {n} rows exceed the grid");
    }
    let dev = ss.device();
    let scores = view::<f32>(ss, sl, WHAT)?;
    let candidates = view::<u8>(cs, cl, WHAT)?;
    // SAFETY: the block of each row writes every element of its row.
    let out = unsafe { dev.alloc::<u32>(n * k)? };
    if n > 0 && k > 0 {
        let func = dev.get_or_load_custom_func("top_k_indices", "candletron_top_k_mask", ptx()?)?;
        let mut builder = func.builder();
        builder
            .arg(&scores)
            .arg(&candidates)
            .arg(&out)
            .arg(&ri)
            .arg(&ki);
        // SAFETY: the arguments match the kernel's signature in SOURCE.
        unsafe { builder.launch(per_row(n)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n, k)),
    ))
}
