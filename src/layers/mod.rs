//! Building blocks shared by backbones and heads.

/// `$f::<f32>(args)` or `$f::<f64>(args)` by `$dtype`: the CPU kernels of the custom ops
/// are generic over the two float types; any other dtype is an error naming `$op`.
/// Defined before the modules so that they all see it.
macro_rules! float_dispatch {
    ($op:expr, $dtype:expr, $f:ident, $($args:expr),* $(,)?) => {
        match $dtype {
            candle_core::DType::F32 => $f::<f32>($($args),*),
            candle_core::DType::F64 => $f::<f64>($($args),*),
            other => candle_core::bail!("{}: {other:?} is not supported on CPU", $op),
        }
    };
}

pub mod activation;
pub mod batch_norm;
pub mod batch_norm_train;
mod blocked_gemm;
pub mod conv;
pub mod conv_bn_train;
pub mod dense_conv;
pub mod shape_spec;

pub use activation::Activation;
pub use batch_norm::{BatchNorm2d, FrozenBatchNorm2d, Norm, NormKind};
pub use conv::{Conv2d, Conv2dConfig};
pub use shape_spec::ShapeSpec;
pub mod depthwise;
#[cfg(feature = "cuda")]
mod depthwise_cuda;
pub mod fused;
pub mod losses;
mod pointwise;
pub mod roi_align;
pub mod upsample;

/// The contiguous values of a CPU storage as a slice, for the custom ops' kernels; `op`
/// names the op in the error.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} kernels need contiguous inputs");
    };
    Ok(&s.as_slice::<T>()?[start..end])
}

/// A new buffer of `len` values built `chunk` at a time in parallel: `f(state, i, chunk)`
/// fills chunk `i`, with `state` from `init` once per rayon task (scratch space).
///
/// `vec![0; len]` costs a pass of its own: recycled heap memory is zeroed with a
/// memset that streams the whole buffer through DRAM before the kernel writes it again
/// (4% of a training step). Here each chunk is zeroed just before `f` gets it, while it
/// is in cache, so kernels that accumulate still see zeros and the buffer is written
/// from memory's point of view once.
pub(crate) fn par_chunks_zeroed<T, S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) -> Vec<T>
where
    T: candle_core::WithDType,
{
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |state, (i, o)| {
            for v in o.iter_mut() {
                v.write(T::zero());
            }
            // SAFETY: every element of `o` was written just above, and `MaybeUninit<T>`
            // has the layout of `T`.
            let o = unsafe { &mut *(o as *mut [MaybeUninit<T>] as *mut [T]) };
            f(state, i, o)
        });
    // SAFETY: the chunks cover `0..len` and each was initialised above.
    unsafe { out.set_len(len) };
    out
}

/// A new buffer of `len` values, `chunk` at a time in parallel: chunk `i` takes the
/// values `f(i)` yields, written once and never zeroed (for kernels that produce each
/// value in one go). Panics if `f(i)` yields fewer values than its chunk holds.
pub(crate) fn par_chunks_from<T, I>(
    len: usize,
    chunk: usize,
    f: impl Fn(usize) -> I + Sync,
) -> Vec<T>
where
    T: candle_core::WithDType,
    I: Iterator<Item = T>,
{
    use rayon::prelude::*;
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, o)| {
            let mut written = 0;
            for (o, v) in o.iter_mut().zip(f(i)) {
                o.write(v);
                written += 1;
            }
            assert_eq!(written, o.len(), "chunk {i} only partly written");
        });
    // SAFETY: every chunk of `0..len` was fully written (asserted above; a panic leaves
    // the length at 0).
    unsafe { out.set_len(len) };
    out
}

/// Largest absolute element-wise difference, for the layer unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
