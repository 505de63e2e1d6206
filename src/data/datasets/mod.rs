//! Dataset formats.

pub mod widerface;
