"""Sidecar Prometheus exporter for llama-server: its metrics, health, props and slots, plus NVML GPU stats.

``/metrics`` serves the configured targets and the GPUs; ``/probe?target=URL`` one llama-server
(Prometheus' multi-target exporter pattern). A target that is a llama-server router (``--models-dir``)
is read as a set of models without ever loading or waking one (``router_target.py``, built on
:mod:`llamatelemetry.router`).

Run it with ``llamatelemetry exporter`` (see ``--help``); the metric list is in ``METRICS.md``
next to this file. Programmatic use::

    from llamatelemetry.exporter import ExporterApp, ExporterConfig
    with ExporterApp(ExporterConfig(targets=["http://127.0.0.1:8080"], port=0, gpu=False)) as app:
        print(app.url + "/metrics")
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExporterApp", "ExporterConfig"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import llamatelemetry.exporter.targets` works without prometheus_client and httpx imported.
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
