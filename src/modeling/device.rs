//! `MODEL.DEVICE` to a Candle device.

use candle_core::{Device, Result};

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
