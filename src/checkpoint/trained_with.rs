//! What a training checkpoint records about the run that wrote it: the full config and
//! the training data's class names, in the safetensors header's metadata. With them a
//! `model_final.safetensors` alone rebuilds the model and names its classes, as a
//! Detectron2 user expects from a checkpoint plus its `config.yaml`, without having to
//! keep the two together.

use std::io::Read;
use std::path::Path;

use super::CheckpointError;

/// Metadata key of the YAML config.
pub const CONFIG_KEY: &str = "config";
/// Metadata key of the class names, a JSON array of strings.
pub const CLASS_NAMES_KEY: &str = "class_names";

/// The headers of real checkpoints are a few hundred kB (one entry per tensor and the
/// config); anything far beyond is not a checkpoint, and must not be allocated blindly.
const MAX_HEADER: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainedWith {
    /// The resolved config as `Config::to_yaml` writes it.
    pub config_yaml: String,
    /// The training dataset's `thing_classes`, in class-id order.
    pub class_names: Vec<String>,
}

impl TrainedWith {
    /// The metadata entries [`read_trained_with`] reads back.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (CONFIG_KEY.to_string(), self.config_yaml.clone()),
            (
                CLASS_NAMES_KEY.to_string(),
                serde_json::to_string(&self.class_names).expect("strings serialise"),
            ),
        ]
    }
}

/// The entries in a safetensors header (the JSON after the 8-byte length), if any.
fn from_header(header: &[u8]) -> Result<Option<TrainedWith>, String> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(header) else {
        return Ok(None);
    };
    let Some(md) = json.get("__metadata__").and_then(|m| m.as_object()) else {
        return Ok(None);
    };
    let Some(config_yaml) = md.get(CONFIG_KEY).and_then(|v| v.as_str()) else {
        return Ok(None);
    };
    let class_names = match md.get(CLASS_NAMES_KEY).and_then(|v| v.as_str()) {
        Some(s) => serde_json::from_str::<Vec<String>>(s)
            .map_err(|e| format!("bad `{CLASS_NAMES_KEY}` metadata: {e}"))?,
        None => Vec::new(),
    };
    Ok(Some(TrainedWith {
        config_yaml: config_yaml.to_string(),
        class_names,
    }))
}

/// The header length a file of `file_len` bytes may have, if `len` is one.
fn header_len(len: [u8; 8], file_len: u64) -> Option<u64> {
    let n = u64::from_le_bytes(len);
    // A zip or legacy PyTorch file starts with bytes that read as an absurd length.
    (n > 0 && n <= MAX_HEADER && n <= file_len.saturating_sub(8)).then_some(n)
}

/// [`read_trained_with`] on a checkpoint's bytes.
pub fn parse_trained_with(data: &[u8]) -> Result<Option<TrainedWith>, String> {
    let Some(len) = data.get(..8) else {
        return Ok(None);
    };
    let Some(n) = header_len(len.try_into().expect("8 bytes"), data.len() as u64) else {
        return Ok(None);
    };
    from_header(&data[8..8 + n as usize])
}

/// Reads only the safetensors header of `path` (not the tensors). `Ok(None)` for a
/// safetensors file without the entries (a converted or foreign checkpoint) and for files
/// of other formats (`.pth`); an error when the file cannot be read or its header is
/// corrupt.
pub fn read_trained_with(path: &Path) -> Result<Option<TrainedWith>, CheckpointError> {
    let err = |message: String| CheckpointError {
        path: path.display().to_string(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| err(format!("cannot read: {e}")))?
        .len();
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return Ok(None);
    }
    let Some(n) = header_len(len, file_len) else {
        return Ok(None);
    };
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| err(format!("cannot read the header: {e}")))?;
    from_header(&header).map_err(err)
}
