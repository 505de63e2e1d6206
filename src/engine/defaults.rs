//! What every run does first, as Detectron2's `default_setup`: create `OUTPUT_DIR`,
//! save the resolved config there, and resolve the seed.

use std::path::{Path, PathBuf};

use crate::checkpoint::read_trained_with;
use crate::config::Config;
use crate::error::{Error, Result};

/// Creates `OUTPUT_DIR`, writes `OUTPUT_DIR/config.yaml`, and returns the seed to use
/// (`SEED`, or one from the clock when negative).
pub fn default_setup(cfg: &Config) -> Result<u64> {
    write_config(cfg)?;
    Ok(resolve_seed(cfg))
}

/// Creates `OUTPUT_DIR` and writes the resolved config to `OUTPUT_DIR/config.yaml`.
pub fn write_config(cfg: &Config) -> Result<()> {
    let out = PathBuf::from(&cfg.output_dir);
    if out.exists() && !out.is_dir() {
        return Err(Error::run(format!(
            "{} {} is a file, not a folder",
            cfg.located("OUTPUT_DIR"),
            out.display()
        )));
    }
    std::fs::create_dir_all(&out).map_err(|e| Error::io("cannot create OUTPUT_DIR", &out, e))?;
    let path = out.join("config.yaml");
    cfg.save(&path)
        .map_err(|e| Error::io("cannot write", &path, e))?;
    tracing::info!("full config saved to {}", path.display());
    Ok(())
}

/// `SEED`, or one from the clock when negative.
pub fn resolve_seed(cfg: &Config) -> u64 {
    let seed = if cfg.seed >= 0 {
        cfg.seed as u64
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    tracing::info!("using seed {seed}");
    seed
}

/// The config an inference tool runs with. With `config_file`: defaults, the file, then
/// `opts`. Without one, when `weights` was written by training, the config stored in it
/// (so `--weights model_final.safetensors` alone is enough); otherwise the defaults. In
/// every case `weights` then sets `MODEL.WEIGHTS`.
pub fn inference_config(
    config_file: Option<&Path>,
    weights: Option<&Path>,
    opts: &[String],
) -> Result<Config> {
    let stored = match (config_file, weights) {
        (None, Some(w)) => read_trained_with(w)?,
        _ => None,
    };
    let mut cfg = match stored {
        Some(info) => {
            let w = weights.expect("stored configs come from the weights");
            tracing::info!("using the config stored in {}", w.display());
            let mut cfg = Config::default();
            cfg.merge_from_str(
                &info.config_yaml,
                &format!("{} (stored config)", w.display()),
            )?;
            cfg.merge_from_list(opts)?;
            cfg
        }
        None => Config::from_args(config_file, opts)?,
    };
    if let Some(w) = weights {
        cfg.merge_from_list(&["MODEL.WEIGHTS".to_string(), w.display().to_string()])?;
    }
    Ok(cfg)
}
