#!/usr/bin/env bash
# The main job from a fresh clone: install llamatelemetry (with what the demo needs) and run the demo.
# Arguments go to `llamatelemetry demo`, e.g. `scripts/demo.sh --target http://127.0.0.1:8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  echo "[demo] installing cmake and g++ (needed once, to build llama-server)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake g++ >/dev/null
fi
python -m pip install -q -e ".[demo]"
exec python -m llamatelemetry.cli demo "$@"
