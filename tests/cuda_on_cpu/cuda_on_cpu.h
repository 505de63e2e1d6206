// Runs CUDA C kernel sources on the CPU, one OS thread per CUDA thread, so that their logic
// can be checked against the CPU ops on a machine without a GPU.
//
// What is emulated: blocks run one after another, each with all of its threads alive at
// once; `__syncthreads` is a barrier of the block's threads and the warp intrinsics
// (`__shfl_down_sync`, `__ballot_sync`) exchange values through a barrier of the warp's 32
// threads, so code that relies on every thread reaching them deadlocks here as it would
// hang or misbehave on a GPU. A thread that returns leaves its block's and warp's barriers,
// as an exited thread does on a GPU; a full-mask warp intrinsic after a lane of its warp has
// returned is reported and aborts (undefined behaviour on a GPU). `__shared__` variables are
// function statics: one copy for the block that runs, as in shared memory. Fresh device
// buffers are filled with 0xff bytes (NaN for floats) so that an element a kernel forgets to
// write shows.
//
// What is not: timing, the memory model of a real GPU (a missing `__syncthreads` between a
// shared-memory write and another thread's read may pass here), races between blocks (they run
// one after another), uninitialised shared memory (the statics start at zero and keep the last
// block's values), and inline PTX (`asm`), which the caller replaces before compiling.
#pragma once

#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

namespace cuda_on_cpu {

struct Warp {
  std::unique_ptr<std::barrier<>> bar;
  unsigned int size = 0;
  std::atomic<unsigned int> active{0};
  uint64_t slot[32] = {};
};

struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<Warp> warps;
  void reset(unsigned int threads) {
    bar = std::make_unique<std::barrier<>>(threads);
    std::vector<Warp> fresh((threads + 31) / 32);
    for (unsigned int w = 0; w < fresh.size(); ++w) {
      fresh[w].size = std::min(32u, threads - 32 * w);
      fresh[w].active = fresh[w].size;
      fresh[w].bar = std::make_unique<std::barrier<>>(fresh[w].size);
    }
    warps.swap(fresh);
  }
};

inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
inline thread_local Block* block = nullptr;
inline thread_local unsigned int lane = 0, warp = 0;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_on_cpu: %s (block %u,%u,%u thread %u,%u,%u)\n", what, block_idx.x,
               block_idx.y, block_idx.z, thread_idx.x, thread_idx.y, thread_idx.z);
  std::fflush(stderr);
  std::_Exit(3);
}

// The calling thread's warp, for a full-mask intrinsic: a mask that names every lane.
inline Warp& full_warp(unsigned int mask) {
  Warp& w = block->warps[warp];
  unsigned int full = w.size == 32 ? 0xffffffffu : ((1u << w.size) - 1u);
  if ((mask & full) != full) fail("warp intrinsic with a partial mask: not emulated");
  return w;
}

// After the warp's barrier every lane has either arrived or returned (a returned lane left
// the barrier); all must have arrived.
inline void check_all_lanes(Warp& w) {
  if (w.active.load() != w.size) fail("full-mask warp intrinsic after a lane returned");
}

// Runs `kernel` (a trampoline taking the argument array) on `grid` x `threads`.
inline void launch(void (*kernel)(void**), dim3 grid, dim3 threads, void** args) {
  const unsigned int n = threads.x * threads.y * threads.z;
  const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
  if (n == 0 || n > 1024) fail("block size outside 1..1024");
  if (grid.y > 65535 || grid.z > 65535) fail("grid y or z above 65535");
  Block state;
  state.reset(n);
  std::barrier end(n, [&]() noexcept { state.reset(n); });
  std::vector<std::thread> pool;
  pool.reserve(n);
  for (unsigned int t = 0; t < n; ++t) {
    pool.emplace_back([&, t] {
      thread_idx = {t % threads.x, (t / threads.x) % threads.y, t / (threads.x * threads.y)};
      block_dim = threads;
      grid_dim = grid;
      block = &state;
      lane = t % 32;
      warp = t / 32;
      for (unsigned long long b = 0; b < blocks; ++b) {
        block_idx = {(unsigned int)(b % grid.x), (unsigned int)((b / grid.x) % grid.y),
                     (unsigned int)(b / ((unsigned long long)grid.x * grid.y))};
        kernel(args);
        // The thread is done with this block: later barriers of the block wait without it.
        state.warps[warp].active.fetch_sub(1);
        state.warps[warp].bar->arrive_and_drop();
        state.bar->arrive_and_drop();
        end.arrive_and_wait();
      }
    });
  }
  for (auto& t : pool) t.join();
}

}  // namespace cuda_on_cpu

#define threadIdx cuda_on_cpu::thread_idx
#define blockIdx cuda_on_cpu::block_idx
#define blockDim cuda_on_cpu::block_dim
#define gridDim cuda_on_cpu::grid_dim
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

inline void __syncthreads() { cuda_on_cpu::block->bar->arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  auto& w = cuda_on_cpu::full_warp(mask);
  std::memcpy(&w.slot[cuda_on_cpu::lane], &v, sizeof(T));
  w.bar->arrive_and_wait();
  cuda_on_cpu::check_all_lanes(w);
  T r = v;
  unsigned int src = cuda_on_cpu::lane + delta;
  if (src < w.size) std::memcpy(&r, &w.slot[src], sizeof(T));
  w.bar->arrive_and_wait();
  return r;
}

inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  auto& w = cuda_on_cpu::full_warp(mask);
  w.slot[cuda_on_cpu::lane] = predicate != 0;
  w.bar->arrive_and_wait();
  cuda_on_cpu::check_all_lanes(w);
  unsigned int bits = 0;
  for (unsigned int l = 0; l < w.size; ++l) bits |= (unsigned int)(w.slot[l] & 1u) << l;
  w.bar->arrive_and_wait();
  return bits;
}

template <typename T>
T atomicAdd(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

inline int __popc(unsigned int v) { return std::popcount(v); }
inline unsigned int __float_as_uint(float v) { return std::bit_cast<unsigned int>(v); }
inline float __uint_as_float(unsigned int v) { return std::bit_cast<float>(v); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Single roundings, as on the GPU; the host compiler contracts nothing here (no FMA in the
// baseline x86-64 instruction set).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
// CUDA's math functions are overloaded for float as C++'s are.
using std::exp;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::log1p;
using std::max;
using std::min;
using std::sqrt;
using std::tanh;

// IEEE half <-> float with round to nearest even, for the PTX `cvt` the sources use.
inline float cuda_on_cpu_f16_to_f32(unsigned short h) {
  unsigned int sign = (unsigned int)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    float v = std::ldexp((float)man, -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

inline unsigned short cuda_on_cpu_f32_to_f16(float f) {
  unsigned int u = std::bit_cast<unsigned int>(f);
  unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
  float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00u;
  if (a >= 65520.0f) return sign | 0x7c00u;  // rounds to infinity
  if (a < 6.103515625e-05f) {                  // subnormal or zero: multiples of 2^-24
    float q = std::nearbyint(a * 16777216.0f);  // ties to even in the default rounding mode
    return sign | (unsigned short)q;
  }
  unsigned int ua = std::bit_cast<unsigned int>(a);
  unsigned int rounded = ua + 0xfffu + ((ua >> 13) & 1u);
  return sign | (unsigned short)(((rounded >> 13) - (112u << 10)) & 0x7fffu);
}
