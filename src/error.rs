//! The library's error type: every public entry point returns [`Result`], and each error
//! names the file, key or dataset at fault.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::data::catalog::DataError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file, key or value (with file:line or the override at fault); boxed,
    /// being the largest.
    #[error(transparent)]
    Config(Box<ConfigError>),
    /// A dataset, annotation file or image.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint file: unreadable, not a checkpoint, or not fitting the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Building or running a model (shapes, devices, kernels, a key the model rejects).
    #[error("{0}")]
    Model(#[from] candle_core::Error),
    /// A file or folder that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Training or evaluation cannot go on (a diverged loss, a dataset without
    /// ground truth, an interrupted run).
    #[error("{0}")]
    Run(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(Box::new(e))
    }
}

impl Error {
    /// An I/O error on `path`, with what was being done: "cannot create", "cannot write".
    pub fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(source.kind(), format!("{what}: {source}")),
        }
    }

    pub fn run(msg: impl Into<String>) -> Self {
        Error::Run(msg.into())
    }
}

/// `bail!` for the library's error: returns `Err(Error::Run(format!(...)))`.
#[macro_export]
macro_rules! run_bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Run(format!($($arg)*)))
    };
}
