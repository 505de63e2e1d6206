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
        "cuda" if cfg!(feature = "cuda") => shared(kind, index, Device::new_cuda),
        "metal" if cfg!(feature = "metal") => shared(kind, index, Device::new_metal),
        "cuda" | "metal" => candle_core::bail!(
            "MODEL.DEVICE is `{name}` but this build has no {kind} support; rebuild with `--features {kind}`"
        ),
        _ => candle_core::bail!("MODEL.DEVICE: unknown device `{name}`; expected cpu, cuda[:N] or metal"),
    }
}

/// One `Device` per GPU and process. Candle gives every `new_cuda` call its own id and
/// stream, and treats tensors of two such devices as living on different devices: the
/// model and the NCCL communicator of a data-parallel worker must share one.
fn shared(kind: &str, index: usize, new: fn(usize) -> Result<Device>) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DEVICES: Mutex<Option<HashMap<(String, usize), Device>>> = Mutex::new(None);
    let mut devices = DEVICES
        .lock()
        .map_err(|_| candle_core::Error::Msg("the device table is poisoned".into()))?;
    let devices = devices.get_or_insert_with(HashMap::new);
    if let Some(d) = devices.get(&(kind.to_string(), index)) {
        return Ok(d.clone());
    }
    let d = new(index)?;
    devices.insert((kind.to_string(), index), d.clone());
    Ok(d)
}
