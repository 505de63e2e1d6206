"""Times Faster R-CNN's proposal selection in candletron and in Detectron2's algorithm on
PyTorch eager (torch top-k, box decoding and torchvision's batched_nms), on the same
random RPN outputs and thread count, and checks that both keep the same boxes (by hand,
not CI).

    pip install torch torchvision safetensors   # a venv is fine
    python3 tools/compare/compare_proposals.py [--threads 2] [--batch 32] [--size 640]

The inputs follow configs/synthetic_faces/faster_rcnn_mnv2_fpn.yaml (p3-p6, three square
anchors per cell, 1000 per level before NMS at 0.7, 500 after). The PyTorch side is
Detectron2's `find_top_rpn_proposals` as it runs in a training step: decode every
anchor, top-k per level, then per image clip, drop empty boxes, NMS per level, cut.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torchvision
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [[16, 24, 32], [48, 64, 96], [128, 160, 192], [256, 320, 400]]
PRE, POST, NMS, MIN_SIZE = 1000, 500, 0.7, 0.0
SCALE_CLAMP = math.log(1000.0 / 16)


def anchors(size):
    """Per level: cells row by row, each cell's anchors in size order (offset 0.5)."""
    levels = []
    for l, sizes in enumerate(SIZES):
        stride = 8 << l
        cells = -(-size // stride)
        c = (torch.arange(cells, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        half = torch.tensor(sizes, dtype=torch.float32).reshape(1, -1, 1) / 2
        levels.append((centres + torch.cat([-half, -half, half, half], -1)).reshape(-1, 4))
    return levels


def decode(deltas, boxes):
    """Detectron2's Box2BoxTransform.apply_deltas with weights (1, 1, 1, 1)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    px = deltas[:, 0] * w + cx
    py = deltas[:, 1] * h + cy
    pw = torch.exp(deltas[:, 2].clamp(max=SCALE_CLAMP)) * w
    ph = torch.exp(deltas[:, 3].clamp(max=SCALE_CLAMP)) * h
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


def find_top_rpn_proposals(logits, deltas, level_anchors, size):
    n = logits[0].shape[0]
    proposals = [decode(d.reshape(-1, 4), a.repeat(n, 1)).reshape(n, -1, 4)
                 for d, a in zip(deltas, level_anchors)]
    batch = torch.arange(n)
    boxes, scores, ids = [], [], []
    for l, (p, s) in enumerate(zip(proposals, logits)):
        k = min(PRE, s.shape[1])
        top, idx = s.topk(k, dim=1)
        boxes.append(p[batch[:, None], idx])
        scores.append(top)
        ids.append(torch.full((k,), l, dtype=torch.int64))
    boxes, scores, ids = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(ids)
    out = []
    for i in range(n):
        b, s, lv = boxes[i], scores[i], ids
        valid = torch.isfinite(b).all(1) & torch.isfinite(s)
        if not valid.all():
            b, s, lv = b[valid], s[valid], lv[valid]
        b = torch.stack([b[:, 0].clamp(0, size), b[:, 1].clamp(0, size),
                         b[:, 2].clamp(0, size), b[:, 3].clamp(0, size)], 1)
        keep = ((b[:, 2] - b[:, 0]) > MIN_SIZE) & ((b[:, 3] - b[:, 1]) > MIN_SIZE)
        b, s, lv = b[keep], s[keep], lv[keep]
        keep = torchvision.ops.batched_nms(b, s, lv, NMS)[:POST]
        out.append(b[keep])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    level_anchors = anchors(args.size)
    per_level = [a.shape[0] for a in level_anchors]
    logits = [torch.randn(args.batch, r) * 2.0 for r in per_level]
    deltas = [torch.randn(args.batch, r, 4) * 0.3 for r in per_level]
    run = lambda: find_top_rpn_proposals(logits, deltas, level_anchors, args.size)
    kept = run()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    torch_ms = statistics.median(times)

    padded = torch.full((args.batch, POST, 4), float("nan"))
    for i, b in enumerate(kept):
        padded[i, : len(b)] = b
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "proposals.safetensors")
        save_file({
            "logits": torch.cat(logits, 1).contiguous(),
            "deltas": torch.cat(deltas, 1).contiguous(),
            "anchors": torch.cat(level_anchors).contiguous(),
            "per_level": torch.tensor(per_level, dtype=torch.int64),
            "image_sizes": torch.tensor([[args.size, args.size]] * args.batch, dtype=torch.int64),
            "limits": torch.tensor([PRE, POST, NMS, MIN_SIZE], dtype=torch.float32),
            "kept_boxes": padded,
            "kept_count": torch.tensor([len(b) for b in kept], dtype=torch.int64),
        }, path)
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        out = subprocess.run(
            ["cargo", "bench", "-q", "--bench", "proposals", "--", "--inputs", path,
             "--iters", str(args.iters), "--json"],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    print(f"| proposals, batch {args.batch} at {args.size}, {args.threads} threads "
          f"| candletron {ours['median_ms']:.1f} ms | Detectron2 on PyTorch {torch_ms:.1f} ms "
          f"| {ours['median_ms'] / torch_ms:.2f}x | images with other boxes: "
          f"{ours['mismatched_images']} of {args.batch} |")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"{sum(len(b) for b in kept)} proposals kept")


if __name__ == "__main__":
    main()
