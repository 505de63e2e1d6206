//! Training batch norm (+ ReLU/ReLU6) on CUDA as a few kernels with a hand-written
//! backward: the GPU counterpart of the CPU op in `batch_norm_train.rs`.
//!
//! From stock ops, a training BN on CUDA is nine element-wise and reduction launches
//! forward, each a full pass over the activation, and as many again in autograd. Here the
//! forward is two passes (per-channel moments, then the affine with the activation) and the
//! backward two (per-channel gradient sums, then the input gradient), with the
//! per-channel arithmetic in one-thread-per-channel kernels between them. The statistics
//! stay on the device, in f64 as on the CPU: the moments are taken about each channel's
//! first value and summed in f64, so a channel whose mean is far from 0 loses nothing to
//! cancellation. Nothing is read back to the host.
//!
//! Sums are split over a 2-D grid (channel, chunk) and the chunks are added in a fixed
//! order by the finishing kernel, so results do not depend on scheduling (no atomics).

use super::activation::Activation;
use super::batch_norm_train::Clip;
use super::cuda_kernels::{self, grid_1d, i32_of, suffix, view, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::OnceLock;

const WHAT: &str = "batch norm";

/// `stats` is (5, C) f64: mean, biased variance, 1/sqrt(var + eps), and the affine of the
/// forward, scale = weight * invstd and shift = bias - mean * scale. `coef` is (5, C) f64:
/// the input gradient's dy and x coefficients and its constant, then the weight and bias
/// gradients. The pre-activation `fma(x, scale, shift)` is one helper for the forward and
/// the backward's activation mask, so that the mask is the forward's bit for bit.
///
/// Kernels are generic over the prelude's element types `E`: activations are stored as
/// `E::S`, element-wise arithmetic runs in `E::A` (f32 for bf16/f16 activations, whose
/// weight and bias are f32 as under PyTorch's autocast), so a narrow input gives the f32
/// kernels' result rounded once, without the two conversion passes around an f32 norm.
const SOURCE: &str = r#"
__device__ __forceinline__ float fused(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fused(double a, double b, double c) { return __fma_rn(a, b, c); }

// Where the fused activation passes gradient: lo < pre-activation < hi (NaN: nowhere).
template <typename T>
__device__ __forceinline__ T masked(T x, T g, T scale, T shift, int clip, T lo, T hi) {
  if (!clip) return g;
  T v = fused(x, scale, shift);
  return (v > lo && v < hi) ? g : (T)0;
}

// Two doubles summed over the block; thread 0 writes them to out[0], out[1].
__device__ void block_sum2(double a, double b, double* out) {
  __shared__ double sa[32], sb[32];
  for (int off = 16; off > 0; off >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, off);
    b += __shfl_down_sync(0xffffffffu, b, off);
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sa[warp] = a; sb[warp] = b; }
  __syncthreads();
  if (warp == 0) {
    int warps = (blockDim.x + 31) >> 5;
    a = lane < warps ? sa[lane] : 0.0;
    b = lane < warps ? sb[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, off);
      b += __shfl_down_sync(0xffffffffu, b, off);
    }
    if (lane == 0) { out[0] = a; out[1] = b; }
  }
}

// Block (channel, chunk): the channel's values j in [chunk * len, (chunk + 1) * len) of its
// m = n * hw < 2^31, value j being image j / hw, pixel j % hw (32-bit division: 64-bit
// division is emulated in software). Σ t and Σ t² with t = x - x[first].
__device__ __forceinline__ long long at(unsigned int j, unsigned int hw, int c, int ch) {
  unsigned int img = j / hw;
  return ((long long)img * c + ch) * hw + (j - img * hw);
}

template <typename E>
__device__ void moments_partial(const typename E::S* __restrict__ x, double* __restrict__ part,
                                int c, int hw, int m, int len) {
  int ch = blockIdx.x, chunk = blockIdx.y;
  double first = (double)E::load(x[(long long)ch * hw]);
  double a = 0.0, b = 0.0;
  unsigned int end = (unsigned int)min((long long)(chunk + 1) * len, (long long)m);
  for (unsigned int j = (unsigned int)chunk * len + threadIdx.x; j < end; j += blockDim.x) {
    double t = (double)E::load(x[at(j, hw, c, ch)]) - first;
    a += t;
    b += t * t;
  }
  block_sum2(a, b, part + ((long long)ch * gridDim.y + chunk) * 2);
}

