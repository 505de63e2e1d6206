//! Models: backbones and meta-architectures behind registries, their parameters, and
//! `build_model`, which turns a config into a ready model.

pub mod anchor_generator;
pub mod backbone;
pub mod box_regression;
pub mod heads;
pub mod helpers;
pub mod matcher;
pub mod meta_arch;
pub mod poolers;
pub mod proposal_generator;
pub mod roi_heads;
pub mod sampling;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::checkpoint::{self, LoadReport};
use crate::config::Config;
use crate::layers::params::{is_buffer, ParamStore};
use meta_arch::{MetaArch, META_ARCH_REGISTRY};

/// `cpu`, `cuda`, `cuda:N` or `metal` (`metal:N`), as `MODEL.DEVICE` spells it.
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (
            k,
            i.parse::<usize>().map_err(|_| {
                candle_core::Error::Msg(format!("MODEL.DEVICE: bad device index in `{name}`"))
            })?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => Device::new_cuda(index),
        "metal" if cfg!(feature = "metal") => Device::new_metal(index),
        "cuda" | "metal" => candle_core::bail!(
            "MODEL.DEVICE is `{name}` but this build has no {kind} support; rebuild with `--features {kind}`"
        ),
        _ => candle_core::bail!("MODEL.DEVICE: unknown device `{name}`; expected cpu, cuda[:N] or metal"),
    }
}

/// A built model with its parameters.
pub struct Model {
    pub arch: Box<dyn MetaArch>,
    pub params: Arc<ParamStore>,
    pub device: Device,
    pixel_mean: Tensor,
    pixel_std: Tensor,
}

impl Model {
    /// Parameters the optimizer updates: not buffers, not under a frozen prefix.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let frozen = self.arch.frozen_prefixes();
        self.params
            .vars()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n) && !frozen.iter().any(|p| n.starts_with(p.as_str())))
            .collect()
    }

    /// `(x - PIXEL_MEAN) / PIXEL_STD` for NCHW images in 0..255.
    pub fn normalize(&self, images: &Tensor) -> Result<Tensor> {
        images
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .broadcast_sub(&self.pixel_mean)?
            .broadcast_div(&self.pixel_std)
    }

    /// Loads the checkpoint `spec` (a path or an `https://` URL) into the parameters,
    /// reporting what did not match.
    pub fn load_weights(&self, spec: &str) -> Result<LoadReport> {
        let path = checkpoint::resolve(spec).map_err(candle_core::Error::wrap)?;
        let tensors = checkpoint::read_checkpoint(&path).map_err(candle_core::Error::wrap)?;
        checkpoint::load_state_dict(&self.params, &tensors)
    }
}

/// Builds `MODEL.META_ARCHITECTURE` on `MODEL.DEVICE` with initial weights drawn from
/// `seed`, then loads `MODEL.WEIGHTS` if set (the report says what did not match).
pub fn build_model(cfg: &Config, seed: u64) -> Result<(Model, Option<LoadReport>)> {
    let device = parse_device(&cfg.model.device)?;
    if cfg.model.pixel_mean.len() != cfg.model.pixel_std.len() {
        candle_core::bail!("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have the same length");
    }
    if cfg.model.pixel_std.iter().any(|&s| s <= 0.0) {
        candle_core::bail!("MODEL.PIXEL_STD values must be positive");
    }
    let params = Arc::new(ParamStore::new(seed));
    let vb = params.var_builder(DType::F32, &device);
    let builder = META_ARCH_REGISTRY.get(&cfg.model.meta_architecture)?;
    let arch = builder(cfg, vb)?;
    let channels = cfg.model.pixel_mean.len();
    let to_t = |v: &[f64]| -> Result<Tensor> {
        Tensor::from_vec(
            v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            (1, channels, 1, 1),
            &device,
        )
    };
    let model = Model {
        arch,
        params,
        pixel_mean: to_t(&cfg.model.pixel_mean)?,
        pixel_std: to_t(&cfg.model.pixel_std)?,
        device,
    };
    let report = if cfg.model.weights.is_empty() {
        None
    } else {
        Some(model.load_weights(&cfg.model.weights)?)
    };
    Ok((model, report))
}
