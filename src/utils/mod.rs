//! Small helpers shared by every part of the crate.

pub mod fs;
pub mod logging;
pub mod registry;
pub mod threads;
pub mod visualizer;
