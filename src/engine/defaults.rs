//! What every run does first, as Detectron2's `default_setup`: create `OUTPUT_DIR`,
//! save the resolved config there, and resolve the seed.

use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, Result};

/// Creates `OUTPUT_DIR`, writes `OUTPUT_DIR/config.yaml`, and returns the seed to use
/// (`SEED`, or one from the clock when negative).
pub fn default_setup(cfg: &Config) -> Result<u64> {
    let out = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&out).map_err(|e| Error::io("cannot create OUTPUT_DIR", &out, e))?;
    let path = out.join("config.yaml");
    cfg.save(&path)
        .map_err(|e| Error::io("cannot write", &path, e))?;
    tracing::info!("full config saved to {}", path.display());
    let seed = if cfg.seed >= 0 {
        cfg.seed as u64
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    tracing::info!("using seed {seed}");
    Ok(seed)
}