template <typename E>
__device__ void moments_finish(const typename E::S* __restrict__ x,
                               const double* __restrict__ part, const typename E::A* __restrict__ w,
                               const typename E::A* __restrict__ b, double* __restrict__ stats,
                               int c, int hw, int chunks, double m, double eps) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double s1 = 0.0, s2 = 0.0;
  for (int k = 0; k < chunks; ++k) {
    s1 += part[((long long)ch * chunks + k) * 2];
    s2 += part[((long long)ch * chunks + k) * 2 + 1];
  }
  double mu = s1 / m;
  double var = s2 / m - mu * mu;
  var = var > 0.0 ? var : 0.0;
  double mean = (double)E::load(x[(long long)ch * hw]) + mu;
  double invstd = 1.0 / sqrt(var + eps);
  double scale = (double)w[ch] * invstd;
  stats[ch] = mean;
  stats[c + ch] = var;
  stats[2 * c + ch] = invstd;
  stats[3 * c + ch] = scale;
  stats[4 * c + ch] = (double)b[ch] - mean * scale;
}

// Element-wise kernels run on a (plane, pixel block) grid: the channel is the block's, no
// per-element division.
template <typename E>
__device__ void affine(const typename E::S* __restrict__ x, const double* __restrict__ stats,
                       typename E::S* __restrict__ y, int c, int hw, int clip,
                       typename E::A lo, typename E::A hi) {
  typedef typename E::A A;
  int p = blockIdx.y * blockDim.x + threadIdx.x;
  if (p >= hw) return;
  int ch = (int)(blockIdx.x % (unsigned int)c);
  long long i = (long long)blockIdx.x * hw + p;
  A v = fused(E::load(x[i]), (A)stats[3 * c + ch], (A)stats[4 * c + ch]);
  if (clip) {
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
  }
  y[i] = E::store(v);
}

// As moments_partial: Σ dz and Σ dz (x - mean), dz the output gradient masked by the
// activation.
template <typename E>
__device__ void grad_partial(const typename E::S* __restrict__ x,
                             const typename E::S* __restrict__ g, const double* __restrict__ stats,
                             double* __restrict__ part, int c, int hw, int m, int len, int clip,
                             typename E::A lo, typename E::A hi) {
  typedef typename E::A A;
  int ch = blockIdx.x, chunk = blockIdx.y;
  double mean = stats[ch];
  A scale = (A)stats[3 * c + ch], shift = (A)stats[4 * c + ch];
  double a = 0.0, b = 0.0;
  unsigned int end = (unsigned int)min((long long)(chunk + 1) * len, (long long)m);
  for (unsigned int j = (unsigned int)chunk * len + threadIdx.x; j < end; j += blockDim.x) {
    long long i = at(j, hw, c, ch);
    A xv = E::load(x[i]);
    double dz = (double)masked(xv, E::load(g[i]), scale, shift, clip, lo, hi);
    a += dz;
    b += dz * ((double)xv - mean);
  }
  block_sum2(a, b, part + ((long long)ch * gridDim.y + chunk) * 2);
}

// dx = k1 dz + k2 x + (k3 - k2 mean), k1 = w invstd, k2 = -k1 invstd² Σdz(x-mean) / m,
// k3 = -k1 Σdz / m; dweight = Σdz(x-mean) invstd, dbias = Σdz.
template <typename E>
__device__ void grad_finish(const double* __restrict__ part, const typename E::A* __restrict__ w,
                            const double* __restrict__ stats, double* __restrict__ coef, int c,
                            int chunks, double m) {
  int ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double s1 = 0.0, s2 = 0.0;
  for (int k = 0; k < chunks; ++k) {
    s1 += part[((long long)ch * chunks + k) * 2];
    s2 += part[((long long)ch * chunks + k) * 2 + 1];
  }
  double mean = stats[ch], invstd = stats[2 * c + ch];
  double k1 = (double)w[ch] * invstd;
  double k2 = -k1 * invstd * invstd * s2 / m;
  double k3 = -k1 * s1 / m;
  coef[ch] = k1;
  coef[c + ch] = k2;
  coef[2 * c + ch] = k3 - k2 * mean;
  coef[3 * c + ch] = s2 * invstd;
  coef[4 * c + ch] = s1;
}

