#!/usr/bin/env bash
# Final top-1 and training seconds per epoch of candletron and PyTorch on the same
# classification run: configs/classification/synthetic_mnv2.yaml (ImageNet MobileNetV2
# fine-tuned on the synthetic shapes) in candletron, then the same recipe in PyTorch
# (tools/compare/classification_torch.py) on the image folder candletron generated, both
# on THREADS threads (default 2). Prints Markdown tables. By hand, not CI, from the root:
#
#   PYTHON=/path/to/venv/bin/python bash tools/compare/classification.sh [OUT_DIR]
#
# OUT_DIR (default output/compare_classification) gets candletron/ (the run), candletron.log,
# torch.json and torch.log. PYTHON needs torch and torchvision; the ImageNet weights are
# read from ${CANDLETRON_SHARED:-../shared}/pretrained/mobilenet_v2-b0353104.pth.
# Seconds per epoch are training only: candletron's `training took` less its evaluations
# (the `images in X s` lines), over MAX_ITER / iterations per epoch; PyTorch's mean over
# its full epochs. The whole-run seconds include candletron's dataset generation (first
# run only), checkpoints and drawings.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-output/compare_classification}
config=configs/classification/synthetic_mnv2.yaml
threads=${THREADS:-2}
python=${PYTHON:-python3}
weights=${CANDLETRON_SHARED:-../shared}/pretrained/mobilenet_v2-b0353104.pth
[[ -f $weights ]] || { echo "missing $weights (set CANDLETRON_SHARED)" >&2; exit 1; }
"$python" -c "import torch, torchvision" ||
  { echo "$python lacks torch/torchvision (set PYTHON)" >&2; exit 1; }

cargo build --release --bin train_net
mkdir -p "$out"
overwrite=()
[[ -e $out/candletron ]] && overwrite=(--overwrite)
start=$(date +%s.%N)
RAYON_NUM_THREADS=$threads target/release/train_net --config-file "$config" \
  ${overwrite[@]+"${overwrite[@]}"} OUTPUT_DIR "$out/candletron" 2>&1 | tee "$out/candletron.log"
end=$(date +%s.%N)
candletron_wall=$(awk "BEGIN { print $end - $start }")

# From the run's resolved config: the dataset folder, iterations, batch, seed, workers.
config_values() {
  "$python" - "$1" <<'EOF'
import glob, json, os, sys

flat, stack = {}, []
for line in open(sys.argv[1]):
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    indent = len(line) - len(line.lstrip())
    key, _, value = line.strip().partition(":")
    stack = [(i, k) for i, k in stack if i < indent]
    path = ".".join([k for _, k in stack] + [key])
    if value.strip():
        try:
            flat[path] = json.loads(value.strip())
        except ValueError:
            flat[path] = value.strip()
    else:
        stack.append((indent, key))
root = os.environ.get("CANDLETRON_DATASETS") or flat.get("DATASETS.ROOT", "datasets")
s = "DATASETS.SYNTHETIC_SHAPES."
tag = "*_seed{}_n{}-{}_s{}".format(*(flat.get(s + k, "*") for k in
                                     ("SEED", "NUM_TRAIN", "NUM_VAL", "IMAGE_SIZE")))
dirs = glob.glob(f"{root}/synthetic_shapes/{tag}/train") or \
    glob.glob(f"{root}/synthetic_shapes/*/train")
if not dirs:
    sys.exit(f"no {root}/synthetic_shapes/*/train")
data = os.path.dirname(max(dirs, key=os.path.getmtime))
print(data, flat["SOLVER.MAX_ITER"], flat["SOLVER.IMS_PER_BATCH"], flat.get("SEED", 0),
      flat.get("DATALOADER.NUM_WORKERS", 1))
EOF
}
values=$(config_values "$out/candletron/config.yaml")
read -r data iters batch seed workers <<< "$values"
echo "PyTorch on $data: $iters iterations, batch $batch, $threads threads"
start=$(date +%s.%N)
"$python" tools/compare/classification_torch.py --data "$data" --weights "$weights" \
  --iters "$iters" --batch "$batch" --threads "$threads" --seed "$seed" \
  --workers "$workers" --out "$out/torch.json" 2>&1 | tee "$out/torch.log"
end=$(date +%s.%N)
torch_wall=$(awk "BEGIN { print $end - $start }")

"$python" - "$out" "$candletron_wall" "$torch_wall" <<'EOF'
import json, re, sys

out, c_wall, t_wall = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
log = open(f"{out}/candletron.log").read()
took = float(re.search(r"training took ([\d.]+) s", log).group(1))
ipe = int(re.search(r"(\d+) iterations per epoch", log).group(1))
before = log[: log.index("training took")]
evals = [float(s) for s in re.findall(r": \d+ images in ([\d.]+) s", before)]
records = [json.loads(l) for l in open(f"{out}/candletron/metrics.json") if l.strip()]
c_evals = [r for r in records if "eval/top1" in r]
iters = c_evals[-1]["iteration"] + 1
c_top1 = json.load(open(f"{out}/candletron/eval_results.json"))["top1"]
c_epoch = (took - sum(evals)) / (iters / ipe)
t = json.load(open(f"{out}/torch.json"))
t_epoch = t["train_seconds_per_epoch"] or t["train_seconds"] / (t["iters"] / t["iters_per_epoch"])

print(f"\n{iters} iterations, {ipe} per epoch, {t['threads']} threads; "
      f"torch {t['torch_version']}, torchvision {t['torchvision_version']}\n")
print("| | candletron | PyTorch | candletron - PyTorch |")
print("|---|---|---|---|")
print(f"| final top-1 (%) | {100 * c_top1:.2f} | {100 * t['final_top1']:.2f} "
      f"| {100 * (c_top1 - t['final_top1']):+.2f} points |")
print(f"| training s / epoch | {c_epoch:.1f} | {t_epoch:.1f} | x{c_epoch / t_epoch:.2f} |")
c_eval = sum(evals) / len(evals) if evals else float("nan")
print(f"| s / evaluation | {c_eval:.1f} | {t['eval_seconds']:.1f} "
      f"| x{c_eval / t['eval_seconds']:.2f} |")
print(f"| whole run, s | {c_wall:.0f} | {t_wall:.0f} | x{c_wall / t_wall:.2f} |")

print("\n| after iteration | candletron top-1 | PyTorch top-1 | candletron val loss "
      "| PyTorch val loss |")
print("|---|---|---|---|---|")
t_by_iter = {e["iteration"]: e for e in t["epochs"]}
fmt = lambda v: "" if v is None else f"{v:.4f}"
for r in c_evals:
    e = t_by_iter.get(r["iteration"], {})
    print(f"| {r['iteration'] + 1} | {fmt(r.get('eval/top1'))} | {fmt(e.get('val_top1'))} "
          f"| {fmt(r.get('eval/loss'))} | {fmt(e.get('val_loss'))} |")
EOF
