"""Copy the collector-tier configs into deploy/kubernetes/config/ (``python deploy/kubernetes/sync_configs.py``).

The ConfigMaps of the OpenTelemetry agent, gateway and Jaeger come from kustomize's ``configMapGenerator``, and
kustomize loads files only from inside the kustomization's directory: ``../otel-agent.yaml`` and a symlink to it
are both refused ("security; file ... is not in or below ..."), and a kustomization in deploy/ itself cannot be
a base of deploy/kubernetes (a directory containing its own overlay is a cycle). So the manifests use verbatim
copies of the files the tests run (deploy/otel-agent.yaml, deploy/otel-gateway.yaml, collector/jaeger.yaml);
tests/test_kubernetes.py fails when a copy differs from its source.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "config"
#: copy in deploy/kubernetes/config/ -> the file it copies
SOURCES = {name: ROOT / source for name, source in [
    ("otel-agent.yaml", "deploy/otel-agent.yaml"),
    ("otel-gateway.yaml", "deploy/otel-gateway.yaml"),
    ("jaeger.yaml", "collector/jaeger.yaml"),
]}


def stale() -> list[str]:
    """Names of the copies that are missing or differ from their source."""
    return [name for name, source in SOURCES.items()
            if not (OUT / name).exists() or (OUT / name).read_bytes() != source.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"only check that {OUT.name}/ is up to date (exit 1 if not)")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        print(f"{OUT} is {'stale (' + ', '.join(names) + '): run without --check' if names else 'up to date'}")
        return 1 if names else 0
    OUT.mkdir(exist_ok=True)
    for name, source in SOURCES.items():
        (OUT / name).write_bytes(source.read_bytes())
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
