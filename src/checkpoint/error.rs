//! What can go wrong with a checkpoint.

/// What is wrong with a checkpoint; `path` is empty for one read from memory.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct CheckpointError {
    pub path: String,
    pub message: String,
}

impl From<String> for CheckpointError {
    fn from(message: String) -> Self {
        Self {
            path: String::new(),
            message,
        }
    }
}