template <typename E>
__device__ void input_grad(const typename E::S* __restrict__ x, const typename E::S* __restrict__ g,
                           const double* __restrict__ stats, const double* __restrict__ coef,
                           typename E::S* __restrict__ gx, int c, int hw, int clip,
                           typename E::A lo, typename E::A hi) {
  typedef typename E::A A;
  int p = blockIdx.y * blockDim.x + threadIdx.x;
  if (p >= hw) return;
  int ch = (int)(blockIdx.x % (unsigned int)c);
  long long i = (long long)blockIdx.x * hw + p;
  A xv = E::load(x[i]);
  A dz = masked(xv, E::load(g[i]), (A)stats[3 * c + ch], (A)stats[4 * c + ch], clip, lo, hi);
  gx[i] = E::store(dz * (A)coef[ch] + xv * (A)coef[c + ch] + (A)coef[2 * c + ch]);
}

#define BN_KERNELS(E, SUF)                                                                         \
  extern "C" __global__ void bn_moments_partial_##SUF(const E::S* x, double* part, int c, int hw,  \
      int m, int len) {                                                                            \
    moments_partial<E>(x, part, c, hw, m, len);                                                    \
  }                                                                                                \
  extern "C" __global__ void bn_moments_finish_##SUF(const E::S* x, const double* part,           \
      const E::A* w, const E::A* b, double* stats, int c, int hw, int chunks, double m,            \
      double eps) {                                                                                \
    moments_finish<E>(x, part, w, b, stats, c, hw, chunks, m, eps);                               \
  }                                                                                                \
  extern "C" __global__ void bn_affine_##SUF(const E::S* x, const double* stats, E::S* y, int c,  \
      int hw, int clip, E::A lo, E::A hi) {                                                        \
    affine<E>(x, stats, y, c, hw, clip, lo, hi);                                                   \
  }                                                                                                \
  extern "C" __global__ void bn_grad_partial_##SUF(const E::S* x, const E::S* g,                  \
      const double* stats, double* part, int c, int hw, int m, int len, int clip, E::A lo,        \
      E::A hi) {                                                                                   \
    grad_partial<E>(x, g, stats, part, c, hw, m, len, clip, lo, hi);                               \
  }                                                                                                \
  extern "C" __global__ void bn_grad_finish_##SUF(const double* part, const E::A* w,              \
      const double* stats, double* coef, int c, int chunks, double m) {                            \
    grad_finish<E>(part, w, stats, coef, c, chunks, m);                                            \
  }                                                                                                \
  extern "C" __global__ void bn_input_grad_##SUF(const E::S* x, const E::S* g,                    \
      const double* stats, const double* coef, E::S* gx, int c, int hw, int clip, E::A lo,        \
      E::A hi) {                                                                                   \
    input_grad<E>(x, g, stats, coef, gx, c, hw, clip, lo, hi);                                     \
  }

BN_KERNELS(f32_t, f32)
BN_KERNELS(f64_t, f64)
BN_KERNELS(bf16_t, bf16)
BN_KERNELS(f16_t, f16)
"#;

fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    cuda_kernels::ptx(&PTX, SOURCE, WHAT)
}

/// Whether [`batch_norm_train_cuda`] runs for this input (CUDA, f32, f64, bf16 or f16).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cuda() && suffix(x.dtype(), WHAT).is_ok()
}

/// The dtype of the element-wise arithmetic, the weight and the bias for activations of
/// `dtype`: f32 for bf16/f16, as under autocast.
fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// Normalises `x` (N, C, H, W) with its batch statistics, applies `weight`, `bias` and
/// `activation` (Identity, ReLU or ReLU6); returns the output and the batch mean and
/// biased variance (f64, on the device, for the running averages).
pub fn batch_norm_train_cuda(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    activation: Activation,
) -> Result<(Tensor, Tensor, Tensor)> {
    let clip = Clip::of(activation).ok_or_else(|| {
        candle_core::Error::Msg(format!("batch norm op: {activation:?} cannot be fused"))
    })?;
    let dt = compute_dtype(x.dtype());
    let x = x.contiguous()?;
    let (w, b) = (
        weight.to_dtype(dt)?.contiguous()?,
        bias.to_dtype(dt)?.contiguous()?,
    );
    let stats = x.apply_op3_no_bwd(&w, &b, &Moments { eps })?;
    let y = x.apply_op3(
        &w,
        &b,
        Affine {
            stats: stats.clone(),
            clip,
        },
    )?;
    Ok((y, stats.get(0)?, stats.get(1)?))
}

