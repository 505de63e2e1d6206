"""Times MobileNetV2 on one CUDA GPU in one run: candletron with its depthwise CUDA kernels,
candletron with the portable depthwise path (stock Candle ops), and PyTorch eager with
cuDNN; prints a markdown table with the ratios (by hand, not CI).

Build here (no GPU needed) and run there, where PyTorch with CUDA is installed:

    ../shared/gpu/build-cuda.sh            # packs target/release/benchmark into .gpu/
    python3 tools/compare/compare_speed_cuda.py --bench "bash .gpu/run-on-gpu.sh benchmark"

Both engines compute in full f32: TF32 is turned off in PyTorch (cuDNN allows it by
default) since Candle's CUDA matmuls do not use it. The mixed-precision rows run
candletron with `SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16` and PyTorch under
`torch.autocast("cuda", dtype=torch.bfloat16)`. Rounds interleave the engines; the
table reports the best median of each over the rounds.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import time


AMP_BF16 = ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat16"]


def candletron(bench, task, batch, size, iters, portable, extra=()):
    env = dict(os.environ)
    if portable:
        env["CANDLETRON_DEPTHWISE"] = "portable"
    cmd = shlex.split(bench) + ["--task", task, "--batch", str(batch), "--size", str(size),
                                "--iters", str(iters), "--json", "--", "MODEL.DEVICE", "cuda",
                                *extra]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def median_ms(fn, iters, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="target/release/benchmark",
                    help="command that runs candletron's benchmark binary")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch
    import torchvision

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2().eval().to(dev)

    def torch_infer(batch, size, iters):
        x = torch.randn(batch, 3, size, size, device=dev)
        with torch.no_grad():
            return median_ms(lambda: model(x), iters, 5, sync)

    def torch_train(batch, size, iters, amp=False):
        m = torchvision.models.mobilenet_v2().train().to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        x = torch.randn(batch, 3, size, size, device=dev)
        y = torch.randint(0, 1000, (batch,), device=dev)

        def step():
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
        return median_ms(step, iters, 3, sync)

    def ours(task, batch, size, iters, portable, extra=()):
        return lambda: candletron(args.bench, task, batch, size, iters, portable, extra)

    cases = []
    for batch, size in ((1, 224), (1, 640), (32, 224)):
        iters = 30 if batch * size * size <= 640 * 640 else 20
        cases.append((f"forward b{batch} {size}",
                      ours("inference", batch, size, iters, False),
                      ours("inference", batch, size, iters, True),
                      lambda b=batch, s=size, i=iters: torch_infer(b, s, i)))
    for batch in (8, 32):
        cases.append((f"train step b{batch} 224 (fwd+bwd+SGD)",
                      ours("train", batch, 224, 10, False),
                      ours("train", batch, 224, 10, True),
                      lambda b=batch: torch_train(b, 224, 10)))
    for batch in (8, 32):
        cases.append((f"train step b{batch} 224, AMP bf16",
                      ours("train", batch, 224, 10, False, AMP_BF16),
                      ours("train", batch, 224, 10, True, AMP_BF16),
                      lambda b=batch: torch_train(b, 224, 10, amp=True)))

    best = {name: [float("inf")] * 3 for name, *_ in cases}
    for _ in range(args.rounds):
        for name, *fns in cases:
            for i, fn in enumerate(fns):
                best[name][i] = min(best[name][i], fn())
    print(f"MobileNetV2 (1000 classes), f32 (AMP rows: bf16 compute), {time.strftime('%Y-%m-%d')}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    print()
    print("| case | candletron, dw kernel ms | candletron, portable dw ms | PyTorch eager ms "
          "| kernel / portable | candletron / PyTorch |")
    print("|---|---|---|---|---|---|")
    for name, *_ in cases:
        k, p, t = best[name]
        print(f"| {name} | {k:.2f} | {p:.2f} | {t:.2f} | {k / p:.2f} | {k / t:.2f} |")


if __name__ == "__main__":
    main()
