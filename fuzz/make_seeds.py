#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/corpus/TARGET/ (run once, by
hand, before the first `cargo fuzz run`; needs torch, scipy, numpy, pillow, safetensors).
Small valid files of each format, so that the fuzzer starts from real structure."""
import io
import json
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image
from safetensors.numpy import save

ROOT = Path(__file__).resolve().parent / "corpus"


def put(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


put("wider_bbx_gt", "two_images.txt",
    "0--Parade/0_Parade_marchingband_1_465.jpg\n2\n345 211 4 4 2 0 0 0 2 0\n"
    "331 126 3 3 0 0 0 1 0 0\n0--Parade/0_Parade_Parade_0_628.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n")
put("wider_bbx_gt", "space_in_name.txt", "1--Handshaking/my photo.png\n1\n10 20 30 40 0 0 0 0 0 0\n")
put("wider_bbx_gt", "invalid_face.txt", "a/b.jpg\n1\n1 2 -3 4 0 0 0 1 0 0\n")

put("prediction_file", "two.txt", "0_Parade_marchingband_1_465\n2\n10.0 20.0 30.0 40.0 0.99\n1 2 3 4 0.5\n")
put("prediction_file", "none.txt", "img\n0\n")
put("prediction_file", "negative.txt", "img\n1\n10 10 -5 -5 0.3\n")

# MAT-files shaped like the official ground truth: cells of names and of box matrices.
names = np.empty((2, 1), dtype=object)
names[0, 0], names[1, 0] = "0--Parade", "1--Handshaking"
files = np.empty((2, 1), dtype=object)
for i in range(2):
    inner = np.empty((2, 1), dtype=object)
    inner[0, 0], inner[1, 0] = f"img_{i}_a", f"img_{i}_b"
    files[i, 0] = inner
boxes = np.empty((2, 1), dtype=object)
for i in range(2):
    inner = np.empty((2, 1), dtype=object)
    inner[0, 0] = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float64)
    inner[1, 0] = np.zeros((0, 4))
    boxes[i, 0] = inner
for compress in (False, True):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"event_list": names, "file_list": files, "face_bbx_list": boxes},
                     do_compression=compress)
    put("mat_file", f"gt_{'compressed' if compress else 'plain'}.mat", buf.getvalue())
buf = io.BytesIO()
scipy.io.savemat(buf, {"gt_list": np.array([[1, 2], [3, 4]], dtype=np.int32)})
put("mat_file", "int_matrix.mat", buf.getvalue())

state = {"features.0.0.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
         "features.0.1.running_mean": torch.zeros(2),
         "features.0.1.num_batches_tracked": torch.tensor(3)}
for legacy in (False, True):
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    put("checkpoint", f"state_{'legacy' if legacy else 'zip'}.pth", buf.getvalue())
put("checkpoint", "trained.safetensors",
    save({"w": np.ones((2, 2), np.float32)},
         metadata={"config": "SOLVER:\n  BASE_LR: 0.1\n", "class_names": '["face"]',
                   "iteration": "3", "seed": "1"}))

put("config", "base.yaml", "SOLVER.BASE_LR 0.02 MODEL.DEVICE cpu\nMODEL:\n  META_ARCHITECTURE: SSDLite\n"
    "  ANCHOR_GENERATOR:\n    SIZES: [[16, 32], [64]]\nSOLVER:\n  STEPS: [10, 20]\n")
put("config", "lists.yaml", "INPUT.MIN_SIZE_TRAIN [640,672]\nDATASETS:\n  TRAIN: [a, b]\n  TEST: []\n")
put("config", "bad_value.yaml", "SOLVER.MOMENTUM -5\nSEED: 3\n")

put("coco_json", "instances.json", json.dumps({
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 12],
                     "area": 120, "iscrowd": 0}],
    "categories": [{"id": 7, "name": "face"}]}))
put("coco_json", "empty.json", json.dumps({"images": [], "annotations": [], "categories": []}))
put("coco_json", "crowd.json", json.dumps({
    "images": [{"id": 2, "file_name": "b.png", "width": 10, "height": 10}],
    "annotations": [{"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5],
                     "iscrowd": 1}],
    "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}))

img = Image.fromarray((np.arange(16 * 12 * 3) % 251).astype(np.uint8).reshape(12, 16, 3))
for fmt, kw, name in [("PNG", {}, "rgb.png"), ("JPEG", {"quality": 80}, "baseline.jpg"),
                      ("JPEG", {"progressive": True}, "progressive.jpg")]:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    put("image", name, buf.getvalue())
buf = io.BytesIO()
img.convert("L").save(buf, "PNG")
put("image", "grey.png", buf.getvalue())
print("seeds written under", ROOT)
