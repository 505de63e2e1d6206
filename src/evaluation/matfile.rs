//! A reader for MATLAB 5 MAT-files (`save -v7`): numeric, char, cell and struct arrays,
//! with zlib-compressed elements. The official WIDER FACE ground truth is stored this
//! way; no maintained crate reads its cell arrays, so this is the part we need, checked
//! on every read so a damaged file is an error, never a panic.

use std::io::Read;

use crate::data::datasets::record::DataError;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// Any numeric class, as f64, column-major.
    Numeric {
        dims: Vec<usize>,
        data: Vec<f64>,
    },
    Char {
        dims: Vec<usize>,
        text: String,
    },
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    Struct {
        dims: Vec<usize>,
        fields: Vec<(String, Vec<MatValue>)>,
    },
}

impl MatValue {
    pub fn dims(&self) -> &[usize] {
        match self {
            Self::Numeric { dims, .. }
            | Self::Char { dims, .. }
            | Self::Cell { dims, .. }
            | Self::Struct { dims, .. } => dims,
        }
    }

    pub fn as_cell(&self) -> Result<&[MatValue], DataError> {
        match self {
            Self::Cell { items, .. } => Ok(items),
            other => Err(format!("expected a cell array, found {}", other.kind()).into()),
        }
    }

    pub fn as_text(&self) -> Result<&str, DataError> {
        match self {
            Self::Char { text, .. } => Ok(text),
            other => Err(format!("expected a char array, found {}", other.kind()).into()),
        }
    }

    /// A numeric matrix as rows (MATLAB stores columns first).
    pub fn rows(&self) -> Result<Vec<Vec<f64>>, DataError> {
        let Self::Numeric { dims, data } = self else {
            return Err(format!("expected a numeric array, found {}", self.kind()).into());
        };
        let r = dims.first().copied().unwrap_or(0);
        let c = dims
            .iter()
            .skip(1)
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        let Some(c) = c.filter(|&c| r.checked_mul(c) == Some(data.len())) else {
            return Err(
                format!("numeric array of dims {dims:?} holds {} values", data.len()).into(),
            );
        };
        // An r x 0 matrix holds no values, so nothing in the file backs r: bound the rows
        // made for it (WIDER FACE's empty box lists are 0 x 4).
        if c == 0 && r > 1 << 20 {
            return Err(format!("numeric array of dims {dims:?}: too many empty rows").into());
        }
        Ok((0..r)
            .map(|i| (0..c).map(|j| data[j * r + i]).collect())
            .collect())
    }

    /// All values of a numeric array, column-major.
    pub fn values(&self) -> Result<&[f64], DataError> {
        match self {
            Self::Numeric { data, .. } => Ok(data),
            other => Err(format!("expected a numeric array, found {}", other.kind()).into()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Numeric { .. } => "a numeric array",
            Self::Char { .. } => "a char array",
            Self::Cell { .. } => "a cell array",
            Self::Struct { .. } => "a struct",
        }
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DataError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needed {n} bytes at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, DataError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// One data element: (type, payload). Handles the small-element form and padding.
    fn element(&mut self) -> Result<(u32, &'a [u8]), DataError> {
        let first = self.u32()?;
        if first >> 16 != 0 {
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err(
                    format!("small data element of {n} bytes at offset {}", self.pos - 4).into(),
                );
            }
            let payload = self.take(4)?;
            return Ok((ty, &payload[..n]));
        }
        let n = self.u32()? as usize;
        let payload = self.take(n)?;
        if first != MI_COMPRESSED {
            let pad = (8 - n % 8) % 8;
            if self.pos + pad <= self.data.len() {
                self.pos += pad;
            }
        }
        Ok((first, payload))
    }
}

fn numbers(ty: u32, b: &[u8]) -> Result<Vec<f64>, DataError> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => b.iter().map(|&v| v as i8 as f64).collect(),
        MI_UINT8 | MI_UTF8 => b.iter().map(|&v| v as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 | MI_UTF16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        other => return Err(format!("unsupported numeric data type {other}").into()),
    })
}

