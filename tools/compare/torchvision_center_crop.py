#!/usr/bin/env python3
"""Writes the fixture of `tests/preprocess_torchvision.rs`: images whose center crop has
odd margins (where rounding half to even matters), and torchvision's crop of each.

Run by hand once (needs torch, torchvision, pillow, numpy):

    python tools/compare/torchvision_center_crop.py tests/data/torchvision_crop

For every case: `NAME.png` is the source image (RGB, grey or RGBA), `NAME_crop.png` is
`Resize(short)` then `CenterCrop(crop)` on the image as `ImageFolder` loads it
(`convert("RGB")`), taken as 8-bit pixels with `PILToTensor`, so the comparison is exact.
`cases.json` lists the cases with their sizes and the torchvision version.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

# name, mode, (width, height), resize short side, crop
CASES = [
    ("landscape", "RGB", (251, 195), 256, 224),  # resized 329x256: left margin 52.5
    ("portrait", "RGB", (195, 251), 256, 224),  # resized 256x329: top margin 52.5
    ("grey", "L", (233, 311), 255, 224),  # resized 255x340: left margin 15.5
    ("rgba", "RGBA", (413, 287), 256, 223),  # resized 368x256: margins 72.5 and 16.5
]


def source_image(mode, size, seed):
    """Waves with a sharp-edged disc: small as PNG, yet every one-pixel shift of the
    crop changes most pixels."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = []
    for c in range(4):
        fx, fy, ph = rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0, 6.3)
        wave = 127.5 + 100 * np.sin(fx * x + fy * y + ph)
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 80)
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        wave = np.where(disc, 255 - wave, wave)
        channels.append(np.clip(wave, 0, 255).astype(np.uint8))
    if mode == "L":
        return Image.fromarray(channels[0], "L")
    if mode == "RGB":
        return Image.fromarray(np.stack(channels[:3], -1), "RGB")
    return Image.fromarray(np.stack(channels, -1), "RGBA")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/torchvision_crop")
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, (name, mode, size, short, crop) in enumerate(CASES):
        img = source_image(mode, size, seed=100 + i)
        img.save(out / f"{name}.png")
        loaded = Image.open(out / f"{name}.png").convert("RGB")
        t = transforms.Compose(
            [transforms.Resize(short), transforms.CenterCrop(crop), transforms.PILToTensor()]
        )(loaded)
        assert t.dtype == torch.uint8 and t.shape == (3, crop, crop)
        Image.fromarray(t.permute(1, 2, 0).numpy(), "RGB").save(out / f"{name}_crop.png")
        listed.append({"name": name, "mode": mode, "width": size[0], "height": size[1],
                       "resize_short": short, "crop": crop})
        print(name, mode, size, "->", tuple(t.shape))
    meta = {"torchvision": torchvision.__version__, "torch": torch.__version__, "cases": listed}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
