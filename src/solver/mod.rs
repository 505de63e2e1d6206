//! Optimizers and learning-rate schedules, built from `SOLVER.*`.

pub mod lr_scheduler;
pub mod optimizer;

pub use lr_scheduler::LrScheduler;
pub use optimizer::Optimizer;