/// The shape of `x` (N, C, H, W) as the kernels take it, checked: at least one channel and
/// one value per channel, and `int` room for the values of a channel and of a plane.
struct Dims {
    /// N * C planes of H * W values.
    planes: usize,
    c: usize,
    hw: usize,
    /// Values per channel, N * H * W.
    m: usize,
    /// c, hw, m as kernel arguments.
    args: (i32, i32, i32),
}

fn dims(l: &Layout) -> Result<Dims> {
    let (n, c, h, w) = l.shape().dims4()?;
    let (hw, m) = (h * w, n * h * w);
    if c == 0 || m == 0 {
        candle_core::bail!("{WHAT}: no values to normalise in a {:?} input", l.dims());
    }
    let args = (i32_of(c, WHAT)?, i32_of(hw, WHAT)?, i32_of(m, WHAT)?);
    Ok(Dims {
        planes: n * c,
        c,
        hw,
        m,
        args,
    })
}

/// Weight and bias (or weight alone) must have a value per channel: the kernels read one.
fn check_affine(d: &Dims, params: &[&Layout]) -> Result<()> {
    for l in params {
        if l.shape().elem_count() != d.c {
            candle_core::bail!(
                "{WHAT}: a weight or bias of {} values for {} channels",
                l.shape().elem_count(),
                d.c
            );
        }
    }
    Ok(())
}

/// Chunks per channel for the reductions: enough blocks in all to fill a large GPU
/// (about 1024), none smaller than 4096 values.
fn chunks(d: &Dims) -> usize {
    1024usize.div_ceil(d.c).min(d.m.div_ceil(4096)).max(1)
}

/// The (plane, pixel block) grid of the element-wise kernels.
fn grid_planes(d: &Dims) -> Result<LaunchConfig> {
    let pixel_blocks = d.hw.div_ceil(THREADS as usize);
    if pixel_blocks > 65_535 || d.planes > i32::MAX as usize {
        candle_core::bail!(
            "{WHAT}: {} planes of {} values exceed the grid",
            d.planes,
            d.hw
        );
    }
    Ok(LaunchConfig {
        grid_dim: (d.planes as u32, pixel_blocks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The f64 storage of a tensor an op holds (its statistics or coefficients).
fn with_f64<R>(t: &Tensor, f: impl FnOnce(&CudaStorage, &Layout) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) if s.dtype() == DType::F64 => f(s, layout),
        _ => candle_core::bail!("{WHAT}: statistics must be f64 CUDA tensors"),
    }
}

fn cpu_only_error<R>(op: &str) -> Result<R> {
    candle_core::bail!("{op} runs on CUDA only; the CPU has its own batch norm op")
}

/// The clip arguments of the kernels: (flag, lo, hi).
fn clip_args<T: candle_core::WithDType>(clip: Option<Clip>) -> (i32, T, T) {
    match clip {
        None => (0, T::zero(), T::zero()),
        Some(c) => (1, T::from_f64(c.lo), T::from_f64(c.hi)),
    }
}

/// Launches the kernel `name`_`suffix(dtype)` on `cfg` with the arguments in order.
macro_rules! launch {
    ($dev:expr, $name:expr, $dtype:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let name = format!("{}_{}", $name, suffix($dtype, WHAT)?);
        let func = $dev.get_or_load_custom_func(&name, "candletron_batch_norm", ptx()?)?;
        let mut builder = func.builder();
        $(builder.arg($arg);)*
        // SAFETY: each call lists the arguments of the kernel's signature in SOURCE.
        unsafe { builder.launch($cfg) }.w()?;
    }};
}

/// The (channel, chunk) grid of the per-channel reductions.
fn grid_channels(c: usize, chunk_count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c as u32, chunk_count as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `impl CustomOp3` for a CUDA-only op of three inputs whose output is (5, C) f64 per-channel
/// values, computed by `$typed::<T, A>(self, first, second, third)` for the first input's
/// storage type `T` and compute type `A`.
macro_rules! per_channel_op3 {
    ($op:ty, $name:literal, $typed:ident) => {
        impl candle_core::CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
                _: &CpuStorage,
                _: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                cpu_only_error(self.name())
            }

            fn cuda_fwd(
                &self,
                xs: &CudaStorage,
                xl: &Layout,
                s2: &CudaStorage,
                l2: &Layout,
                s3: &CudaStorage,
                l3: &Layout,
            ) -> Result<(CudaStorage, Shape)> {
                let c = dims(xl)?.c;
                let (x, second, third) = ((xs, xl), (s2, l2), (s3, l3));
                let values = match xs.dtype() {
                    DType::F32 => $typed::<f32, f32>(self, x, second, third)?,
                    DType::F64 => $typed::<f64, f64>(self, x, second, third)?,
                    DType::BF16 => $typed::<half::bf16, f32>(self, x, second, third)?,
                    _ => $typed::<half::f16, f32>(self, x, second, third)?,
                };
                Ok((
                    CudaStorage::wrap_cuda_slice(values, xs.device().clone()),
                    Shape::from((5, c)),
                ))
            }
        }
    };
}

