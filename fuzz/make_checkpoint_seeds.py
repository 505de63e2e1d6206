#!/usr/bin/env python3
"""Writes systematic seeds of the `checkpoint` target into a folder (default
/tmp/checkpoint_seeds): PyTorch checkpoints in the zip and the legacy format with every
storage type, strided, offset, viewed and parameter-wrapped tensors, wrapper dicts, and
tensor descriptions that are out of bounds or overflow; safetensors files of every dtype.
Written with the standard library alone: the pickles name torch's functions and storage
classes through stand-in modules, byte for byte what `torch.save` writes for them. Merge
them into the corpus with libFuzzer (`-merge=1`)."""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/checkpoint_seeds")
out.mkdir(parents=True, exist_ok=True)
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules.update({"torch": torch, "torch._utils": utils})
SIZES = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
         "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
         "ByteStorage": 1, "BoolStorage": 1, "ComplexFloatStorage": 8}
for name in SIZES:
    setattr(torch, name, type(name, (), {"__module__": "torch"}))


def stand_in(name):
    def f(*args):
        raise NotImplementedError
    f.__module__, f.__name__, f.__qualname__ = "torch._utils", name, name
    setattr(utils, name, f)
    return f


rebuild_v2, rebuild_v1 = stand_in("_rebuild_tensor_v2"), stand_in("_rebuild_tensor")
rebuild_param = stand_in("_rebuild_parameter")


class Storage:
    def __init__(self, kind, key, numel, view=None):
        self.kind, self.key, self.numel, self.view = kind, key, numel, view


class T:
    """A tensor as torch pickles it: a rebuild call on a persistent storage id."""

    def __init__(self, storage, offset, shape, stride, v1=False, param=False):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.v1, self.param = v1, param

    def __reduce__(self):
        if self.v1:
            inner = (rebuild_v1, (self.storage, self.offset, self.shape, self.stride))
        else:
            inner = (rebuild_v2, (self.storage, self.offset, self.shape, self.stride, False,
                                  collections.OrderedDict()))
        if self.param:
            return (rebuild_param, (Rebuilt(inner), True, collections.OrderedDict()))
        return inner


class Rebuilt:
    def __init__(self, reduced):
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            pid = ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
            return pid + (obj.view,) if obj.view else pid
        return None


def dumps(obj, protocol=2):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def raw(kind, numel):
    return bytes((i * 37 + 11) % 256 for i in range(numel * SIZES[kind]))


