//! Small helpers shared by every part of the crate.

pub mod curves;
pub mod distance;
pub mod fs;
pub mod interrupt;
pub mod logging;
pub mod registry;
pub mod threads;
pub mod visualizer;
