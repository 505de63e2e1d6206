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
    Tensor(Box<TensorRef>),
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

/// A value as error messages show it: its debug form cut at 200 bytes, since a small
/// pickle can describe a value whose full form runs to megabytes.
pub(crate) fn brief(v: &Value) -> String {
    const LIMIT: usize = 200;
    struct Capped(String);
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = LIMIT.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.0.push_str(&s[..cut]);
            // Stops the formatter: nothing more is wanted.
            Err(std::fmt::Error)
        }
    }
    let mut out = Capped(String::new());
    if std::fmt::write(&mut out, format_args!("{v:?}")).is_err() {
        out.0.push_str(" ...");
    }
    out.0
}

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
            other => Err(format!(
                "expected a non-negative integer, found {}",
                brief(other)
            )),
        }
    }

    fn as_usizes(&self) -> PResult<Vec<usize>> {
        match self {
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::as_usize).collect(),
            other => Err(format!(
                "expected a tuple of integers, found {}",
                brief(other)
            )),
        }
    }
}

/// Nesting deeper than this is refused: values are dropped, compared and walked
/// recursively, and torch checkpoints nest a few levels.
const MAX_DEPTH: u32 = 100;

/// The memo copies values (Python shares them): a few bytes of BINGETs can double a value
/// again and again. Copies are charged by size, up to this many values plus one per byte
/// of input; torchvision's MobileNetV2 checkpoint copies one per two bytes of its pickle.
const COPY_ALLOWANCE: usize = 1 << 16;

/// A value's nesting depth and size (values, plus one per 16 bytes of text), kept beside
/// it so that neither needs a walk.
#[derive(Debug, Clone, Copy)]
struct Meta {
    depth: u32,
    weight: usize,
}

impl Meta {
    fn leaf(v: &Value) -> Meta {
        let text = match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Global(m, n) => m.len() + n.len(),
            _ => 0,
        };
        Meta {
            depth: 0,
            weight: 1 + text / 16,
        }
    }

    fn parent(children: impl IntoIterator<Item = Meta>) -> PResult<Meta> {
        let mut m = Meta {
            depth: 0,
            weight: 1,
        };
        for c in children {
            m.adopt(c)?;
        }
        Ok(m)
    }

    fn adopt(&mut self, child: Meta) -> PResult<()> {
        self.depth = self.depth.max(child.depth + 1);
        self.weight = self.weight.saturating_add(child.weight);
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "corrupt pickle: values nested deeper than {MAX_DEPTH} levels"
            ));
        }
        Ok(())
    }
}

