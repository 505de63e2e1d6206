//! Optimizers and learning-rate schedules, built from `SOLVER.*`.

pub mod grad_scaler;
pub mod lr_scheduler;
pub mod optimizer;

pub use grad_scaler::GradScaler;
pub use lr_scheduler::LrScheduler;
pub use optimizer::Optimizer;
