"""``llamatelemetry exporter``: command-line flags (each with an environment variable) and the run loop.

This module follows the subcommand protocol of :mod:`llamatelemetry.cli`: it provides
``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``.

Example::

    llamatelemetry exporter --target http://127.0.0.1:8080 --target big=http://127.0.0.1:8081
    LLAMATELEMETRY_EXPORTER_TARGETS="a=http://127.0.0.1:8080,b=http://127.0.0.1:8081" llamatelemetry-exporter
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import threading
from typing import Any

from .._argtypes import tcp_port
from .._defaults import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT

HELP = "serve llama-server and GPU metrics for Prometheus"
DESCRIPTION = f"""\
Sidecar Prometheus exporter for llama.cpp's llama-server.

At every scrape it reads /metrics and /slots of each target concurrently (/props at most once a
minute, /health only when those answers don't tell the state; all under --timeout) and the GPUs
through NVML, and serves the result on http://LISTEN:PORT/metrics (default
{EXPORTER_DEFAULT_HOST}:{EXPORTER_DEFAULT_PORT}). http://LISTEN:PORT/probe?target=URL scrapes one
llama-server that Prometheus service discovery chose (the blackbox_exporter pattern).

Make the exporter the only reader of llama-server's /metrics: llama-server resets its two
throughput gauges (llamacpp:*_tokens_seconds) on every read. Dashboards should use rate()
of the llamacpp_*_total counters instead.

Every flag has an environment variable, shown in brackets; flags win over variables.
"""
EPILOG = f"""\
examples:
  llamatelemetry exporter                                   # one target: ${BASE_URL_ENV} or {DEFAULT_BASE_URL}
  llamatelemetry exporter --target http://127.0.0.1:8080 --target big=http://127.0.0.1:8081
  {API_KEY_ENV}=secret llamatelemetry exporter --listen 0.0.0.0 --no-gpu

  llamatelemetry exporter --probe-only --probe-allow '10.0.*:8080'   # Prometheus discovers the servers

router (multi-model) llama-server: give one target per model with its query string,
  e.g. --target qwen=http://127.0.0.1:8080?model=qwen (the query is sent on every request).
