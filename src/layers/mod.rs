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
pub mod conv;
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

/// Largest absolute element-wise difference, for the layer unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
