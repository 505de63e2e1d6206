//! Tensor operations below the modules: the custom CPU (and CUDA) kernels behind the
//! convolutions, training batch norm, fused epilogues, ROIAlign and upsampling, with a
//! functional API that `layers` builds its modules on. Nothing here knows of modules,
//! models or configs.

#[macro_use]
mod custom_op;

pub mod activation;
#[cfg(feature = "cuda")]
mod activation_cuda;
pub mod batch_norm_train;
#[cfg(feature = "cuda")]
pub mod batch_norm_train_cuda;
mod blocked_gemm;
pub mod conv;
pub mod conv_bn_train;
#[cfg(feature = "cuda")]
mod cuda_kernels;
pub mod dense_conv;
pub mod depthwise;
#[cfg(feature = "cuda")]
mod depthwise_cuda;
pub mod geometry;
pub mod host;
pub mod im2col;
#[cfg(feature = "cuda")]
mod im2col_cuda;
pub mod linear;
pub mod nms;
#[cfg(feature = "cuda")]
mod nms_cuda;
mod parallel;
mod pointwise;
pub mod roi_align;
#[cfg(feature = "cuda")]
mod roi_align_cuda;
pub mod top_k_mask;
#[cfg(feature = "cuda")]
mod top_k_mask_cuda;
pub mod upsample;

pub use activation::Activation;
pub use activation::{bias_act, relu6};
pub use batch_norm_train::{batch_norm_train, BatchStats};
pub use conv::{conv2d, conv2d_bias_act, train_conv};
pub use conv_bn_train::{conv_bn_act_train, conv_bn_chain_train, ChainLayer};
pub use dense_conv::dense_conv2d;
pub use depthwise::{depthwise_conv2d, depthwise_conv2d_portable};
pub use geometry::ConvGeometry;
pub use im2col::{im2col, im2col_conv2d};
pub use linear::linear;
pub use nms::nms_segments;
pub use roi_align::{roi_align, roi_align_portable, RoiAlignParams, RoiGrid};
pub use top_k_mask::{top_k_indices, top_k_mask};
pub use upsample::upsample_nearest_2x;

/// Largest absolute element-wise difference, for the ops' unit tests.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("tensors of the same shape")
}