"""

ENV_TARGETS = "LLAMATELEMETRY_EXPORTER_TARGETS"
ENV_LISTEN = "LLAMATELEMETRY_EXPORTER_LISTEN"
ENV_PORT = "LLAMATELEMETRY_EXPORTER_PORT"
ENV_TIMEOUT = "LLAMATELEMETRY_EXPORTER_TIMEOUT"
ENV_NO_GPU = "LLAMATELEMETRY_EXPORTER_NO_GPU"
ENV_NO_GPU_PROCESSES = "LLAMATELEMETRY_EXPORTER_NO_GPU_PROCESSES"
ENV_GPU_PCIE = "LLAMATELEMETRY_EXPORTER_GPU_PCIE"
ENV_PROBE_ALLOW = "LLAMATELEMETRY_EXPORTER_PROBE_ALLOW"
ENV_MAX_BYTES = "LLAMATELEMETRY_EXPORTER_MAX_RESPONSE_BYTES"
ENV_LOG_LEVEL = "LLAMATELEMETRY_LOG_LEVEL"

log = logging.getLogger("llamatelemetry.exporter")


def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", os.environ.get(name, "")) if t]


def _env_targets() -> list[str]:
    return _env_list(ENV_TARGETS)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if value < 1024:
        raise argparse.ArgumentTypeError("must be at least 1024")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the exporter's flags to ``parser`` (defaults come from the environment)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--target", "-t", action="append", metavar="[NAME=]URL", dest="targets",
                        help=f"llama-server to scrape; repeat for several. NAME becomes the 'target' label "
                             f"(default host:port). [{ENV_TARGETS}, comma-separated; else ${BASE_URL_ENV} or {DEFAULT_BASE_URL}]")
    parser.add_argument("--listen", default=os.environ.get(ENV_LISTEN, EXPORTER_DEFAULT_HOST), metavar="HOST",
                        help=f"address to serve on; use 0.0.0.0 to expose it beyond this machine (default %(default)s) [{ENV_LISTEN}]")
    # String defaults go through type=, so a bad environment variable gets the same clear message as a bad flag.
    parser.add_argument("--port", "-p", type=tcp_port, default=os.environ.get(ENV_PORT, str(EXPORTER_DEFAULT_PORT)),
                        help=f"port to serve on (default %(default)s) [{ENV_PORT}]")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), metavar="KEY",
                        help=f"llama-server API key, sent as 'Authorization: Bearer'; prefer the variable, "
                             f"flags are visible in 'ps' [{API_KEY_ENV}]")
    parser.add_argument("--timeout", type=_positive_float, default=os.environ.get(ENV_TIMEOUT, "2"), metavar="SECONDS",
                        help=f"per-target deadline for one scrape; keep it below Prometheus' scrape_timeout, since a scrape "
                             f"waits for its slowest target (default %(default)s) [{ENV_TIMEOUT}]")
    parser.add_argument("--no-gpu", action="store_true", default=_env_bool(ENV_NO_GPU),
                        help=f"do not collect GPU metrics through NVML [{ENV_NO_GPU}=1]")
    parser.add_argument("--no-gpu-processes", action="store_true", default=_env_bool(ENV_NO_GPU_PROCESSES),
                        help=f"omit per-process GPU memory series (pid label); per-target GPU memory stays [{ENV_NO_GPU_PROCESSES}=1]")
    parser.add_argument("--gpu-pcie", action="store_true", default=_env_bool(ENV_GPU_PCIE),
                        help=f"also read PCIe throughput (NVML blocks ~20 ms per reading per GPU) [{ENV_GPU_PCIE}=1]")
    parser.add_argument("--max-response-bytes", type=_byte_count, default=os.environ.get(ENV_MAX_BYTES, str(4 * 1024 * 1024)), metavar="N",
                        help=f"largest answer read from one llama-server endpoint (default %(default)s) [{ENV_MAX_BYTES}]")
    parser.add_argument("--log-level", default=os.environ.get(ENV_LOG_LEVEL, "info"), choices=["debug", "info", "warning", "error"],
                        help=f"log verbosity (default %(default)s) [{ENV_LOG_LEVEL}]")
    parser.add_argument("--probe-only", action="store_true",
                        help="no static target: /metrics serves only the GPUs and self-metrics, llama-servers are scraped "
                             "through /probe?target=URL as Prometheus' service discovery decides")
    parser.add_argument("--probe-allow", action="append", metavar="HOST:PORT", dest="probe_allow",
                        help=f"only let /probe scrape targets matching this host:port pattern (shell wildcards, e.g. "
                             f"'10.0.*:8080'); repeat for several. Without it /probe scrapes any http(s) URL and never "
                             f"sends the API key [{ENV_PROBE_ALLOW}, comma-separated]")


def build_config(args: argparse.Namespace) -> Any:
    """An :class:`~llamatelemetry.exporter.server.ExporterConfig` from parsed arguments."""
    from .server import ExporterConfig

    if args.probe_only:
        targets = list(args.targets or [])
    else:
        targets = args.targets or _env_targets() or [os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL]
    return ExporterConfig(
        targets=targets, host=args.listen, port=args.port, api_key=args.api_key or None, timeout=args.timeout,
        gpu=not args.no_gpu, gpu_processes=not args.no_gpu_processes, gpu_pcie=args.gpu_pcie,
        max_response_bytes=args.max_response_bytes, probe_allow=args.probe_allow or _env_list(ENV_PROBE_ALLOW),
    )


def run(args: argparse.Namespace) -> int:
    """Run the exporter until Ctrl-C or SIGTERM; returns the process exit code."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":  # httpx logs every upstream GET at INFO: 4 lines per target per scrape
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        from .server import ExporterApp
        from .targets import TargetSpecError
    except ImportError as exc:  # prometheus_client missing
        log.error("the exporter needs extra packages: pip install 'llamatelemetry[exporter]' (%s)", exc)
        return 2
    config = build_config(args)
    try:
        app = ExporterApp(config)
    except TargetSpecError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:
        log.error("GPU collection needs nvidia-ml-py (pip install nvidia-ml-py) or --no-gpu: %s", exc)
        return 2
    try:
        app.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s (%s); pick another --port or stop what uses it", config.host, config.port, exc)
        app.stop()
        return 2
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the metrics are reachable from other machines", config.host)

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is threading.main_thread() else None
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping")
        app.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("stopped")
    return 0
