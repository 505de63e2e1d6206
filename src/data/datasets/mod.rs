//! Dataset formats and the synthetic face generator.

pub mod coco;
pub mod synthetic;
pub mod widerface;
