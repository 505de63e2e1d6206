#!/usr/bin/env bash
# The CUDA checks in one run, for a GPU machine that is lent briefly: the CUDA tests, the speed
# table against PyTorch (f32 and bf16 autocast), the default config trained on the GPU in f32,
# bf16 and f16 (loss curves side by side, iterations per second), and a kernel profile of a
# training step when nsys is there. Everything lands in one folder.
#
# Here (CPU machine, no GPU):   bash tools/compare/gpu_check.sh pack
#   builds train_net and benchmark with `--features cuda` (../shared/gpu/build-cuda.sh),
#   compiles the custom kernels' sources with NVRTC (tools/compare/nvrtc_check.py), builds the
#   CUDA test binaries with the same toolchain, and packs them all into .gpu/ (carry it).
# There:                        bash tools/compare/gpu_check.sh run OUT_DIR [ITERS]
#   ITERS (default 100): iterations of each default-config run. The parts are bounded by
#   `timeout`, so that one slow part does not cost the others; each writes its own file:
#   tests.txt, speed.md, detectors.txt, train_{f32,bf16,f16}/metrics.json, curves.md, profile.txt.
#   PARTS (default tests,speed,detectors,train,profile) picks parts, in that order of
#   priority; where one call may run ten minutes, split the run, e.g. PARTS=tests,speed then
#   PARTS=detectors,train,profile, into the same OUT_DIR.
# Without a GPU, `run OUT_DIR ITERS cpu` goes through the same steps on the CPU with the
# host build (target/release), skipping the tests, the PyTorch table, the detectors' steps and
# the profile: a check of this script, not a measurement.
set -uo pipefail
MODE=${1:?usage: gpu_check.sh pack | run OUT_DIR [ITERS] [cpu]}

if [ "$MODE" = pack ]; then
  set -e
  ../shared/gpu/build-cuda.sh --release --features cuda --bins
  # The kernels' own sources, through NVRTC as the binaries compile them at run time.
  python3 tools/compare/nvrtc_check.py
  VENV=${CUDA_VENV:-$HOME/.cache/cuda13-venv}
  CUDA_HOME=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
  export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  for t in depthwise cuda_parity; do
    exe=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    [ -x "$exe" ] || { echo "no test binary for $t" >&2; exit 1; }
    xz -T2 -6 -c "$exe" > ".gpu/test_$t.xz"
    echo "packed .gpu/test_$t.xz"
  done
  exit 0
fi

[ "$MODE" = run ] || { echo "unknown mode $MODE" >&2; exit 2; }
OUT=${2:?usage: gpu_check.sh run OUT_DIR [ITERS] [cpu]}
ITERS=${3:-100}
DEVICE=${4:-cuda}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  RUN="bash .gpu/run-on-gpu.sh"
else
  RUN=""
fi
bin() { if [ -n "$RUN" ]; then echo "$RUN $1"; else echo "target/release/$1"; fi; }
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
PARTS=${PARTS:-tests,speed,detectors,train,profile}
want() { [[ ",$PARTS," == *",$1,"* ]]; }

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
  log "GPU: $(cat "$OUT/gpu.txt")"
fi
if [ "$DEVICE" = cuda ] && want tests; then
  : > "$OUT/tests.txt"
  for t in depthwise cuda_parity; do
    timeout 300 $RUN "test_$t" --test-threads 1 >> "$OUT/tests.txt" 2>&1
    log "tests $t: rc $? ($(grep -c '\.\.\. ok' "$OUT/tests.txt") ok so far, $(grep -c FAILED "$OUT/tests.txt") FAILED lines)"
  done
fi
if [ "$DEVICE" = cuda ] && want speed; then
  if python3 -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null; then
    timeout 420 python3 tools/compare/compare_speed_cuda.py --bench "$(bin benchmark)" --rounds 1 \
      > "$OUT/speed.md" 2> "$OUT/speed.err"
    log "speed table: rc $?"
  else
    log "speed table skipped: no PyTorch with CUDA here"
  fi
fi

