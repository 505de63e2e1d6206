#!/usr/bin/env python3
"""Writes the fixture of `tests/backbone.rs`'s output-stride test: torchvision's
MobileNetV2 with the weights shipped in `weights/`, its later strides replaced by
dilation as DeepLab does (the block that would reach below the output stride keeps
its resolution at the current rate, the blocks after it dilate by the rate times that
stride), run on one seeded input.

Run by hand once (needs torch, torchvision, safetensors):

    python tools/compare/dilated_mnv2_reference.py tests/data/mnv2_output_stride.safetensors

Holds `input` (1, 3, 64, 64) and, for output strides 16 and 8, `os{S}.res4` and
`os{S}.res5` (the outputs of `features[13]` and `features[17]`) in eval mode.
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file


def dilate(model, output_stride):
    current, rate = 2, 1
    for block in model.features[1:18]:
        dw = block.conv[-3][0]  # the depthwise 3x3 of every inverted residual
        nominal = dw.stride[0]
        if nominal > 1 and current >= output_stride:
            dw.stride, dw.dilation, dw.padding = (1, 1), (rate, rate), (rate, rate)
            rate *= nominal
        else:
            current *= nominal
            dw.dilation, dw.padding = (rate, rate), (rate, rate)
    return model


def main(out):
    weights = {k: v.float() for k, v in load_file("weights/mobilenet_v2_imagenet_f16.safetensors").items()}
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    tensors = {"input": x}
    for os_ in (16, 8):
        m = torchvision.models.mobilenet_v2()
        m.load_state_dict(weights)
        m = dilate(m.eval(), os_)
        with torch.no_grad():
            y = x
            for i, f in enumerate(m.features[:18]):
                y = f(y)
                if i == 13:
                    tensors[f"os{os_}.res4"] = y.clone()
                if i == 17:
                    tensors[f"os{os_}.res5"] = y.clone()
    for k, v in tensors.items():
        print(k, tuple(v.shape))
    save_file({k: v.contiguous() for k, v in tensors.items()}, out,
              metadata={"torch": torch.__version__, "torchvision": torchvision.__version__})


if __name__ == "__main__":
    main(sys.argv[1])