def zip_file(root, storages, byteorder=b"little", prefix="archive/"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(prefix + "data.pkl", dumps(root))
        if byteorder is not None:
            z.writestr(prefix + "byteorder", byteorder)
        for s in storages:
            z.writestr(f"{prefix}data/{s.key}", raw(s.kind, s.numel))
        z.writestr(prefix + "version", b"3\n")
    return buf.getvalue()


def legacy_file(root, storages, counts=None):
    data = dumps(0x1950a86a20f9469cfc6c) + dumps(1001)
    data += dumps({"protocol_version": 1001, "little_endian": True,
                   "type_sizes": {"short": 2, "int": 4, "long": 4}})
    data += dumps(root) + dumps([s.key for s in storages])
    for i, s in enumerate(storages):
        numel = s.numel if counts is None else counts[i]
        data += struct.pack("<q", numel) + raw(s.kind, max(0, min(numel, s.numel)))
    return data


n = 0


def put(name, data):
    global n
    (out / name).write_bytes(data)
    n += 1


def both(name, root, storages):
    put(f"{name}.pth", zip_file(root, storages))
    put(f"{name}_legacy.pth", legacy_file(root, storages))


for kind in SIZES:
    s = Storage(kind, "0", 6)
    both(f"{kind}", {"w": T(s, 0, (2, 3), (3, 1))}, [s])
s = Storage("FloatStorage", "0", 24)
both("strided", {"a": T(s, 1, (2, 3), (1, 2)), "b": T(s, 4, (3,), (0,)),
                 "c": T(s, 0, (), ()), "d": T(s, 0, (0, 5), (5, 1))}, [s])
both("param_v1", {"p": T(s, 0, (4,), (1,), param=True), "q": T(s, 2, (2, 2), (2, 1), v1=True)},
     [s])
for wrapper in ("state_dict", "model", "model_state_dict", "module", "net"):
    both(f"wrap_{wrapper}", {"epoch": 3, wrapper: collections.OrderedDict(
        [("layer.weight", T(s, 0, (2, 2), (2, 1)))])}, [s])
both("dataparallel", collections.OrderedDict(
    [("module.a", T(s, 0, (3,), (1,))), ("module.b", T(s, 3, (3,), (1,)))]), [s])
both("nested", {"x": {"y": {1: T(s, 0, (2,), (1,)), (1, 2): 5}}, "z": [T(s, 0, (1,), (1,))]}, [s])
big = 1 << 62
for name, shape, stride, offset in [("overflow_shape", (big, 4), (1, 1), 0),
                                    ("overflow_stride", (2, 2), (big, 1), 0),
                                    ("overflow_offset", (2,), (1,), (1 << 63) - 1),
                                    ("past_end", (5, 5), (5, 1), 0),
                                    ("rank_mismatch", (2, 3), (1,), 0),
                                    ("wrapping_numel", (1 << 32, 1 << 32, 2), (0, 0, 0), 0)]:
    both(name, {"w": T(s, offset, shape, stride)}, [s])
view_root = Storage("FloatStorage", "0", 24)
viewed = Storage("FloatStorage", "1", 4, view=("0", 8, 4))
put("legacy_view.pth", legacy_file({"v": T(viewed, 1, (3,), (1,)),
                                    "r": T(view_root, 0, (24,), (1,))}, [view_root]))
put("legacy_bad_count.pth", legacy_file({"w": T(s, 0, (4,), (1,))}, [s], counts=[-1]))
put("legacy_huge_count.pth", legacy_file({"w": T(s, 0, (4,), (1,))}, [s], counts=[1 << 61]))
unused = Storage("FloatStorage", "9", 2)
put("legacy_unused_storage.pth", legacy_file({"w": T(s, 0, (4,), (1,))}, [s, unused]))
put("zip_big_endian.pth", zip_file({"w": T(s, 0, (4,), (1,))}, [s], byteorder=b"big"))
put("zip_no_byteorder.pth", zip_file({"w": T(s, 0, (4,), (1,))}, [s], byteorder=None))
put("zip_other_prefix.pth", zip_file({"w": T(s, 0, (4,), (1,))}, [s], prefix="my_model/"))
put("zip_missing_storage.pth", zip_file({"w": T(Storage("FloatStorage", "7", 4), 0, (4,), (1,))},
                                        [s]))
for protocol in (0, 1, 3, 4, 5):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        payload = {"w": T(s, 0, (2,), (1,)), "meta": ["x", 1.5, b"b", None, True, (1,)]}
        pkl = io.BytesIO()
        Pickler(pkl, protocol=protocol).dump(payload)
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/data/0", raw("FloatStorage", 24))
    put(f"zip_protocol{protocol}.pth", buf.getvalue())
put("top_level_list.pth", zip_file([T(s, 0, (2,), (1,))], [s]))
# Descriptions that cost far more than the file: a zero stride repeating one element, one
# storage named by many tensors, a long name prefix repeated below it, an empty tensor whose
# other dimensions overflow, a deflated entry inflating a thousandfold.
one = Storage("FloatStorage", "0", 1)
both("zero_stride_expansion", {"w": T(one, 0, (1 << 40,), (0,))}, [one])
both("many_dims", {"w": T(one, 0, (1,) * 100, (0,) * 100)}, [one])
both("empty_overflow", {"w": T(one, 0, (0, 1 << 32, 1 << 32), (0, 0, 0))}, [one])
many = Storage("FloatStorage", "0", 4096)
both("one_storage_many_names", {f"t{i}": T(many, 0, (4096,), (1,)) for i in range(64)}, [many])
both("long_prefix", {"p" * 4000: {f"{i}": T(one, 0, (1,), (1,)) for i in range(16)}}, [one])
bomb = io.BytesIO()
with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("archive/data.pkl", dumps({"w": T(Storage("FloatStorage", "0", 1 << 22), 0,
                                                  (1 << 22,), (1,))}))
    z.writestr("archive/data/0", b"\0" * (16 << 20))
put("zip_deflate_bomb.pth", bomb.getvalue())
put("no_tensors.pth", zip_file({"a": 1}, []))

DTYPES = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
          "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, size) in tensors.items():
        nbytes = size if size is not None else DTYPES.get(dtype, 1) * max(1, int(
            __import__("math").prod(shape)))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob),
                                                                         len(blob) + nbytes]}
        blob += bytes(i % 251 for i in range(nbytes))
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


for dtype in DTYPES:
    put(f"st_{dtype}.safetensors", safetensors({"w": (dtype, [2, 3], None)}))
put("st_scalar_empty.safetensors", safetensors({"s": ("F32", [], None), "e": ("F32", [0, 4], 0)}))
put("st_wrong_size.safetensors", safetensors({"w": ("F32", [2, 3], 7)}))
put("st_unknown_dtype.safetensors", safetensors({"w": ("C64", [2], 16)}))
put("st_empty_overflow.safetensors", safetensors({"w": ("F32", [0, 1 << 32, 1 << 32], 0)}))
put("st_many_dims.safetensors", safetensors({"w": ("F32", [1] * 100, 4)}))
meta = {"config": "SOLVER:\n  BASE_LR: 0.1\n", "class_names": '["face", "b"]', "iteration": "3",
        "seed": "1", "format": "pt"}
put("st_trained.safetensors", safetensors({"w": ("F32", [2], None)}, meta))
for key in ("config", "class_names", "iteration", "seed"):
    for bad in ("", "x", "-1", "[1]", "{", "SOLVER: {BASE_LR: -1}", '["a"'):
        put(f"st_meta_{key}_{len(bad)}_{abs(hash(bad)) % 1000}.safetensors",
            safetensors({"w": ("F32", [2], None)}, {**meta, key: bad}))
print(f"{n} seeds in {out}")
