//! Dataset formats and the synthetic face generator.

pub mod cifar;
pub mod coco;
pub mod generated;
pub mod image_folder;
pub mod record;
pub mod root;
pub mod synthetic;
pub mod synthetic_shapes;
pub mod widerface;
