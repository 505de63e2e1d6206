#!/usr/bin/env bash
# Load table of `serve` on loopback: SSDLite (MobileNetV2-FPN) on a 640 x 640 JPEG at
# concurrency 1, 4, 16 and 64, dynamic batching off (--max-batch 1) and on (--max-batch
# 2 and 8, --max-wait-ms 5). Prints one Markdown table.
#
#   tools/compare/serve_load.sh [IMAGE] [WEIGHTS] [CONFIG]
#
# IMAGE defaults to ../shared/reference/astronaut.png (resized to 640 x 640), WEIGHTS to
# the README's default run, CONFIG to its config. Needs `cargo build --release --bins`.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-../shared/reference/astronaut.png}
weights=${2:-output/synthetic_faces_ssdlite_mnv2_fpn/model_final.safetensors}
config=${3:-configs/synthetic_faces/ssdlite_mnv2_fpn.yaml}
duration=${DURATION_S:-20}
for f in "$image" "$weights" "$config" target/release/serve target/release/load_test; do
  [[ -e $f ]] || { echo "missing $f" >&2; exit 1; }
done
header=1
for setting in "off:--max-batch 1" "on, max 2:--max-batch 2 --max-wait-ms 5" \
               "on, max 8:--max-batch 8 --max-wait-ms 5"; do
  name=${setting%%:*}; flags=${setting#*:}
  log=$(mktemp)
  # shellcheck disable=SC2086
  target/release/serve --config-file "$config" --weights "$weights" --port 0 --queue 128 $flags \
    > "$log" 2>/dev/null &
  pid=$!
  for _ in $(seq 600); do grep -q "^listening on" "$log" && break; sleep 0.1; done
  url=$(sed -n 's/^listening on //p' "$log")
  [[ -n $url ]] || { echo "serve did not start" >&2; kill $pid; exit 1; }
  target/release/load_test --url "$url" --image "$image" --resize 640x640 \
    --concurrency 1,4,16,64 --duration-s "$duration" --label "batching $name" |
    if [[ $header == 1 ]]; then cat; else tail -n +3; fi
  header=0
  kill -TERM $pid; wait $pid || true
  rm -f "$log"
done
