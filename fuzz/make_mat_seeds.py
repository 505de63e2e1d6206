#!/usr/bin/env python3
"""Writes systematic seeds of the `mat_file` target into a folder (default
/tmp/mat_seeds): MAT-files written by scipy with every numeric class, char, logical,
complex, sparse, cell and struct arrays, plain and compressed; and hand-built elements for
what scipy never writes: every numeric storage type under every class, small data
elements, odd dimension counts, huge and negative dimensions, empty structs with many
elements, deep nesting. Needs numpy and scipy. Merge them into the corpus with libFuzzer
(`-merge=1`)."""
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mat_seeds")
out.mkdir(parents=True, exist_ok=True)
n = 0


def put(name, data):
    global n
    (out / name).write_bytes(data)
    n += 1


def savemat(name, variables, **kw):
    for compress in (False, True):
        buf = io.BytesIO()
        scipy.io.savemat(buf, variables, do_compression=compress, **kw)
        put(f"scipy_{name}_{'z' if compress else 'p'}.mat", buf.getvalue())


for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
              np.uint64, np.float32, np.float64):
    savemat(np.dtype(dtype).name, {"a": np.arange(6, dtype=dtype).reshape(2, 3)})
savemat("char", {"s": "hello", "u": "\u00e9\u4e2d", "e": ""})
savemat("logical", {"b": np.array([[True, False]])})
savemat("complex", {"c": np.array([1 + 2j, 3])})
savemat("sparse", {"m": scipy.sparse.csc_matrix(np.eye(3))})
savemat("struct", {"s": {"a": 1.0, "bb": "x", "c": np.zeros((0, 4))}})
cells = np.empty((2, 2), dtype=object)
cells[0, 0], cells[0, 1], cells[1, 0], cells[1, 1] = "a", np.ones(3), np.empty((0, 0)), "b"
savemat("cell", {"c": cells})
savemat("nd", {"x": np.zeros((2, 1, 3, 1, 2))})
savemat("empty_cell", {"c": np.empty((0, 1), dtype=object)})

HEADER = b"MATLAB 5.0 MAT-file, written by hand".ljust(116) + b"\0" * 8 + b"\0\x01IM"
MI = {"int8": 1, "uint8": 2, "int16": 3, "uint16": 4, "int32": 5, "uint32": 6, "single": 7,
      "double": 9, "int64": 12, "uint64": 13, "matrix": 14, "compressed": 15, "utf8": 16,
      "utf16": 17, "utf32": 18}


def element(ty, payload, small=False):
    if small and len(payload) <= 4:
        return struct.pack("<HH", ty, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", ty, len(payload)) + payload + b"\0" * ((8 - len(payload) % 8) % 8)


def matrix(cls, dims, name=b"x", body=b"", small_name=True):
    flags = element(MI["uint32"], struct.pack("<II", cls, 0))
    dims_e = element(MI["int32"], struct.pack(f"<{len(dims)}i", *dims))
    return element(MI["matrix"], flags + dims_e + element(MI["int8"], name, small_name) + body)


def mat(*elements):
    return HEADER + b"".join(elements)


CODES = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
         "single": "f", "double": "d", "int64": "q", "uint64": "Q"}
for cls in range(6, 16):
    for ty, code in CODES.items():
        data = struct.pack(f"<6{code}", *range(6))
        put(f"class{cls}_{ty}.mat", mat(matrix(cls, [2, 3], body=element(MI[ty], data))))
    put(f"class{cls}_small.mat", mat(matrix(cls, [1, 1], body=element(MI["int16"], b"\1\0", True))))
for ty in ("utf8", "utf16", "utf32", "uint16", "uint8"):
    text = "h\u00e9".encode({"utf8": "utf-8", "utf16": "utf-16-le", "utf32": "utf-32-le",
                              "uint16": "utf-16-le", "uint8": "latin-1"}[ty])
    count = len(text) // {"utf16": 2, "uint16": 2, "utf32": 4}.get(ty, 1)
    put(f"char_{ty}.mat", mat(matrix(4, [1, count], body=element(MI[ty], text))))
for dims in ([], [3], [1, 1, 1, 1, 1, 1, 1, 1], [-1, 2], [65536, 65536], [2**31 - 1] * 3,
             [0, 2**31 - 1]):
    put(f"dims_{len(dims)}_{abs(sum(dims)) % 1000}.mat",
        mat(matrix(6, dims, body=element(MI["double"], struct.pack("<d", 1.0)))))
field_len = element(MI["int32"], struct.pack("<i", 8), True)
put("struct_no_fields_many.mat", mat(matrix(2, [2**31 - 1, 2**31 - 1],
                                            body=field_len + element(MI["int8"], b""))))
put("struct_field_len0.mat", mat(matrix(2, [1, 1], body=element(MI["int32"], struct.pack(
    "<i", 0), True) + element(MI["int8"], b"a"))))
put("cell_huge_count.mat", mat(matrix(1, [2**31 - 1, 2**31 - 1])))
put("cell_wrong_element.mat", mat(matrix(1, [1, 1], body=element(MI["double"], b"\0" * 8))))
nested = b""
for _ in range(40):
    nested = element(MI["matrix"], element(MI["uint32"], struct.pack("<II", 1, 0))
                     + element(MI["int32"], struct.pack("<2i", 1, 1))
                     + element(MI["int8"], b"", True) + nested)
put("nested_40.mat", mat(nested))
put("big_small_element.mat", mat(struct.pack("<HH", MI["double"], 9) + b"\0" * 4))
put("unknown_element.mat", mat(element(99, b"abc"), matrix(6, [1, 1], body=element(
    MI["double"], struct.pack("<d", 2.0)))))
inner = matrix(6, [1, 1], body=element(MI["double"], struct.pack("<d", 3.0)))
put("compressed_plain.mat", mat(struct.pack("<II", MI["compressed"], len(zlib.compress(inner)))
                                + zlib.compress(inner)))
put("compressed_not_matrix.mat", mat(element(MI["compressed"], zlib.compress(
    element(MI["double"], b"\0" * 8)))))
put("compressed_corrupt.mat", mat(element(MI["compressed"], zlib.compress(inner)[:-6])))
put("big_endian.mat", HEADER[:126] + b"MI")
put("header_only.mat", HEADER)
print(f"{n} seeds in {out}")