/// (x, weight, bias) -> stats (5, C) f64.
struct Moments {
    eps: f64,
}

fn moments_typed<T: CudaDType + DeviceRepr, A: CudaDType + DeviceRepr>(
    op: &Moments,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<f64>> {
    let d = dims(xl)?;
    check_affine(&d, &[wl, bl])?;
    let ((ci, hwi, mi), c) = (d.args, d.c);
    let k = chunks(&d);
    let (len, ki) = (i32_of(d.m.div_ceil(k), WHAT)?, i32_of(k, WHAT)?);
    let dev = xs.device();
    let x = view::<T>(xs, xl, WHAT)?;
    let (w, b) = (view::<A>(ws, wl, WHAT)?, view::<A>(bs, bl, WHAT)?);
    // SAFETY: block (channel, chunk) writes its two partial sums; every block runs.
    let part = unsafe { dev.alloc::<f64>(c * k * 2)? };
    launch!(
        dev,
        "bn_moments_partial",
        xs.dtype(),
        grid_channels(c, k),
        [&x, &part, &ci, &hwi, &mi, &len]
    );
    // SAFETY: one thread per channel writes its five values.
    let stats = unsafe { dev.alloc::<f64>(5 * c)? };
    let (mf, eps) = (d.m as f64, op.eps);
    launch!(
        dev,
        "bn_moments_finish",
        xs.dtype(),
        grid_1d(c),
        [&x, &part, &w, &b, &stats, &ci, &hwi, &ki, &mf, &eps]
    );
    Ok(stats)
}

per_channel_op3!(Moments, "batch-norm-moments-cuda", moments_typed);

/// The differentiable op: (x, weight, bias) -> activation(x * scale + shift), with the
/// scale and shift of `stats` (which the weight and bias made).
struct Affine {
    stats: Tensor,
    clip: Option<Clip>,
}

fn affine_typed<T: CudaDType + DeviceRepr, A: DeviceRepr + candle_core::WithDType>(
    op: &Affine,
    (xs, xl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let d = dims(xl)?;
    let (ci, hwi, _) = d.args;
    let dev = xs.device();
    let x = view::<T>(xs, xl, WHAT)?;
    let (flag, lo, hi) = clip_args::<A>(op.clip);
    // SAFETY: one thread per element writes it.
    let y = unsafe { dev.alloc::<T>(d.planes * d.hw)? };
    with_f64(&op.stats, |ss, sl| {
        let stats = view::<f64>(ss, sl, WHAT)?;
        launch!(
            dev,
            "bn_affine",
            xs.dtype(),
            grid_planes(&d)?,
            [&x, &stats, &y, &ci, &hwi, &flag, &lo, &hi]
        );
        Ok(())
    })?;
    Ok(y)
}

impl candle_core::CustomOp3 for Affine {
    fn name(&self) -> &'static str {
        "batch-norm-train-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_only_error(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let x = (xs, xl);
        let y = match xs.dtype() {
            DType::F32 => CudaStorage::wrap_cuda_slice(affine_typed::<f32, f32>(self, x)?, dev),
            DType::F64 => CudaStorage::wrap_cuda_slice(affine_typed::<f64, f64>(self, x)?, dev),
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(affine_typed::<half::bf16, f32>(self, x)?, dev)
            }
            _ => CudaStorage::wrap_cuda_slice(affine_typed::<half::f16, f32>(self, x)?, dev),
        };
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let coef = x.apply_op3_no_bwd(
            &grad,
            w,
            &GradCoefficients {
                stats: self.stats.clone(),
                clip: self.clip,
            },
        )?;
        let gx = x.apply_op2_no_bwd(
            &grad,
            &InputGrad {
                stats: self.stats.clone(),
                coef: coef.clone(),
                clip: self.clip,
            },
        )?;
        // The weight and bias are in the compute dtype (see `batch_norm_train_cuda`).
        let dt = w.dtype();
        Ok((
            Some(gx),
            Some(coef.get(3)?.to_dtype(dt)?),
            Some(coef.get(4)?.to_dtype(dt)?),
        ))
    }
}

