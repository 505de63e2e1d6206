"""Times MobileNetV2 in candletron, PyTorch eager and ONNX Runtime in one run, on the same
shapes and thread count, and prints a markdown table with the ratios (by hand, not CI).

    cargo build --release --bin benchmark
    pip install torch torchvision onnx onnxruntime   # a venv is fine
    python3 tools/compare/compare_speed.py [--threads 2] [--rounds 2]

Rounds interleave the three engines so a slow spell of the machine hits them alike; the
table reports the best median of each engine over the rounds.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "target", "release", "benchmark")


def candletron(task, batch, size, threads, iters):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([BENCH, "--task", task, "--batch", str(batch), "--size", str(size),
                          "--iters", str(iters), "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def median_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch
    import torchvision
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ort_models = {}
    tmp = tempfile.mkdtemp()
    for size in (224, 640):
        path = os.path.join(tmp, f"mnv2_{size}.onnx")
        torch.onnx.export(model, torch.randn(1, 3, size, size), path, dynamo=False, opset_version=17)
        ort_models[size] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def torch_infer(size):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            return median_ms(lambda: model(x), 30 if size == 224 else 10, 5)

    def ort_infer(size):
        x = torch.randn(1, 3, size, size).numpy()
        s = ort_models[size]
        name = s.get_inputs()[0].name
        return median_ms(lambda: s.run(None, {name: x}), 30 if size == 224 else 10, 5)

    def torch_train():
        m = torchvision.models.mobilenet_v2().train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        x = torch.randn(8, 3, 224, 224)
        y = torch.randint(0, 1000, (8,))

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        return median_ms(step, 5, 2)

    cases = [
        ("forward b1 224", lambda: candletron("inference", 1, 224, args.threads, 30),
         lambda: torch_infer(224), lambda: ort_infer(224)),
        ("forward b1 640", lambda: candletron("inference", 1, 640, args.threads, 10),
         lambda: torch_infer(640), lambda: ort_infer(640)),
        ("train step b8 224 (fwd+bwd+SGD)", lambda: candletron("train", 8, 224, args.threads, 5),
         torch_train, None),
    ]
    best = {name: [float("inf")] * 3 for name, *_ in cases}
    for _ in range(args.rounds):
        for name, *fns in cases:
            for i, fn in enumerate(fns):
                if fn is not None:
                    best[name][i] = min(best[name][i], fn())
    print(f"MobileNetV2 (1000 classes), {args.threads} threads, {time.strftime('%Y-%m-%d')}, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print()
    print("| case | candletron ms | PyTorch eager ms | ONNX Runtime ms | candletron / PyTorch | candletron / ORT |")
    print("|---|---|---|---|---|---|")
    for name, *_ in cases:
        c, t, o = best[name]
        o_s = f"{o:.1f}" if o != float("inf") else "-"
        r_o = f"{c / o:.2f}" if o != float("inf") else "-"
        print(f"| {name} | {c:.1f} | {t:.1f} | {o_s} | {c / t:.2f} | {r_o} |")


if __name__ == "__main__":
    main()