/// Parses a miMATRIX payload; returns the variable name and its value.
fn matrix(payload: &[u8], depth: usize) -> Result<(String, MatValue), DataError> {
    if depth > 32 {
        return Err("arrays nested too deeply".into());
    }
    if payload.is_empty() {
        // An empty cell element is stored as a zero-length matrix.
        return Ok((
            String::new(),
            MatValue::Numeric {
                dims: vec![0, 0],
                data: vec![],
            },
        ));
    }
    let mut c = Cursor {
        data: payload,
        pos: 0,
    };
    let (_, flags) = c.element()?;
    if flags.len() < 8 {
        return Err("array flags too short".into());
    }
    let class = flags[0];
    let (_, dims_b) = c.element()?;
    let dims: Vec<usize> = numbers(MI_INT32, dims_b)?
        .into_iter()
        .map(|d| d.max(0.0) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("array dimensions overflow")?;
    let (_, name_b) = c.element()?;
    let name = String::from_utf8_lossy(name_b).into_owned();
    let value = match class {
        MX_CELL => {
            // Each element takes at least an 8-byte tag: reserve no more than could follow.
            let mut items = Vec::with_capacity(count.min(payload.len() / 8));
            for _ in 0..count {
                let (ty, p) = c.element()?;
                if ty != MI_MATRIX {
                    return Err(format!("cell element of type {ty}, expected a matrix").into());
                }
                items.push(matrix(p, depth + 1)?.1);
            }
            MatValue::Cell { dims, items }
        }
        MX_STRUCT => {
            let (_, len_b) = c.element()?;
            let len = *numbers(MI_INT32, len_b)?
                .first()
                .ok_or("struct without field name length")? as usize;
            let (_, names_b) = c.element()?;
            if len == 0 {
                return Err("struct field name length 0".into());
            }
            let names: Vec<String> = names_b
                .chunks(len)
                .map(|ch| {
                    String::from_utf8_lossy(ch)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .collect();
            let mut fields: Vec<(String, Vec<MatValue>)> =
                names.into_iter().map(|n| (n, Vec::new())).collect();
            // A struct without fields holds nothing, whatever its dimensions claim.
            let elements = if fields.is_empty() { 0 } else { count };
            for _ in 0..elements {
                for f in fields.iter_mut() {
                    let (ty, p) = c.element()?;
                    if ty != MI_MATRIX {
                        return Err(format!("struct field of type {ty}, expected a matrix").into());
                    }
                    f.1.push(matrix(p, depth + 1)?.1);
                }
            }
            MatValue::Struct { dims, fields }
        }
        MX_CHAR => {
            let text = if count == 0 {
                String::new()
            } else {
                let (ty, p) = c.element()?;
                let codes = numbers(ty, p)?;
                if ty == MI_UTF8 {
                    String::from_utf8_lossy(p).into_owned()
                } else {
                    // Column-major: for a 1xN name the order is already right.
                    codes
                        .iter()
                        .map(|&v| char::from_u32(v as u32).unwrap_or('\u{fffd}'))
                        .collect()
                }
            };
            MatValue::Char { dims, text }
        }
        6..=15 => {
            let data = if count == 0 {
                Vec::new()
            } else {
                let (ty, p) = c.element()?;
                numbers(ty, p)?
            };
            if data.len() != count {
                return Err(format!(
                    "numeric array `{name}` of dims {dims:?} holds {} values",
                    data.len()
                )
                .into());
            }
            MatValue::Numeric { dims, data }
        }
        other => return Err(format!("unsupported MATLAB class {other}").into()),
    };
    Ok((name, value))
}

/// The largest decompressed element read (WIDER FACE's files inflate to a few MiB).
const MAX_INFLATED: u64 = 1 << 30;

/// Reads every top-level variable of a MAT-file.
pub fn read_mat(bytes: &[u8]) -> Result<Vec<(String, MatValue)>, DataError> {
    if bytes.len() < 128 {
        return Err("file too short for a MAT-file header".into());
    }
    if &bytes[126..128] != b"IM" {
        return Err(if &bytes[126..128] == b"MI" {
            "big-endian MAT-files are not supported"
        } else {
            "not a MATLAB 5 MAT-file (bad endian indicator); v7.3 (HDF5) files are not supported"
        }
        .into());
    }
    let mut c = Cursor {
        data: bytes,
        pos: 128,
    };
    let mut vars = Vec::new();
    while !c.done() {
        let at = c.pos;
        let (ty, payload) = c.element().map_err(|e| format!("at offset {at}: {e}"))?;
        let (name, value) = match ty {
            MI_COMPRESSED => {
                // Decompressed size is the data's claim: stop at a bound far above any
                // annotation file rather than inflate a crafted element without end.
                let mut raw = Vec::new();
                flate2::read::ZlibDecoder::new(payload)
                    .take(MAX_INFLATED + 1)
                    .read_to_end(&mut raw)
                    .map_err(|e| format!("at offset {at}: corrupt compressed element: {e}"))?;
                if raw.len() as u64 > MAX_INFLATED {
                    return Err(format!(
                        "at offset {at}: compressed element inflates beyond {} MiB",
                        MAX_INFLATED >> 20
                    )
                    .into());
                }
                let mut inner = Cursor { data: &raw, pos: 0 };
                let (ty, p) = inner
                    .element()
                    .map_err(|e| format!("at offset {at}: {e}"))?;
                if ty != MI_MATRIX {
                    continue;
                }
                matrix(p, 0).map_err(|e| format!("at offset {at}: {e}"))?
            }
            MI_MATRIX => matrix(payload, 0).map_err(|e| format!("at offset {at}: {e}"))?,
            _ => continue,
        };
        vars.push((name, value));
    }
    Ok(vars)
}

/// Reads a MAT-file from disk; errors name the path.
pub fn read_mat_file(path: &std::path::Path) -> Result<Vec<(String, MatValue)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    read_mat(&bytes).map_err(|e| format!("{}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(ty: u32, payload: &[u8]) -> Vec<u8> {
        let mut e = [ty.to_le_bytes(), (payload.len() as u32).to_le_bytes()].concat();
        e.extend(payload);
        e.resize(e.len().next_multiple_of(8), 0);
        e
    }

    /// A MAT-file with one array of `class` and `dims`, followed by `body`.
    fn file(class: u8, dims: &[i32], body: &[u8]) -> Vec<u8> {
        let mut m = element(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
        let dims: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        m.extend(element(MI_INT32, &dims));
        m.extend(element(MI_INT8, b"x"));
        m.extend(body);
        let mut f = vec![b' '; 124];
        f.extend([0, 1, b'I', b'M']);
        f.extend(element(MI_MATRIX, &m));
        f
    }

    #[test]
    fn claimed_sizes_cost_nothing_the_data_does_not_hold() {
        // A cell claiming 2^62 elements and holding none: an error, not a reservation.
        let e = read_mat(&file(MX_CELL, &[i32::MAX, i32::MAX], &[])).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // A struct without fields claiming 2^62 elements holds nothing.
        let len = element(MI_INT32, &8i32.to_le_bytes());
        let body = [len, element(MI_INT8, &[])].concat();
        let vars = read_mat(&file(MX_STRUCT, &[i32::MAX, i32::MAX], &body)).unwrap();
        let MatValue::Struct { dims, fields } = &vars[0].1 else {
            panic!("not a struct: {:?}", vars[0].1)
        };
        assert_eq!((dims.len(), fields.len()), (2, 0));
    }
}
