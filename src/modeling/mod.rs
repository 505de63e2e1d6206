//! Models: backbones and meta-architectures behind registries, their parameters, and
//! `build_model`, which turns a config into a ready model.

pub mod anchor_generator;
pub mod backbone;
pub mod box_regression;
mod device;
mod export;
pub mod heads;
pub mod helpers;
pub mod matcher;
pub mod meta_arch;
mod model;
pub mod poolers;
pub mod proposal_generator;
pub mod roi_heads;
pub mod sampling;
#[cfg(test)]
mod test_support;

pub use device::parse_device;
pub use export::{ExportBatch, OnnxExportSpec};
pub use model::{build_model, Model, Prediction};
