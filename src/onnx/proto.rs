//! The protobuf wire format, as far as ONNX model files need it: varints,
//! length-delimited fields (strings, bytes, nested messages, packed integers) and 32-bit
//! floats. Field numbers are `onnx.proto`'s.

/// A message under construction: fields are appended in the order they are written.
#[derive(Default)]
pub struct Message {
    buf: Vec<u8>,
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

const VARINT: u64 = 0;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

impl Message {
    pub fn new() -> Self {
        Self::default()
    }

    fn tag(&mut self, field: u32, wire: u64) {
        varint(&mut self.buf, ((field as u64) << 3) | wire);
    }

    /// An int32/int64/enum field; negative values take ten bytes, as protobuf requires.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.tag(field, VARINT);
        varint(&mut self.buf, v as u64);
        self
    }

    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.tag(field, FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.tag(field, LEN);
        varint(&mut self.buf, v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }

    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.buf)
    }

    /// A repeated int64 field, packed.
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        let mut body = Vec::with_capacity(vs.len() * 2);
        for &v in vs {
            varint(&mut body, v as u64);
        }
        self.bytes(field, &body)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_protobuf_reference_does() {
        // Examples from the protobuf encoding guide: 150 in field 1; "testing" in field 2.
        let mut m = Message::new();
        m.int(1, 150);
        assert_eq!(m.into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.string(2, "testing");
        assert_eq!(
            m.into_bytes(),
            [0x12, 0x07, 0x74, 0x65, 0x73, 0x74, 0x69, 0x6e, 0x67]
        );
        // Packed repeated 3, 270, 86942 in field 4.
        let mut m = Message::new();
        m.packed_ints(4, &[3, 270, 86942]);
        assert_eq!(
            m.into_bytes(),
            [0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05]
        );
        // -1 as int64 is ten bytes.
        let mut m = Message::new();
        m.int(1, -1);
        assert_eq!(m.into_bytes().len(), 11);
        let mut m = Message::new();
        m.float(2, 1.0);
        assert_eq!(m.into_bytes(), [0x15, 0x00, 0x00, 0x80, 0x3f]);
    }
}
