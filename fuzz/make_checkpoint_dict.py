#!/usr/bin/env python3
"""Writes fuzz/checkpoint.dict, the libFuzzer dictionary of the `checkpoint` target: the
pickle opcodes with their usual arguments, the globals and persistent ids torch writes, the
zip and legacy framing, safetensors header keys. Mutations then splice whole tokens instead
of guessing them byte by byte. Run from the repository root: `python3
fuzz/make_checkpoint_dict.py`, then `cargo fuzz run checkpoint -- -dict=fuzz/checkpoint.dict`."""
import struct
from pathlib import Path


def short_str(s):
    """SHORT_BINUNICODE, how protocol 2+ pickles write short strings."""
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


GLOBALS = [
    ("collections", "OrderedDict"), ("builtins", "dict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
] + [("torch", s + "Storage") for s in
     ["Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"]]
WORDS = ["storage", "cpu", "0", "1", "data.pkl", "archive/data.pkl", "archive/data/0",
         "archive/byteorder", "archive/version", "little", "big", "state_dict", "model",
         "model_state_dict", "module", "net", "module.", "optimizer.", "num_batches_tracked",
         "features.0.0.weight", "__metadata__", "config", "class_names", "dtype", "shape",
         "data_offsets", "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL",
         "protocol_version", "little_endian", "type_sizes"]

tokens = set()
# Protocol headers, frames, and opcodes with typical small arguments.
tokens |= {b"\x80\x02", b"\x80\x04", b"\x80\x05", b"\x95" + struct.pack("<Q", 64)}
tokens |= {b"K\x00", b"K\x01", b"K\x02", b"K\xff", b"M\xe9\x03", b"J\xff\xff\xff\xff",
           b"J\x00\x00\x00\x80", b"\x8a\x01\x00", b"\x8a\x08" + b"\xff" * 8,
           b"\x8a\x11" + b"\x00" * 17, b"G" + struct.pack(">d", 1.5), b"q\x00", b"r\x00\x00\x00\x00",
           b"h\x00", b"j\x00\x00\x00\x00", b"\x94", b"}q\x00(", b")\x81", b"N", b"\x88", b"\x89",
           b"\x85", b"\x86", b"\x87", b"tq\x01", b"u", b"s", b"a", b"e", b"R", b"b", b"Q", b"."}
# Legacy magic number (LONG1) and the persistent-id tuple torch writes.
tokens.add(b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little"))
for module, name in GLOBALS:
    tokens.add(b"c" + module.encode() + b"\n" + name.encode() + b"\n")
    tokens.add(short_str(module) + short_str(name) + b"\x93")
    tokens.add(short_str(name))
for w in WORDS:
    tokens |= {short_str(w), binunicode(w), w.encode(), b'"' + w.encode() + b'"'}
tokens.add(b"(" + short_str("storage") + b"ctorch\nFloatStorage\n" + short_str("0")
           + short_str("cpu") + b"K\x04tQ")
# Zip framing: local header, central directory, end of central directory.
tokens |= {b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07",
           b"PK\x07\x08", b"\x14\x00", b"\x08\x00"}
# Safetensors: an 8-byte header length, then JSON.
tokens |= {struct.pack("<Q", 64), b'{"__metadata__":{', b'"data_offsets":[0,4]',
           b'"shape":[1]', b'"dtype":"F32"'}


def quote(b):
    # libFuzzer's dictionary syntax: backslash, quote and hex (\xNN) escapes only.
    out = ""
    for c in b:
        if c in b'\\"':
            out += "\\" + chr(c)
        elif 0x20 <= c <= 0x7E:
            out += chr(c)
        else:
            out += "\\x%02X" % c
    return '"' + out + '"'


lines = ["# Written by fuzz/make_checkpoint_dict.py: pickle opcodes, torch globals, zip,"
         " legacy and safetensors framing."]
lines += [quote(t) for t in sorted(tokens)]
Path(__file__).resolve().parent.joinpath("checkpoint.dict").write_text("\n".join(lines) + "\n")
print(f"{len(tokens)} tokens")