enum Item {
    Mark,
    V(Value, Meta),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, (Value, Meta)>,
    /// Size of the values the memo copied so far, and the most it may copy.
    copied: usize,
    copy_budget: usize,
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
        let meta = Meta::leaf(&v);
        self.stack.push(Item::V(v, meta));
    }

    /// Pushes a value built from `children`.
    fn push_parent(&mut self, v: Value, children: impl IntoIterator<Item = Meta>) -> PResult<()> {
        let meta = Meta::parent(children)?;
        self.stack.push(Item::V(v, meta));
        Ok(())
    }

    fn pop_item(&mut self) -> PResult<(Value, Meta)> {
        match self.stack.pop() {
            Some(Item::V(v, m)) => Ok((v, m)),
            Some(Item::Mark) => Err("corrupt pickle: unexpected mark".into()),
            None => Err("corrupt pickle: stack underflow".into()),
        }
    }

    fn pop(&mut self) -> PResult<Value> {
        Ok(self.pop_item()?.0)
    }

    /// The values above the topmost mark, and their metas.
    fn pop_mark(&mut self) -> PResult<(Vec<Value>, Vec<Meta>)> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v, m)) => items.push((v, m)),
                None => return Err("corrupt pickle: missing mark".into()),
            }
        }
        items.reverse();
        Ok(items.into_iter().unzip())
    }

    /// The value on top of the stack, which gains `children`.
    fn top_adopting(&mut self, children: &[Meta]) -> PResult<&mut Value> {
        match self.stack.last_mut() {
            Some(Item::V(v, m)) => {
                for c in children {
                    m.adopt(*c)?;
                }
                Ok(v)
            }
            _ => Err("corrupt pickle: expected a value on the stack".into()),
        }
    }

    fn charge_copy(&mut self, weight: usize) -> PResult<()> {
        self.copied = self.copied.saturating_add(weight);
        if self.copied > self.copy_budget {
            return Err(format!(
                "corrupt pickle: its memo copies more than {} values for {} bytes",
                self.copy_budget,
                self.data.len()
            ));
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> PResult<()> {
        let weight = self
            .memo
            .get(&idx)
            .ok_or_else(|| format!("corrupt pickle: memo {idx} not set"))?
            .1
            .weight;
        self.charge_copy(weight)?;
        let (v, m) = self.memo[&idx].clone();
        self.stack.push(Item::V(v, m));
        Ok(())
    }

    fn memo_put(&mut self, idx: u32) -> PResult<()> {
        let weight = match self.stack.last() {
            Some(Item::V(_, m)) => m.weight,
            _ => return Err("corrupt pickle: memo put on empty stack".into()),
        };
        self.charge_copy(weight)?;
        if let Some(Item::V(v, m)) = self.stack.last() {
            self.memo.insert(idx, (v.clone(), *m));
        }
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
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_get(i)?
                }
                b'}' => self.push(Value::Dict(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b')' => self.push(Value::Tuple(Vec::new())),
                b't' => {
                    let (items, metas) = self.pop_mark()?;
                    self.push_parent(Value::Tuple(items), metas)?
                }
                b'l' => {
                    let (items, metas) = self.pop_mark()?;
                    self.push_parent(Value::List(items), metas)?
                }
                b'd' => {
                    let (items, metas) = self.pop_mark()?;
                    let mut d = Value::Dict(Vec::new());
                    Self::set_items(&mut d, items)?;
                    self.push_parent(d, metas)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_item()?);
                    }
                    items.reverse();
                    let (items, metas): (Vec<_>, Vec<_>) = items.into_iter().unzip();
                    self.push_parent(Value::Tuple(items), metas)?
                }
                b's' => {
                    let (v, vm) = self.pop_item()?;
                    let (k, km) = self.pop_item()?;
                    Self::set_items(self.top_adopting(&[km, vm])?, vec![k, v])?
                }
                b'u' => {
                    let (items, metas) = self.pop_mark()?;
                    Self::set_items(self.top_adopting(&metas)?, items)?
                }
                b'a' => {
                    let (v, m) = self.pop_item()?;
                    if let Value::List(l) = self.top_adopting(&[m])? {
                        l.push(v)
                    }
                }
                b'e' => {
                    let (items, metas) = self.pop_mark()?;
                    if let Value::List(l) = self.top_adopting(&metas)? {
                        l.extend(items)
                    }
                }
                b'R' | 0x81 => {
                    let (args, am) = self.pop_item()?;
                    let (callable, cm) = self.pop_item()?;
                    let v = reduce(callable, args)
                        .map_err(|e| format!("at pickle offset {at}: {e}"))?;
                    self.push_parent(v, [cm, am])?
                }
                b'b' => {
                    // BUILD: object state (e.g. a state dict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'Q' => {
                    let (pid, m) = self.pop_item()?;
                    self.push_parent(Value::Persistent(Box::new(pid)), [m])?
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
                return Err(format!("unrecognised storage descriptor {}", brief(&a[0])));
            }
            let storage_type = match &pid[1] {
                Value::Global(_, n) => n.clone(),
                other => return Err(format!("storage type {}", brief(other))),
            };
            let key = match &pid[2] {
                Value::Str(s) => s.clone(),
                other => return Err(format!("storage key {}", brief(other))),
            };
            let storage_numel = pid[4].as_usize()?;
            // Legacy files describe a storage that views another as
            // (view key, element offset, size); the data lives in the root storage.
            let view_offset = match pid.get(5) {
                Some(Value::Tuple(view)) if view.len() == 3 => view[1].as_usize()?,
                _ => 0,
            };
            let offset = a[1]
                .as_usize()?
                .checked_add(view_offset)
                .ok_or("tensor offset overflows")?;
            Ok(Value::Tensor(Box::new(TensorRef {
                storage_key: key,
                storage_type,
                storage_numel,
                offset,
                shape: a[2].as_usizes()?,
                stride: a[3].as_usizes()?,
            })))
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
        copied: 0,
        copy_budget: COPY_ALLOWANCE.saturating_add(data.len()),
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

    /// PROTO 2, an empty list memoised, then `n` times: the memo's value twice, as a
    /// pair, memoised again (2^n values from 6n bytes).
    fn doubling(n: usize) -> Vec<u8> {
        let mut data = vec![0x80, 0x02, b']', b'q', 0];
        for _ in 0..n {
            data.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        data.push(b'.');
        data
    }

    #[test]
    fn memo_copies_are_bounded_by_the_input() {
        // 2^10 values from 71 bytes: within the allowance, read whole.
        let Value::Tuple(pair) = load(&doubling(10), &mut 0).unwrap() else {
            panic!("not a tuple")
        };
        assert_eq!(pair.len(), 2);
        // 2^40 values from 281 bytes: refused after copying at most the allowance.
        let e = load(&doubling(40), &mut 0).unwrap_err();
        assert!(e.contains("memo copies more than"), "{e}");
    }

    #[test]
    fn error_messages_show_a_bounded_part_of_a_value() {
        // 2^12 strings through the memo, then handed where an integer tuple belongs.
        let Value::Tuple(big) = load(&doubling(12), &mut 0).unwrap() else {
            panic!("not a tuple")
        };
        let e = Value::Tuple(big).as_usizes().unwrap_err();
        assert!(
            e.len() < 260 && e.ends_with(" ..."),
            "{} bytes: {e}",
            e.len()
        );
        assert_eq!(brief(&Value::Int(3)), "Int(3)");
    }

    #[test]
    fn nesting_is_bounded() {
        // n lists (or tuples), each holding the next: MARK n times, then LIST n times.
        let nested = |n: usize, op: u8| {
            let mut data = vec![0x80, 0x02];
            data.extend(std::iter::repeat_n(b'(', n));
            data.extend(std::iter::repeat_n(op, n));
            data.push(b'.');
            data
        };
        assert!(load(&nested(100, b'l'), &mut 0).is_ok());
        for (n, op) in [(102, b'l'), (100_000, b'l'), (300, b't')] {
            let e = load(&nested(n, op), &mut 0).unwrap_err();
            assert!(e.contains("nested deeper than 100"), "{e}");
        }
        // APPEND nests too: a list appended into a fresh one, memoised, again and again.
        let mut data = vec![0x80, 0x02, b']', b'q', 0];
        for _ in 0..200 {
            data.extend([b']', b'h', 0, b'a', b'q', 0]);
        }
        data.push(b'.');
        let e = load(&data, &mut 0).unwrap_err();
        assert!(e.contains("nested deeper than 100"), "{e}");
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
