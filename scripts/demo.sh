#!/usr/bin/env bash
# The main job from a fresh clone: install llamatelemetry (with what the demo needs) into a virtual
# environment of its own, .venv/ in the clone (or $LLAMATELEMETRY_VENV), and run the demo from it.
# Nothing is installed into the system Python (Debian's refuses it anyway: PEP 668).
# Arguments go to `llamatelemetry demo`, e.g. `scripts/demo.sh --target http://127.0.0.1:8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  echo "[demo] installing cmake and g++ (needed once, to build llama-server)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake g++ >/dev/null
fi
VENV="${LLAMATELEMETRY_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[demo] creating a virtual environment in $VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    echo "[demo] '$PYTHON -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
"$VENV/bin/python" -m pip install -q -e ".[demo]"
echo "[demo] installed into $VENV; later: $VENV/bin/llamatelemetry demo (or 'source $VENV/bin/activate')"
exec "$VENV/bin/python" -m llamatelemetry.cli demo "$@"
