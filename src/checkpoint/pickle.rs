//! A pickle reader for the subset of opcodes `torch.save` emits (protocols 2-5).
//!
//! It builds plain values and recognises torch's tensor rebuild calls; it never runs
//! code. Every read is bounds-checked, so a truncated or corrupt file is an error
//! naming the byte offset, never a panic.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Integers wider than 64 bits (torch's legacy magic number is one).
    BigInt(i128),
    /// An integer beyond 128 bits: kept as a value that no reader takes for a number.
    HugeInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name` of a class or function.
    Global(String, String),
    /// A call we do not interpret: callable and arguments.
    Call(Box<Value>, Box<Value>),
    /// What `persistent_load` would resolve (torch's storage descriptors).
    Persistent(Box<Value>),
    Tensor(TensorRef),
}

/// A tensor as pickled: a view into a storage saved elsewhere in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage_key: String,
    /// torch storage class, e.g. `FloatStorage`.
    pub storage_type: String,
    /// Elements in the storage (from the descriptor).
    pub storage_numel: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

pub(crate) type PResult<T> = std::result::Result<T, String>;

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_usize(&self) -> PResult<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            Value::Bool(b) => Ok(*b as usize),
            other => Err(format!("expected a non-negative integer, found {other:?}")),
        }
    }

    fn as_usizes(&self) -> PResult<Vec<usize>> {
        match self {
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::as_usize).collect(),
            other => Err(format!("expected a tuple of integers, found {other:?}")),
        }
    }
}

enum Item {
    Mark,
    V(Value),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated pickle: needed {n} bytes at offset {} of {}",
                    self.pos,
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle: unterminated line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> PResult<String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("invalid UTF-8 string at offset {}", self.pos))
    }

    fn push(&mut self, v: Value) {
        self.stack.push(Item::V(v));
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => Err("corrupt pickle: unexpected mark".into()),
            None => Err("corrupt pickle: stack underflow".into()),
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v)) => items.push(v),
                None => return Err("corrupt pickle: missing mark".into()),
            }
        }
        items.reverse();
        Ok(items)
    }

    fn top(&mut self) -> PResult<&mut Value> {
        match self.stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => Err("corrupt pickle: expected a value on the stack".into()),
        }
    }

    fn memo_get(&self, idx: u32) -> PResult<Value> {
        self.memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| format!("corrupt pickle: memo {idx} not set"))
    }

    fn memo_put(&mut self, idx: u32) -> PResult<()> {
        let v = match self.stack.last() {
            Some(Item::V(v)) => v.clone(),
            _ => return Err("corrupt pickle: memo put on empty stack".into()),
        };
        self.memo.insert(idx, v);
        Ok(())
    }

    fn set_items(target: &mut Value, pairs: Vec<Value>) -> PResult<()> {
        let Value::Dict(entries) = target else {
            // Items into an object we do not model: drop them.
            return Ok(());
        };
        let mut it = pairs.into_iter();
        while let Some(k) = it.next() {
            let v = it.next().ok_or("corrupt pickle: odd SETITEMS")?;
            entries.push((k, v));
        }
        Ok(())
    }

    fn run(&mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.le::<8>()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Item::Mark),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    self.push(long_int(bytes))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v))
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s))
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?) as usize;
                    let s = self.utf8(n)?;
                    self.push(Value::Str(s))
                }
                b'T' | b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(if op == b'T' {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Value::Bytes(b)
                    })
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(if op == b'U' {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Value::Bytes(b)
                    })
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => {
                            return Err(format!(
                                "corrupt pickle: STACK_GLOBAL without strings at {at}"
                            ))
                        }
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.push(v)
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    let v = self.memo_get(i)?;
                    self.push(v)
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut d = Value::Dict(Vec::new());
                    Self::set_items(&mut d, items)?;
                    self.push(d)
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    Self::set_items(self.top()?, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    Self::set_items(self.top()?, items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.extend(items)
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)
                        .map_err(|e| format!("at pickle offset {at}: {e}"))?;
                    self.push(v)
                }
                b'b' => {
                    // BUILD: object state (e.g. a state dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::Persistent(Box::new(pid)))
                }
                other => {
                    return Err(format!(
                        "unsupported or corrupt pickle opcode 0x{other:02x} at offset {at}"
                    ))
                }
            }
        }
    }
}

/// A LONG1 integer: little-endian two's complement of any length.
fn long_int(bytes: &[u8]) -> Value {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    // Beyond 16 bytes the value fits an i128 only if the rest is sign extension.
    if bytes.len() > 16
        && (bytes[16..].iter().any(|&b| b != fill) || (bytes[15] & 0x80 != 0) != negative)
    {
        return Value::HugeInt;
    }
    let mut buf = [fill; 16];
    let n = bytes.len().min(16);
    buf[..n].copy_from_slice(&bytes[..n]);
    let v = i128::from_le_bytes(buf);
    match i64::try_from(v) {
        Ok(small) => Value::Int(small),
        Err(_) => Value::BigInt(v),
    }
}

/// Interprets the calls torch checkpoints make; anything else stays a `Call`.
fn reduce(callable: Value, args: Value) -> PResult<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Call(Box::new(callable), Box::new(args)));
    };
    let Value::Tuple(a) = &args else {
        return Ok(Value::Call(Box::new(callable), Box::new(args)));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("builtins", "dict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if a.len() < 4 {
                return Err(format!("{name} with {} arguments", a.len()));
            }
            let Value::Persistent(pid) = &a[0] else {
                return Err("tensor storage is not a persistent id".into());
            };
            let Value::Tuple(pid) = pid.as_ref() else {
                return Err("storage descriptor is not a tuple".into());
            };
            if pid.len() < 5 || pid[0].as_str() != Some("storage") {
                return Err(format!("unrecognised storage descriptor {pid:?}"));
            }
            let storage_type = match &pid[1] {
                Value::Global(_, n) => n.clone(),
                other => return Err(format!("storage type {other:?}")),
            };
            let key = match &pid[2] {
                Value::Str(s) => s.clone(),
                other => return Err(format!("storage key {other:?}")),
            };
            let storage_numel = pid[4].as_usize()?;
            // Legacy files describe a storage that views another as
            // (view key, element offset, size); the data lives in the root storage.
            let view_offset = match pid.get(5) {
                Some(Value::Tuple(view)) if view.len() == 3 => view[1].as_usize()?,
                _ => 0,
            };
            Ok(Value::Tensor(TensorRef {
                storage_key: key,
                storage_type,
                storage_numel,
                offset: a[1].as_usize()? + view_offset,
                shape: a[2].as_usizes()?,
                stride: a[3].as_usizes()?,
            }))
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => a
            .first()
            .cloned()
            .ok_or_else(|| "_rebuild_parameter without data".into()),
        _ => Ok(Value::Call(Box::new(callable), Box::new(args))),
    }
}

/// Reads one pickle from `data[*pos..]`, advancing `pos` past its STOP.
pub fn load(data: &[u8], pos: &mut usize) -> PResult<Value> {
    let mut m = Machine {
        data,
        pos: *pos,
        stack: Vec::new(),
        memo: HashMap::new(),
    };
    let v = m.run()?;
    *pos = m.pos;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_integers_of_any_length_keep_their_value_or_none() {
        let mut magic = 0x1950a86a20f9469cfc6c_i128.to_le_bytes()[..10].to_vec();
        assert_eq!(long_int(&magic), Value::BigInt(0x1950a86a20f9469cfc6c));
        magic.extend([0; 7]);
        assert_eq!(long_int(&magic), Value::BigInt(0x1950a86a20f9469cfc6c));
        assert_eq!(long_int(&[]), Value::Int(0));
        assert_eq!(long_int(&[0xff]), Value::Int(-1));
        assert_eq!(long_int(&[0x00, 0x80]), Value::Int(-32768));
        assert_eq!(long_int(&[0x80, 0x00]), Value::Int(128));
        let mut min = [0u8; 16];
        min[15] = 0x80;
        assert_eq!(long_int(&min), Value::BigInt(i128::MIN));
        assert_eq!(long_int(&[0xff; 40]), Value::Int(-1));
        let mut huge = [0u8; 17];
        huge[16] = 1;
        assert_eq!(long_int(&huge), Value::HugeInt);
        // Bit 127 set with zero extension: 2^127 does not fit.
        let mut beyond = [0u8; 17];
        beyond[15] = 0x80;
        assert_eq!(long_int(&beyond), Value::HugeInt);
        let mut v = 0x1234_5678_9abc_def0_1122_3344_i128.to_le_bytes().to_vec();
        v.truncate(12);
        assert_eq!(long_int(&v), Value::BigInt(0x1234_5678_9abc_def0_1122_3344));
    }

    #[test]
    fn a_long_integer_in_a_pickle_is_read_without_overflow() {
        // The fuzzer's find: PROTO 2, LONG1 of 16 bytes whose top bit is set.
        let mut data = vec![0x80, 0x02, 0x8a, 16];
        data.extend([0u8; 15]);
        data.extend([0x80, b'.']);
        assert_eq!(load(&data, &mut 0).unwrap(), Value::BigInt(i128::MIN));
    }
}
