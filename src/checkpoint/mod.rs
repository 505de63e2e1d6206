//! Reading and writing weights: PyTorch `.pth` (zip and legacy), safetensors, and loading
//! a state dict into the model's parameters with a report of what did not fit.

pub mod download;
mod error;
mod limits;
mod pickle;
mod torch;
mod trained_with;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use candle_core::Tensor;

use crate::layers::params::ParamStore;
pub use error::CheckpointError;
pub use trained_with::{parse_trained_with, read_trained_with, TrainedWith};

fn err(path: &Path, message: impl Into<String>) -> CheckpointError {
    CheckpointError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The local file behind a `MODEL.WEIGHTS`-style `spec`: a path as it is, a URL through
/// the [`download`] cache.
pub fn resolve(spec: &str) -> Result<std::path::PathBuf, CheckpointError> {
    if download::is_url(spec) {
        download::cached_path(spec)
    } else {
        Ok(std::path::PathBuf::from(spec))
    }
}

/// Reads every tensor of a checkpoint file (format detected from its first bytes), on CPU,
/// in the file's order.
pub fn read_checkpoint(path: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    let data = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    read_checkpoint_bytes(&data).map_err(|e| err(path, e.message))
}

pub fn read_checkpoint_bytes(data: &[u8]) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    read_bytes(data).map_err(CheckpointError::from)
}

fn read_bytes(data: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    if data.starts_with(b"PK\x03\x04") {
        torch::read_zip(data)
    } else if torch::is_legacy(data) {
        torch::read_legacy(data)
    } else if data.len() >= 8 {
        let tensors = safetensors::SafeTensors::deserialize(data).map_err(|e| {
            format!("not a PyTorch checkpoint (zip or legacy) and not valid safetensors: {e}")
        })?;
        let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
        names.sort();
        // The format checks offsets against the data; candle's stride arithmetic is not
        // checked, and an empty tensor's other dimensions are unbounded.
        for (name, view) in tensors.tensors() {
            limits::check_shape(&name, view.shape())?;
        }
        let map = candle_core::safetensors::load_buffer(data, &candle_core::Device::Cpu)
            .map_err(|e| e.to_string())?;
        Ok(names
            .into_iter()
            .map(|n| {
                let t = map[&n].clone();
                (n, t)
            })
            .collect())
    } else {
        Err(format!(
            "file too short ({} bytes) to be a checkpoint",
            data.len()
        ))
    }
}

/// Writes tensors as safetensors through a temporary file and a rename.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<(), CheckpointError> {
    let map: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = safetensors::serialize(map, None).map_err(|e| err(path, e.to_string()))?;
    crate::utils::fs::write_atomic(path, &bytes)
        .map_err(|e| err(path, format!("cannot write: {e}")))
}

/// What happened when a state dict was loaded into the model.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub loaded: usize,
    /// Model parameters the checkpoint does not have (they keep their initial values).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model does not have.
    pub unexpected: Vec<String>,
    /// (name, model shape, checkpoint shape): skipped.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

/// Names shown per list in a [`LoadReport`]: enough to see the pattern (a prefix that does
/// not match, another architecture) without burying the message under hundreds of names.
const NAMES_SHOWN: usize = 8;

fn write_names(f: &mut fmt::Formatter<'_>, names: &[String]) -> fmt::Result {
    write!(f, "{}", names[..names.len().min(NAMES_SHOWN)].join(", "))?;
    if names.len() > NAMES_SHOWN {
        write!(f, ", ... ({} more)", names.len() - NAMES_SHOWN)?;
    }
    Ok(())
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loaded {} tensors", self.loaded)?;
        if !self.mismatched.is_empty() {
            write!(f, "\n  shape mismatches (skipped):")?;
            for (n, m, c) in &self.mismatched {
                write!(f, "\n    {n}: model {m:?}, checkpoint {c:?}")?;
            }
        }
        if !self.missing.is_empty() {
            write!(f, "\n  missing in checkpoint ({}): ", self.missing.len())?;
            write_names(f, &self.missing)?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "\n  not used by the model ({}): ", self.unexpected.len())?;
            write_names(f, &self.unexpected)?;
        }
        Ok(())
    }
}

/// Copies checkpoint tensors into the parameters of the same name (converted to the
/// parameter's dtype and device). PyTorch's `num_batches_tracked` counters have no
/// counterpart here and are ignored.
pub fn load_state_dict(
    store: &ParamStore,
    tensors: &[(String, Tensor)],
) -> candle_core::Result<LoadReport> {
    let mut report = LoadReport::default();
    let given: HashMap<&str, &Tensor> = tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked") && !k.starts_with("optimizer."))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let vars = store.vars();
    let mut used: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (name, var) in &vars {
        // Exact name first; otherwise the longest checkpoint key that is a dotted suffix of
        // the model's name, as Detectron2 aligns an ImageNet backbone checkpoint
        // (`features.0.0.weight`) with a detector (`backbone.bottom_up.features.0.0.weight`).
        let key = if given.contains_key(name.as_str()) {
            Some(name.as_str())
        } else {
            name.match_indices('.')
                .map(|(i, _)| &name[i + 1..])
                .find(|k| given.contains_key(k))
        };
        if let Some(k) = key {
            used.insert(k);
        }
        match key.and_then(|k| given.get(k)) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                report
                    .mismatched
                    .push((name.clone(), var.dims().to_vec(), t.dims().to_vec()))
            }
            Some(t) => {
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                report.loaded += 1;
            }
        }
    }
    report.unexpected = tensors
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            !used.contains(k) && !k.ends_with("num_batches_tracked") && !k.starts_with("optimizer.")
        })
        .map(str::to_string)
        .collect();
    Ok(report)
}
