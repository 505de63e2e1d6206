#!/usr/bin/env python3
"""Runs candletron's ONNX exports in onnxruntime: agreement with candletron's own outputs
and both speeds, side by side in one run, with the same thread count.

Run by hand after `cargo build --release --bins` and the README's main job (whose trained
SSDLite it exports); needs `pip install onnxruntime onnx safetensors numpy`:

    python tools/compare/onnx_runtime.py [--threads 2] [--iters 30]

For each case the `export` tool writes the model and a reference pair (an input picture,
`../shared/reference/astronaut.png` when present, resized to the export size, and
candletron's outputs for it); onnxruntime runs the file on that input (checked with
`onnx.checker` first); candletron's speed is the `benchmark` tool's `inference` task
(preprocessing, network and post-processing, as in the ONNX graph) at the same size.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
CLASSIFIER = "configs/imagenet/mobilenet_v2_classifier.yaml"
SSDLITE = "configs/synthetic_faces/ssdlite_mnv2_fpn.yaml"
SSDLITE_WEIGHTS = "output/synthetic_faces_ssdlite_mnv2_fpn/model_final.safetensors"


def run(cmd, env):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr}")
    return out.stdout


def candletron_ms(config, size, iters, env, weights=None):
    cmd = [BIN / "benchmark", "--config", config, "--task", "inference", "--size", str(size),
           "--iters", str(iters), "--json"]
    if weights:
        cmd += ["--", "MODEL.WEIGHTS", weights]
    return json.loads(run(cmd, env).strip().splitlines()[-1])["median_ms"]


def ort_ms(runner, feed, iters):
    for _ in range(5):
        runner.run(None, feed)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        runner.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def agreement(names, outs, ref):
    got = dict(zip(names, outs))
    if "logits" in got:
        return f"logits max |diff| {np.abs(got['logits'] - ref['logits']).max():.1e}"
    n_ort, n_ours = len(got["scores"]), len(ref["scores"])
    if n_ort != n_ours:
        return f"{n_ort} vs {n_ours} detections"
    if n_ours == 0:
        return "0 detections in both"
    # Detections whose scores tie to float rounding may come in either order: match each
    # to an unused equal one nearby (same class, closest box) before measuring.
    used = np.zeros(n_ours, bool)
    box_diff, score_diff, unmatched = 0.0, 0.0, 0
    for i in range(n_ort):
        lo, hi = max(0, i - 3), min(n_ours, i + 4)
        cands = [j for j in range(lo, hi) if not used[j] and got["classes"][i] == ref["classes"][j]]
        if not cands:
            unmatched += 1
            continue
        j = min(cands, key=lambda j: np.abs(got["boxes"][i] - ref["boxes"][j]).max())
        used[j] = True
        box_diff = max(box_diff, float(np.abs(got["boxes"][i] - ref["boxes"][j]).max()))
        score_diff = max(score_diff, abs(float(got["scores"][i] - ref["scores"][j])))
    return (f"{n_ours} detections ({unmatched} unmatched), boxes max |diff| {box_diff:.1e} px, "
            f"scores {score_diff:.1e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    picture = ROOT.parent / "shared" / "reference" / "astronaut.png"
    cases = [("MobileNetV2 classifier", CLASSIFIER, None, 224)]
    if (ROOT / SSDLITE_WEIGHTS).is_file():
        cases += [("SSDLite MNV2-FPN", SSDLITE, SSDLITE_WEIGHTS, s) for s in (320, 640)]
    else:
        print(f"(no {SSDLITE_WEIGHTS}: run the README's main job for the SSDLite rows)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    print(f"onnxruntime {ort.__version__}, {args.threads} threads, median of {args.iters} runs")
    print("| model | input | agreement (onnxruntime vs candletron) | onnxruntime ms | candletron ms |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, config, weights, size in cases:
            model = Path(tmp) / f"m{size}.onnx"
            ref = Path(tmp) / f"r{size}.safetensors"
            cmd = [BIN / "export", "--config-file", config, "--output", model,
                   "--size", str(size), str(size), "--reference", ref]
            if weights:
                cmd += ["--weights", weights]
            if picture.is_file():
                cmd += ["--reference-image", picture]
            run(cmd, env)
            onnx.checker.check_model(onnx.load(str(model)), full_check=True)
            runner = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
            reference = load_file(str(ref))
            feed = {"image": reference["image"]}
            outs = runner.run(None, feed)
            names = [o.name for o in runner.get_outputs()]
            t_ort = ort_ms(runner, feed, args.iters)
            t_ours = candletron_ms(config, size, args.iters, env, weights)
            print(f"| {name} | {size}x{size} | {agreement(names, outs, reference)} | "
                  f"{t_ort:.1f} | {t_ours:.1f} |")


if __name__ == "__main__":
    main()
