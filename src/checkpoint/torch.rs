//! PyTorch checkpoints, read natively: the zip format (`torch.save` since 1.6) and the
//! legacy non-zip format (a sequence of pickles followed by raw storages), which older
//! torchvision weights such as `mobilenet_v2-b0353104.pth` use.

use std::collections::HashMap;
use std::io::Read;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, TensorRef, Value};

const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// Element type and size of a torch storage class.
fn storage_dtype(storage_type: &str) -> Result<(DType, usize), String> {
    Ok(match storage_type {
        "FloatStorage" => (DType::F32, 4),
        "DoubleStorage" => (DType::F64, 8),
        "HalfStorage" => (DType::F16, 2),
        "BFloat16Storage" => (DType::BF16, 2),
        "LongStorage" => (DType::I64, 8),
        "IntStorage" => (DType::I64, 4),
        "ShortStorage" => (DType::I64, 2),
        "CharStorage" => (DType::I64, 1),
        "ByteStorage" | "BoolStorage" => (DType::U8, 1),
        other => return Err(format!("unsupported storage type {other}")),
    })
}

/// Builds a tensor from a storage's raw bytes, honouring offset and strides.
fn materialize(t: &TensorRef, bytes: &[u8], name: &str) -> Result<Tensor, String> {
    let (dtype, size) = storage_dtype(&t.storage_type)?;
    let numel_storage = bytes.len() / size;
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "{name}: shape {:?} and stride {:?} disagree",
            t.shape, t.stride
        ));
    }
    // Shape, stride and offset are untrusted: every product and sum is checked, so that
    // no index computed below can wrap around (the running product too, as candle's
    // element count multiplies in the same order).
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("{name}: shape {:?} has too many elements", t.shape))?;
    if numel > 0 {
        // Highest element index touched, to check bounds before reading.
        let last = t
            .shape
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (d, s)| {
                (d - 1).checked_mul(*s)?.checked_add(acc)
            });
        match last {
            Some(last) if last < numel_storage => {}
            _ => {
                return Err(format!(
                    "{name}: tensor (offset {}, shape {:?}, stride {:?}) reaches beyond its storage of {numel_storage} elements (file truncated or corrupt)",
                    t.offset, t.shape, t.stride
                ))
            }
        }
    }
    // Element indices in row-major order of the logical shape.
    // The shape is untrusted (a zero stride repeats storage): reserve by the storage.
    let mut indices = Vec::with_capacity(numel.min(numel_storage.max(1)));
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        indices.push(t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>());
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let get = |i: usize| &bytes[i * size..(i + 1) * size];
    let dev = &Device::Cpu;
    let shape = t.shape.clone();
    let tensor = match (t.storage_type.as_str(), size) {
        ("FloatStorage", _) => {
            let v: Vec<f32> = indices
                .iter()
                .map(|&i| f32::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("DoubleStorage", _) => {
            let v: Vec<f64> = indices
                .iter()
                .map(|&i| f64::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("HalfStorage", _) => {
            let v: Vec<half::f16> = indices
                .iter()
                .map(|&i| half::f16::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("BFloat16Storage", _) => {
            let v: Vec<half::bf16> = indices
                .iter()
                .map(|&i| half::bf16::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        (_, _) if dtype == DType::U8 => Tensor::from_vec(
            indices.iter().map(|&i| bytes[i]).collect::<Vec<u8>>(),
            shape,
            dev,
        ),
        (_, n) => {
            let v: Vec<i64> = indices
                .iter()
                .map(|&i| {
                    let b = get(i);
                    let mut buf = [0u8; 8];
                    buf[..n].copy_from_slice(b);
                    // Sign-extend narrower integers.
                    if b[n - 1] & 0x80 != 0 {
                        buf[n..].fill(0xff);
                    }
                    i64::from_le_bytes(buf)
                })
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
    };
    tensor.map_err(|e| format!("{name}: {e}"))
}

/// Walks the unpickled object, collecting `(dotted name, tensor ref)`; the first level of
/// a wrapper dict (`state_dict`, `model`, ...) is looked through.
fn collect_tensors(value: &Value, prefix: &str, out: &mut Vec<(String, TensorRef)>) {
    match value {
        Value::Dict(entries) => {
            for (k, v) in entries {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                collect_tensors(v, &name, out);
            }
        }
        Value::Tensor(t) => out.push((prefix.to_string(), t.as_ref().clone())),
        _ => {}
    }
}

/// Picks the state dict out of a checkpoint: the top level if it holds tensors directly,
/// else the first of `state_dict`, `model`, `model_state_dict`, `module`, `net`.
fn state_dict(root: &Value) -> Result<Vec<(String, TensorRef)>, String> {
    let Value::Dict(entries) = root else {
        return Err("the checkpoint's top-level object is not a dict".into());
    };
    let direct: Vec<_> = entries
        .iter()
        .filter(|(_, v)| matches!(v, Value::Tensor(_)))
        .collect();
    if direct.is_empty() {
        for wrapper in ["state_dict", "model", "model_state_dict", "module", "net"] {
            if let Some((_, inner)) = entries.iter().find(|(k, _)| k.as_str() == Some(wrapper)) {
                if matches!(inner, Value::Dict(_)) {
                    return state_dict(inner);
                }
            }
        }
    }
    let mut out = Vec::new();
    collect_tensors(root, "", &mut out);
    if out.is_empty() {
        return Err("no tensors found in the checkpoint".into());
    }
    // `nn.DataParallel` checkpoints prefix every key with `module.`.
    if out.iter().all(|(k, _)| k.starts_with("module.")) {
        for (k, _) in out.iter_mut() {
            *k = k["module.".len()..].to_string();
        }
    }
    Ok(out)
}

pub fn is_legacy(data: &[u8]) -> bool {
    data.len() > 3 && data[0] == 0x80 && data[2] == 0x8a
}

/// The legacy format: magic, protocol version, system info, the object, the storage key
/// list, then for each key an i64 element count and the raw little-endian data.
pub(crate) fn read_legacy(data: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut pos = 0;
    match pickle::load(data, &mut pos)? {
        Value::BigInt(m) if m == LEGACY_MAGIC => {}
        _ => return Err("not a PyTorch legacy checkpoint (bad magic number)".into()),
    }
    let _protocol = pickle::load(data, &mut pos)?;
    let _sys_info = pickle::load(data, &mut pos)?;
    let root = pickle::load(data, &mut pos)?;
    let keys = match pickle::load(data, &mut pos)? {
        Value::List(keys) => keys,
        other => return Err(format!("expected the storage key list, found {other:?}")),
    };
    let refs = state_dict(&root)?;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for (_, t) in &refs {
        types.insert(&t.storage_key, &t.storage_type);
    }
    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let key = key
            .as_str()
            .ok_or("storage key is not a string")?
            .to_string();
        let Some(&stype) = types.get(key.as_str()) else {
            return Err(format!(
                "storage {key} is not used by any tensor; cannot know its element size"
            ));
        };
        let (_, size) = storage_dtype(stype)?;
        let header = data.get(pos..pos + 8).ok_or_else(|| {
            format!("file truncated at the header of storage {key} (offset {pos})")
        })?;
        let numel = i64::from_le_bytes(header.try_into().unwrap());
        pos += 8;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| format!("storage {key}: invalid element count {numel}"))?;
        let bytes = data.get(pos..pos + len).ok_or_else(|| {
            format!(
                "file truncated: storage {key} needs {len} bytes at offset {pos}, file has {}",
                data.len()
            )
        })?;
        pos += len;
        storages.insert(key, bytes);
    }
    refs.iter()
        .map(|(name, t)| {
            let bytes = storages.get(&t.storage_key).ok_or_else(|| {
                format!("{name}: storage {} missing from the file", t.storage_key)
            })?;
            Ok((name.clone(), materialize(t, bytes, name)?))
        })
        .collect()
}

/// The zip format: `ARCHIVE/data.pkl` plus one entry `ARCHIVE/data/KEY` per storage.
pub(crate) fn read_zip(data: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| format!("invalid zip archive: {e}"))?;
    let pkl_name = archive
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or("zip checkpoint without data.pkl")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> Result<Vec<u8>, String> {
        let mut f = archive
            .by_name(name)
            .map_err(|e| format!("zip entry {name}: {e}"))?;
        // The size is the zip header's claim: reserve at most 64 MiB up front.
        let mut buf = Vec::with_capacity((f.size() as usize).min(64 << 20));
        f.read_to_end(&mut buf)
            .map_err(|e| format!("zip entry {name}: {e}"))?;
        Ok(buf)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let pkl = read_entry(&pkl_name)?;
    let root = pickle::load(&pkl, &mut 0)?;
    let refs = state_dict(&root)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        if !cache.contains_key(&t.storage_key) {
            let bytes = read_entry(&format!("{prefix}data/{}", t.storage_key))?;
            cache.insert(t.storage_key.clone(), bytes);
        }
        let tensor = materialize(&t, &cache[&t.storage_key], &name)?;
        out.push((name, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor_ref(offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage_key: "0".into(),
            storage_type: "FloatStorage".into(),
            storage_numel: 6,
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn strides_and_offsets_pick_the_storage_elements() {
        let bytes: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = materialize(&tensor_ref(1, &[2, 2], &[1, 2]), &bytes, "w").unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1.0, 3.0], [2.0, 4.0]]);
        let empty = materialize(&tensor_ref(0, &[0, 1 << 40], &[1, 1]), &bytes, "e").unwrap();
        assert_eq!(empty.dims(), [0, 1 << 40]);
    }

    #[test]
    fn descriptions_that_overflow_or_overrun_are_errors() {
        let bytes = vec![0u8; 24];
        let big = 1usize << 62;
        for (offset, shape, stride) in [
            (0, vec![big, 4], vec![1, 1]),
            (0, vec![1 << 32, 1 << 32, 2], vec![0, 0, 0]),
            (0, vec![big, 4, 0], vec![0, 0, 0]),
            (0, vec![3, 2], vec![big * 2, 1]),
            (usize::MAX, vec![2], vec![1]),
            (usize::MAX - 1, vec![2], vec![3]),
            (0, vec![7], vec![1]),
        ] {
            let e = materialize(&tensor_ref(offset, &shape, &stride), &bytes, "w").unwrap_err();
            assert!(
                e.starts_with("w: ") && (e.contains("too many") || e.contains("beyond")),
                "{shape:?} {stride:?}: {e}"
            );
        }
    }
}
