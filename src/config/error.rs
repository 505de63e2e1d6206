//! What can go wrong while loading a config.

use std::path::PathBuf;

use super::origin::Origin;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML: {message}")]
    Yaml { origin: Origin, message: String },
    #[error("{origin}: unknown config key {key}{}", suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    UnknownKey {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    #[error("{origin}: {key} expects {expected}, found {found}")]
    Type {
        key: String,
        origin: Origin,
        expected: String,
        found: String,
    },
    #[error("{origin}: {key}: `{found}` is not one of {allowed}{}", suggestion.as_ref().map(|s| format!("; did you mean \"{s}\"?")).unwrap_or_default())]
    Choice {
        key: String,
        origin: Origin,
        found: String,
        allowed: String,
        suggestion: Option<String>,
    },
    /// `key` is already located (`file:line: KEY`).
    #[error("{key} = {found} is out of range; allowed: {allowed}")]
    Range {
        key: String,
        found: String,
        allowed: String,
    },
    #[error("{from}: _BASE_ file {path} does not exist")]
    MissingBase { path: PathBuf, from: Origin },
    #[error("_BASE_ cycle: {}", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "))]
    BaseCycle(Vec<PathBuf>),
    #[error("command-line overrides must be KEY VALUE pairs; `{0}` has no value")]
    OddOverrides(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for ConfigError {
    fn from(msg: String) -> Self {
        ConfigError::Invalid(msg)
    }
}
