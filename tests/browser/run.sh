#!/usr/bin/env bash
# The web page of `serve` in a real headless browser: installs Chromium and its driver
# from Debian's packages (apt, as root or through sudo) and Selenium from PyPI (in a
# virtual environment under target/), starts `serve` on a free port with a trained
# detector, and runs page_test.py (upload, wait, screenshot, boxes drawn?).
#
#   tests/browser/run.sh [WEIGHTS] [CONFIG] [IMAGE]
#
# Defaults: the README's main run and one of its synthetic validation images. The
# screenshot goes to ${SCREENSHOT:-target/browser/page.png}, outside the repository's
# tracked files. Not part of `cargo test` (it installs system packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
weights=${1:-output/synthetic_faces_ssdlite_mnv2_fpn/model_final.safetensors}
config=${2:-configs/synthetic_faces/ssdlite_mnv2_fpn.yaml}
image=${3:-$(find datasets/synthetic_faces -path '*WIDER_val*' -name '*.jpg' 2>/dev/null | sort | head -1)}
screenshot=${SCREENSHOT:-target/browser/page.png}
[[ -f $weights && -f $config && -n $image && -f $image ]] || {
  echo "needs a trained model and an image: run the README's main command first" >&2; exit 1; }

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver > /dev/null
fi
venv=target/browser/venv
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q selenium pillow

cargo build --release --bin serve
mkdir -p "$(dirname "$screenshot")"
log=$(mktemp)
target/release/serve --config-file "$config" --weights "$weights" --port 0 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2> /dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 600); do grep -q "^listening on" "$log" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$log")
[[ -n $url ]] || { cat "$log" >&2; exit 1; }
"$venv/bin/python" tests/browser/page_test.py "$url" "$(realpath "$image")" "$screenshot"
