//! Running jobs: setup shared by every tool (and, later, the trainer).

pub mod defaults;

pub use defaults::default_setup;
pub mod checkpointer;
pub mod trainer;
