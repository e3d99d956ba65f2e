#!/usr/bin/env bash
# Build (or reuse from the cache) the Go-built parts of the monitoring stack and print their absolute paths,
# one a line: the OpenTelemetry Collector (otelcol-llamatelemetry), then Jaeger v2 (jaeger).
# Versions: stack/versions.env. Components: stack/otelcol-builder.yaml. Logic: stack/build.py.
# Needs a Go toolchain (see the error message if there is none) and the Go module proxy.
#   scripts/build-stack.sh            # build or reuse; progress on stderr, paths on stdout
#   scripts/build-stack.sh --force    # rebuild both
# Runs at low priority so a build does not starve tests running beside it on a small machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
exec nice -n 10 "$PY" stack/build.py "$@"
