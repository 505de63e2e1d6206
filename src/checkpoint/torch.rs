//! PyTorch checkpoints, read natively: the zip format (`torch.save` since 1.6) and the
//! legacy non-zip format (a sequence of pickles followed by raw storages), which older
//! torchvision weights such as `mobilenet_v2-b0353104.pth` use.

use std::collections::HashMap;
use std::io::Read;

use candle_core::{DType, Device, Tensor};

use super::limits::{check_shape, ReadBudget};
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

/// Storage element indices of a strided view, in row-major order of its shape.
struct StridedIndices<'a> {
    offset: usize,
    shape: &'a [usize],
    stride: &'a [usize],
    idx: Vec<usize>,
    left: usize,
}

impl Iterator for StridedIndices<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.offset
            + self
                .idx
                .iter()
                .zip(self.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        for d in (0..self.idx.len()).rev() {
            self.idx[d] += 1;
            if self.idx[d] < self.shape[d] {
                break;
            }
            self.idx[d] = 0;
        }
        Some(i)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Builds a tensor from a storage's raw bytes, honouring offset and strides; its bytes
/// are charged to `budget` before they are allocated.
fn materialize(
    t: &TensorRef,
    bytes: &[u8],
    name: &str,
    budget: &mut ReadBudget,
) -> Result<Tensor, String> {
    let (dtype, size) = storage_dtype(&t.storage_type)?;
    let numel_storage = bytes.len() / size;
    // Shape, stride and offset are untrusted: every product and sum is checked, so that
    // no index computed below can wrap around.
    let numel = check_shape(name, &t.shape)?;
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "{name}: shape {:?} and stride {:?} disagree",
            t.shape, t.stride
        ));
    }
    // A zero stride repeats storage: the output, not the storage, is what costs.
    let out_bytes = numel
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| format!("{name}: shape {:?} has too many elements", t.shape))?;
    budget.spend(out_bytes, || {
        format!("tensor {name} of shape {:?}", t.shape)
    })?;
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
    let indices = StridedIndices {
        offset: t.offset,
        shape: &t.shape,
        stride: &t.stride,
        idx: vec![0; t.shape.len()],
        left: numel,
    };
    let get = |i: usize| &bytes[i * size..(i + 1) * size];
    let dev = &Device::Cpu;
    let shape = t.shape.clone();
    let tensor = match (t.storage_type.as_str(), size) {
        ("FloatStorage", _) => {
            let v: Vec<f32> = indices
                .map(|i| f32::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("DoubleStorage", _) => {
            let v: Vec<f64> = indices
                .map(|i| f64::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("HalfStorage", _) => {
            let v: Vec<half::f16> = indices
                .map(|i| half::f16::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        ("BFloat16Storage", _) => {
            let v: Vec<half::bf16> = indices
                .map(|i| half::bf16::from_le_bytes(get(i).try_into().unwrap()))
                .collect();
            Tensor::from_vec(v, shape, dev)
        }
        (_, _) if dtype == DType::U8 => {
            Tensor::from_vec(indices.map(|i| bytes[i]).collect::<Vec<u8>>(), shape, dev)
        }
        (_, n) => {
            let v: Vec<i64> = indices
                .map(|i| {
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
fn collect_tensors(
    value: &Value,
    prefix: &str,
    out: &mut Vec<(String, TensorRef)>,
    budget: &mut ReadBudget,
) -> Result<(), String> {
    match value {
        Value::Dict(entries) => {
            for (k, v) in entries {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                // A long prefix is repeated in every name below it.
                budget.spend(prefix.len() + 1 + key.len(), || "tensor names".into())?;
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                collect_tensors(v, &name, out, budget)?;
            }
        }
        Value::Tensor(t) => {
            let dims = (t.shape.len() + t.stride.len()) * std::mem::size_of::<usize>();
            budget.spend(prefix.len() + dims, || "tensor names".into())?;
            out.push((prefix.to_string(), t.as_ref().clone()))
        }
        _ => {}
    }
    Ok(())
}

/// Picks the state dict out of a checkpoint: the top level if it holds tensors directly,
/// else the first of `state_dict`, `model`, `model_state_dict`, `module`, `net`.
fn state_dict(root: &Value, budget: &mut ReadBudget) -> Result<Vec<(String, TensorRef)>, String> {
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
                    return state_dict(inner, budget);
                }
            }
        }
    }
    let mut out = Vec::new();
    collect_tensors(root, "", &mut out, budget)?;
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
    let mut budget = ReadBudget::for_file(data.len());
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
        other => {
            return Err(format!(
                "expected the storage key list, found {}",
                pickle::brief(&other)
            ))
        }
    };
    let refs = state_dict(&root, &mut budget)?;
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
        let header = data.get(pos..pos.saturating_add(8)).ok_or_else(|| {
            format!("file truncated at the header of storage {key} (offset {pos})")
        })?;
        let numel = i64::from_le_bytes(header.try_into().unwrap());
        pos += 8;
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| format!("storage {key}: invalid element count {numel}"))?;
        let bytes = data.get(pos..pos.saturating_add(len)).ok_or_else(|| {
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
            Ok((name.clone(), materialize(t, bytes, name, &mut budget)?))
        })
        .collect()
}

/// The zip format: `ARCHIVE/data.pkl` plus one entry `ARCHIVE/data/KEY` per storage.
pub(crate) fn read_zip(data: &[u8]) -> Result<Vec<(String, Tensor)>, String> {
    let mut budget = ReadBudget::for_file(data.len());
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data))
        .map_err(|e| format!("invalid zip archive: {e}"))?;
    let pkl_name = archive
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or("zip checkpoint without data.pkl")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    // An entry's size is the zip header's claim, and deflate inflates a thousandfold:
    // reading stops where the budget does.
    let mut read_entry = |name: &str, budget: &mut ReadBudget| -> Result<Vec<u8>, String> {
        let f = archive
            .by_name(name)
            .map_err(|e| format!("zip entry {name}: {e}"))?;
        let mut buf = Vec::with_capacity((f.size() as usize).min(budget.left()).min(64 << 20));
        f.take(budget.left() as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("zip entry {name}: {e}"))?;
        budget.spend(buf.len(), || format!("zip entry {name}"))?;
        Ok(buf)
    };
    if let Ok(order) = read_entry(&format!("{prefix}byteorder"), &mut budget) {
        if order != b"little" {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let pkl = read_entry(&pkl_name, &mut budget)?;
    let root = pickle::load(&pkl, &mut 0)?;
    let refs = state_dict(&root, &mut budget)?;
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        if !cache.contains_key(&t.storage_key) {
            let bytes = read_entry(&format!("{prefix}data/{}", t.storage_key), &mut budget)?;
            cache.insert(t.storage_key.clone(), bytes);
        }
        let tensor = materialize(&t, &cache[&t.storage_key], &name, &mut budget)?;
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
        let budget = &mut ReadBudget::for_file(0);
        let t = materialize(&tensor_ref(1, &[2, 2], &[1, 2]), &bytes, "w", budget).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[1.0, 3.0], [2.0, 4.0]]);
        let empty = materialize(&tensor_ref(0, &[0, 1 << 40], &[1, 1]), &bytes, "e", budget);
        assert_eq!(empty.unwrap().dims(), [0, 1 << 40]);
        // An expanded view (zero stride) repeats a storage element.
        let t = materialize(&tensor_ref(2, &[3], &[0]), &bytes, "x", budget).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [2.0; 3]);
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
            (0, vec![0, 1 << 32, 1 << 32], vec![0, 0, 0]),
            (0, vec![1; 65], vec![0; 65]),
        ] {
            let budget = &mut ReadBudget::for_file(0);
            let e =
                materialize(&tensor_ref(offset, &shape, &stride), &bytes, "w", budget).unwrap_err();
            assert!(
                e.starts_with("w: ")
                    && (e.contains("too many") || e.contains("beyond") || e.contains("dimensions")),
                "{shape:?} {stride:?}: {e}"
            );
        }
    }

    #[test]
    fn what_a_file_describes_is_charged_before_it_is_built() {
        // One stored element repeated 2^40 times by a zero stride: 4 TiB from 4 bytes.
        let bytes = 1f32.to_le_bytes();
        let budget = &mut ReadBudget::for_file(200);
        let e = materialize(&tensor_ref(0, &[1 << 40], &[0]), &bytes, "w", budget).unwrap_err();
        assert!(
            e.contains("tensor w") && e.contains("out of proportion"),
            "{e}"
        );
        // Many names for one storage: each materialization is charged.
        let big = vec![0u8; 4 << 20];
        let budget = &mut ReadBudget::for_file(big.len());
        let view = tensor_ref(0, &[1 << 20], &[1]);
        let built = (0..100)
            .take_while(|_| materialize(&view, &big, "w", budget).is_ok())
            .count();
        assert_eq!(built, (64 + 16) / 4);
    }
}