/// (x, dy, weight) -> coef (5, C) f64, see SOURCE.
struct GradCoefficients {
    stats: Tensor,
    clip: Option<Clip>,
}

fn grad_coefficients_typed<
    T: CudaDType + DeviceRepr,
    A: CudaDType + DeviceRepr + candle_core::WithDType,
>(
    op: &GradCoefficients,
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<f64>> {
    let d = dims(xl)?;
    check_affine(&d, &[wl])?;
    let ((ci, hwi, mi), c) = (d.args, d.c);
    let k = chunks(&d);
    let (len, ki, mf) = (i32_of(d.m.div_ceil(k), WHAT)?, i32_of(k, WHAT)?, d.m as f64);
    let dev = xs.device();
    let (x, g, w) = (
        view::<T>(xs, xl, WHAT)?,
        view::<T>(gs, gl, WHAT)?,
        view::<A>(ws, wl, WHAT)?,
    );
    let (flag, lo, hi) = clip_args::<A>(op.clip);
    with_f64(&op.stats, |ss, sl| {
        let stats = view::<f64>(ss, sl, WHAT)?;
        // SAFETY: block (channel, chunk) writes its two partial sums; every block runs.
        let part = unsafe { dev.alloc::<f64>(c * k * 2)? };
        launch!(
            dev,
            "bn_grad_partial",
            xs.dtype(),
            grid_channels(c, k),
            [&x, &g, &stats, &part, &ci, &hwi, &mi, &len, &flag, &lo, &hi]
        );
        // SAFETY: one thread per channel writes its five values.
        let coef = unsafe { dev.alloc::<f64>(5 * c)? };
        launch!(
            dev,
            "bn_grad_finish",
            xs.dtype(),
            grid_1d(c),
            [&part, &w, &stats, &coef, &ci, &ki, &mf]
        );
        Ok(coef)
    })
}

per_channel_op3!(
    GradCoefficients,
    "batch-norm-grad-coefficients-cuda",
    grad_coefficients_typed
);

/// (x, dy) -> dx.
struct InputGrad {
    stats: Tensor,
    coef: Tensor,
    clip: Option<Clip>,
}

fn input_grad_typed<T: CudaDType + DeviceRepr, A: DeviceRepr + candle_core::WithDType>(
    op: &InputGrad,
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>> {
    let d = dims(xl)?;
    let (ci, hwi, _) = d.args;
    let dev = xs.device();
    let (x, g) = (view::<T>(xs, xl, WHAT)?, view::<T>(gs, gl, WHAT)?);
    let (flag, lo, hi) = clip_args::<A>(op.clip);
    // SAFETY: one thread per element writes it.
    let gx = unsafe { dev.alloc::<T>(d.planes * d.hw)? };
    with_f64(&op.stats, |ss, sl| {
        with_f64(&op.coef, |cs, cl| {
            let (stats, coef) = (view::<f64>(ss, sl, WHAT)?, view::<f64>(cs, cl, WHAT)?);
            launch!(
                dev,
                "bn_input_grad",
                xs.dtype(),
                grid_planes(&d)?,
                [&x, &g, &stats, &coef, &gx, &ci, &hwi, &flag, &lo, &hi]
            );
            Ok(())
        })
    })?;
    Ok(gx)
}

impl candle_core::CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "batch-norm-input-grad-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_only_error(self.name())
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = xs.device().clone();
        let (x, g) = ((xs, xl), (gs, gl));
        let gx = match xs.dtype() {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(input_grad_typed::<f32, f32>(self, x, g)?, dev)
            }
            DType::F64 => {
                CudaStorage::wrap_cuda_slice(input_grad_typed::<f64, f64>(self, x, g)?, dev)
            }
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(input_grad_typed::<half::bf16, f32>(self, x, g)?, dev)
            }
            _ => CudaStorage::wrap_cuda_slice(input_grad_typed::<half::f16, f32>(self, x, g)?, dev),
        };
        Ok((gx, xl.shape().clone()))
    }
}
