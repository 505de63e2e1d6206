"""Writes tests/data/tiny_zip.pth: a checkpoint in torch.save's zip layout, made without
torch (stand-in classes with torch's module names), so the Rust reader's zip path is
tested against bytes produced by Python's own pickler.

Contents: {"epoch": 3, "state_dict": OrderedDict(
    "layer.weight": float32 2x3 stored transposed (a non-contiguous view, stride (1, 2)),
    "layer.bias":   float64 [0.5, -1.5, 2.25] at storage offset 1,
    "layer.num_batches_tracked": int64 7)}
Run: python3 tools/compare/make_zip_pth_fixture.py
"""
import collections
import io
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")


class FloatStorage: pass
class DoubleStorage: pass
class LongStorage: pass


def _rebuild_tensor_v2(*args):
    raise RuntimeError("never called when writing")


for cls in (FloatStorage, DoubleStorage, LongStorage):
    cls.__module__ = "torch"
    setattr(torch, cls.__name__, cls)
_rebuild_tensor_v2.__module__ = "torch._utils"
utils._rebuild_tensor_v2 = _rebuild_tensor_v2
sys.modules["torch"] = torch
sys.modules["torch._utils"] = utils


class Storage:
    def __init__(self, key, cls, fmt, values):
        self.key, self.cls, self.fmt, self.values = key, cls, fmt, values


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (_rebuild_tensor_v2, self.args)


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", len(obj.values))
        return None


w = Storage("0", FloatStorage, "<f", [1.0, 4.0, 2.0, 5.0, 3.0, 6.0])  # [[1,2,3],[4,5,6]] transposed
b = Storage("1", DoubleStorage, "<d", [99.0, 0.5, -1.5, 2.25])
n = Storage("2", LongStorage, "<q", [7])
sd = collections.OrderedDict()
sd["layer.weight"] = Tensor(w, 0, (2, 3), (1, 2))
sd["layer.bias"] = Tensor(b, 1, (3,), (1,))
sd["layer.num_batches_tracked"] = Tensor(n, 0, (), ())
buf = io.BytesIO()
Pickler(buf, protocol=2).dump({"epoch": 3, "state_dict": sd})

with zipfile.ZipFile("tests/data/tiny_zip.pth", "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for s in (w, b, n):
        z.writestr(f"archive/data/{s.key}", b"".join(struct.pack(s.fmt, v) for v in s.values))
print("wrote tests/data/tiny_zip.pth")
