//! Meta-architectures: a whole model (backbone + heads + losses) behind one interface,
//! each in its own file and registered by name.

pub mod classifier;
#[allow(clippy::module_inception)] // meta_arch/meta_arch.rs, as in Detectron2
mod meta_arch;
pub mod rcnn;
mod registry;
pub mod ssdlite;

pub use crate::structures::{Batch, InstanceDetections, LossMap, Targets};
pub use classifier::Classifier;
pub use meta_arch::{MetaArch, MetaArchBuilder, Outputs};
pub use rcnn::GeneralizedRcnn;
pub use registry::META_ARCH_REGISTRY;
pub use ssdlite::SsdLite;