# The detectors' training steps (random init, random images with synthetic boxes), as the
# speed table of docs/benchmarks.md has them for earlier builds: batch 8 at 256 and 32 at 640.
if [ "$DEVICE" = cuda ] && want detectors; then
  : > "$OUT/detectors.txt"
  for cfg in ssdlite_mnv2_fpn faster_rcnn_mnv2_fpn; do
    for bs in "8 256" "32 640"; do
      set -- $bs
      timeout 120 $(bin benchmark) --config "configs/synthetic_faces/$cfg.yaml" --task train \
        --batch "$1" --size "$2" --iters 5 --json -- MODEL.DEVICE cuda MODEL.WEIGHTS "" \
        > "$OUT/detector_step.log" 2>&1
      rc=$?
      echo "$cfg batch $1 size $2 rc $rc: $(tail -1 "$OUT/detector_step.log")" >> "$OUT/detectors.txt"
      log "train step $cfg batch $1 at $2: rc $rc"
    done
  done
fi

if want train; then
# The generated dataset stays outside OUT (it is not a result).
DATA=${TMPDIR:-/tmp}/gpu_check_data
# The README's default config on the device, in f32 and both mixed precisions, from the shipped
# ImageNet weights (the run ends before evaluation: DATASETS.TEST is emptied).
for prec in f32 bf16 f16; do
  case $prec in
    f32) amp=() ;;
    bf16) amp=(SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE bfloat16) ;;
    f16) amp=(SOLVER.AMP.ENABLED True SOLVER.AMP.DTYPE float16) ;;
  esac
  start=$(date +%s.%N)
  timeout 300 $(bin train_net) --config-file configs/synthetic_faces/ssdlite_mnv2_fpn.yaml \
    MODEL.DEVICE "$DEVICE" SOLVER.MAX_ITER "$ITERS" SOLVER.LOG_PERIOD 10 DATASETS.TEST "[]" \
    DATASETS.ROOT "$DATA" OUTPUT_DIR "$OUT/train_$prec" "${amp[@]}" > "$OUT/train_$prec.log" 2>&1
  rc=$?
  log "train $prec: rc $rc in $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  rm -f "$OUT/train_$prec"/*.safetensors
done
python3 - "$OUT" <<'PY' | tee "$OUT/curves.md"
import json, os, statistics, sys
out = sys.argv[1]
runs = {}
for prec in ("f32", "bf16", "f16"):
    path = f"{out}/train_{prec}/metrics.json"
    if os.path.exists(path):
        runs[prec] = {r["iteration"]: r for r in map(json.loads, open(path)) if "total_loss" in r}
if not runs:
    sys.exit("no training run wrote metrics")
iters = sorted(set.intersection(*(set(r) for r in runs.values())))
print("| iteration | " + " | ".join(f"{p} total_loss" for p in runs) + " |")
print("|---" * (len(runs) + 1) + "|")
for i in iters:
    print(f"| {i} | " + " | ".join(f"{runs[p][i]['total_loss']:.4f}" for p in runs) + " |")
print()
for p, r in runs.items():
    times = [x["time"] for x in r.values()]
    scale = [x.get("loss_scale") for x in r.values()]
    print(f"{p}: median step {statistics.median(times) * 1000:.1f} ms "
          f"({1 / statistics.median(times):.2f} it/s) over the logged steps; "
          f"last loss scale {scale[-1]}")
PY
fi

if ! want profile; then
  :
elif [ "$DEVICE" = cuda ] && command -v nsys > /dev/null; then
  timeout 240 nsys profile -o "$OUT/train_step" --force-overwrite true \
    $(bin benchmark) --task train --batch 32 --size 224 --iters 5 -- MODEL.DEVICE cuda \
    > "$OUT/profile.log" 2>&1
  nsys stats --report cuda_gpu_kern_sum "$OUT/train_step.nsys-rep" > "$OUT/profile.txt" 2>&1
  log "profile: rc $? ($OUT/profile.txt)"
else
  log "profile skipped (no nsys or no GPU)"
fi
log "done"
