//! The second stage of two-stage detectors: pooled per-proposal features, a box head
//! and its predictor.

pub mod box_head;
pub mod fast_rcnn;
pub mod standard;

pub use box_head::FastRcnnConvFcHead;
pub use fast_rcnn::FastRcnnOutputLayers;
pub use standard::StandardRoiHeads;
