//! What every run does first, as Detectron2's `default_setup`: create `OUTPUT_DIR`,
//! save the resolved config there, and resolve the seed.

use std::path::PathBuf;

use crate::config::Config;

/// Creates `OUTPUT_DIR`, writes `OUTPUT_DIR/config.yaml`, and returns the seed to use
/// (`SEED`, or one from the clock when negative).
pub fn default_setup(cfg: &Config) -> anyhow::Result<u64> {
    let out = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("cannot create OUTPUT_DIR {}: {e}", out.display()))?;
    let path = out.join("config.yaml");
    cfg.save(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
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
