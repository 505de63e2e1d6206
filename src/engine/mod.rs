//! Running jobs: the training loop and its hooks, checkpoints, the setup every tool
//! shares, and `DefaultTrainer`, which builds all of it from a config.

pub mod checkpointer;
pub mod default_trainer;
pub mod defaults;
pub mod hooks;
pub mod launch;
pub mod predictor;
pub mod train_state;
pub mod trainer;

pub use default_trainer::{DefaultTrainer, TrainOutcome};
pub use defaults::{default_setup, inference_config};
pub use predictor::{Detection, Predicted, Predictor};
