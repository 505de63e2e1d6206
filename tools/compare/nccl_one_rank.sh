#!/usr/bin/env bash
# On a GPU machine, with train_net built by `../shared/gpu/build-cuda.sh --release --features nccl --bins`
# and carried in .gpu/: one NCCL rank (a launcher worker's environment, world size 1) runs every
# collective of the data-parallel path; its losses and final weights must equal a plain CUDA run's
# (within 1e-5: the CUDA kernels' atomics may reorder sums between any two runs).
# usage: bash tools/compare/nccl_one_rank.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: nccl_one_rank.sh OUT_DIR}
RUN="bash .gpu/run-on-gpu.sh train_net"
ARGS=(--config-file configs/synthetic_faces/ssdlite_mnv2_fpn.yaml DATASETS.ROOT "$OUT/data"
  DATASETS.SYNTHETIC.NUM_TRAIN 16 DATASETS.SYNTHETIC.NUM_VAL 4 DATASETS.SYNTHETIC.IMAGE_SIZE 256
  MODEL.DEVICE cuda MODEL.WEIGHTS "" MODEL.FPN.NORM FrozenBN MODEL.SSDLITE.NORM FrozenBN
  SOLVER.MAX_ITER 6 SOLVER.LOG_PERIOD 1 DATASETS.TEST "[]")
$RUN "${ARGS[@]}" OUTPUT_DIR "$OUT/plain"
CANDLETRON_RANK=0 CANDLETRON_LOCAL_RANK=0 CANDLETRON_WORLD_SIZE=1 \
  CANDLETRON_DIST_URL=tcp://127.0.0.1:29517 $RUN "${ARGS[@]}" OUTPUT_DIR "$OUT/nccl"
python3 - "$OUT" <<'PY'
import json, struct, sys
out = sys.argv[1]
def losses(d):
    return [(r["iteration"], r["total_loss"]) for r in map(json.loads, open(f"{out}/{d}/metrics.json")) if "total_loss" in r]
def tensors(d):
    raw = open(f"{out}/{d}/model_final.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    t = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32" or k.startswith("optimizer."):
            continue
        b = raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
        t[k] = struct.unpack(f"<{len(b) // 4}f", b)
    return t
a, b = losses("plain"), losses("nccl")
worst_loss = max(abs(x[1] - y[1]) / max(abs(x[1]), 1e-3) for x, y in zip(a, b))
ta, tb = tensors("plain"), tensors("nccl")
worst = max((max(abs(p - q) for p, q in zip(ta[k], tb[k])) / max(0.1, max(map(abs, ta[k]))), k) for k in ta)
print(f"iterations {len(a)} / {len(b)}; worst loss difference {worst_loss:.2e}; worst weight difference {worst[0]:.2e} ({worst[1]})")
ok = [x[0] for x in a] == [y[0] for y in b] and worst_loss <= 1e-5 and worst[0] <= 1e-5
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
