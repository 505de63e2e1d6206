//! Data types that cross the crate's wings: boxes and their geometry, ground truth,
//! detections, batches and losses.

pub mod batch;
pub mod boxes;
pub mod class_label;
pub mod detections;
pub mod instances;
pub mod loss_map;
pub mod model_input;
pub mod padded_instances;

pub use batch::{Batch, Targets};
pub use class_label::ClassLabel;
pub use detections::InstanceDetections;
pub use instances::Instances;
pub use loss_map::LossMap;
pub use model_input::ModelInput;
pub use padded_instances::PaddedInstances;
