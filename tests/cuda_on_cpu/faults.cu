// Kernels with the faults the emulator must catch, compiled beside the real ones.

// Writes every other element: the rest keep the fresh buffer's NaN bytes.
extern "C" __global__ void fault_skips_elements(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && i % 2 == 0) out[i] = 1.0f;
}

// Lanes past `n` return, then the rest shuffle with a full mask.
extern "C" __global__ void fault_shuffle_after_return(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = __shfl_down_sync(0xffffffffu, (float)i, 1);
}
