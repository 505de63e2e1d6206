//! Where datasets live on disk.

use std::path::PathBuf;

use crate::config::Config;

/// `CANDLETRON_DATASETS` when set, else `DATASETS.ROOT`.
pub fn dataset_root(cfg: &Config) -> PathBuf {
    match std::env::var_os("CANDLETRON_DATASETS") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(cfg.datasets.root.clone()),
    }
}
