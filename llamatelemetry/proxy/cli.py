"""``llamatelemetry proxy``: command-line flags and the run loop of the tracing gateway.

Follows the subcommand protocol of :mod:`llamatelemetry.cli` (``HELP``, ``add_arguments``, ``run``).

Example::

    llamatelemetry proxy --upstream http://127.0.0.1:8080
    llamatelemetry proxy --route 8089=http://127.0.0.1:8080 --route 8090=http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any, Callable

from .._argtypes import tcp_port
from .._defaults import (
    BASE_URL_ENV, DEFAULT_BASE_URL, PROXY_ADMIN_DEFAULT_PORT, PROXY_DEFAULT_HOST, PROXY_DEFAULT_PORT,
)

# limits.py imports nothing from outside the standard library: ``--help`` works without the [proxy] extra.
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT, human_bytes

HELP = "tracing gateway: put it between agent tools and llama-server to trace every request"
DESCRIPTION = f"""\
Tracing gateway for llama.cpp's llama-server.

Point Claude Code (ANTHROPIC_BASE_URL), aider (OPENAI_API_BASE), Continue (apiBase) or any
OpenAI/Anthropic SDK at http://LISTEN:PORT (default {PROXY_DEFAULT_HOST}:{PROXY_DEFAULT_PORT}) instead
of llama-server. Every request is forwarded unchanged; inference calls get an OpenTelemetry
span and GenAI metrics per client. The admin port ({PROXY_ADMIN_DEFAULT_PORT}) serves Prometheus
/metrics, /api/recent (JSON) and /health. With OTEL_EXPORTER_OTLP_ENDPOINT (or --otlp-endpoint)
spans and metrics are also exported over OTLP. Prompts and answers are recorded only with
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
"""
EPILOG = """\
examples:
  llamatelemetry proxy --upstream http://127.0.0.1:8080
  llamatelemetry proxy --route 8089=http://127.0.0.1:8080 --route 8090=http://127.0.0.1:8081
  llamatelemetry proxy --upstream http://127.0.0.1:8080 --min-max-tokens 1500
"""

ENV_LISTEN = "LLAMATELEMETRY_PROXY_LISTEN"
ENV_PORT = "LLAMATELEMETRY_PROXY_PORT"
ENV_ADMIN_PORT = "LLAMATELEMETRY_PROXY_ADMIN_PORT"
ENV_MIN_MAX_TOKENS = "LLAMATELEMETRY_PROXY_MIN_MAX_TOKENS"
ENV_MAX_BODY_SIZE = "LLAMATELEMETRY_PROXY_MAX_BODY_SIZE"
ENV_MAX_CONCURRENT = "LLAMATELEMETRY_PROXY_MAX_CONCURRENT"
#: Suffixes --max-body-size accepts (binary units, as llama-server's own limit is written).
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}

log = logging.getLogger("llamatelemetry.proxy")


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http(s) URL like http://127.0.0.1:8080, got {text!r}")
    return text


def _route(text: str) -> tuple[int, str]:
    port, sep, url = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"must be PORT=URL, e.g. 8090=http://127.0.0.1:8081, got {text!r}")
    try:
        return tcp_port(port), _url(url)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"must be PORT=URL ({exc}), got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def byte_size(text: str) -> int:
    """``--max-body-size`` values: a byte count with an optional binary unit.

    Example::

        >>> byte_size("100MiB"), byte_size("512k"), byte_size("1048576")
        (104857600, 524288, 1048576)
    """
    raw = text.strip().lower().replace(" ", "")
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits):]
    if not digits.isdigit() or unit not in _SIZE_UNITS or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"must be a size like 100MiB, 512KiB or 1048576 (bytes), got {text!r}")
    return int(digits) * _SIZE_UNITS[unit]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--upstream", type=_url, metavar="URL",
                        help=f"the llama-server to forward to, served on --port [${BASE_URL_ENV} or {DEFAULT_BASE_URL}]")
    parser.add_argument("--listen", default=os.environ.get(ENV_LISTEN, PROXY_DEFAULT_HOST), metavar="HOST",
                        help=f"address to listen on, for every port (default {PROXY_DEFAULT_HOST}; 0.0.0.0 exposes it) [{ENV_LISTEN}]")
    parser.add_argument("--port", type=tcp_port, default=tcp_port(os.environ.get(ENV_PORT, str(PROXY_DEFAULT_PORT))),
                        help=f"port forwarding to --upstream (default {PROXY_DEFAULT_PORT}) [{ENV_PORT}]")
    parser.add_argument("--admin-port", type=tcp_port, default=tcp_port(os.environ.get(ENV_ADMIN_PORT, str(PROXY_ADMIN_DEFAULT_PORT))),
                        help=f"port of /metrics, /api/recent, /health (default {PROXY_ADMIN_DEFAULT_PORT}) [{ENV_ADMIN_PORT}]")
    parser.add_argument("--route", type=_route, action="append", default=[], metavar="PORT=URL",
                        help="one more port forwarding to another llama-server (repeatable)")
    env_floor = os.environ.get(ENV_MIN_MAX_TOKENS)
    parser.add_argument("--min-max-tokens", type=_positive, metavar="N", default=_positive(env_floor) if env_floor else None,
                        help=f"raise a max_tokens below N on chat/messages requests to N (off by default; recorded on the span) [{ENV_MIN_MAX_TOKENS}]")
    env_size, env_concurrent = os.environ.get(ENV_MAX_BODY_SIZE), os.environ.get(ENV_MAX_CONCURRENT)
    parser.add_argument("--max-body-size", type=byte_size, metavar="SIZE",
                        default=byte_size(env_size) if env_size else DEFAULT_MAX_BODY_BYTES,
                        help=f"answer 413 to request bodies larger than SIZE, before forwarding (default "
                             f"{human_bytes(DEFAULT_MAX_BODY_BYTES)}, llama-server's own limit) [{ENV_MAX_BODY_SIZE}]")
    parser.add_argument("--max-concurrent", type=_positive, metavar="N",
                        default=_positive(env_concurrent) if env_concurrent else DEFAULT_MAX_CONCURRENT,
                        help=f"requests handled at once across all routes; past it a 503 (default "
                             f"{DEFAULT_MAX_CONCURRENT}) [{ENV_MAX_CONCURRENT}]")
    parser.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), metavar="URL",
                        help="export spans and metrics over OTLP here too [OTEL_EXPORTER_OTLP_ENDPOINT]")
    parser.add_argument("--recent", type=_positive, default=200, metavar="N",
                        help="how many requests /api/recent remembers (default 200)")


def routes_from_args(args: argparse.Namespace) -> list[tuple[int, str]]:
    """The (port, upstream) pairs to serve: --upstream on --port, then each --route."""
    routes: list[tuple[int, str]] = []
    if args.upstream or not args.route:
        routes.append((args.port, args.upstream or _url(os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)))
    routes.extend(args.route)
    ports = [p for p, _ in routes if p != 0]
    if len(ports) != len(set(ports)) or args.admin_port in ports:
        raise SystemExit("llamatelemetry proxy: every route and the admin port need their own port")
    return routes


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # optional: a faster event loop when installed
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        from ..telemetry.configure import configure, local_providers
        from .gateway import Gateway, GatewayConfig, Route
    except ImportError as exc:
        print(f"llamatelemetry proxy: missing a dependency ({exc}); install with: pip install 'llamatelemetry[proxy]'",
              file=sys.stderr)
        return 2
    routes = [Route(port, url) for port, url in routes_from_args(args)]
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    if args.otlp_endpoint:
        providers: Any = configure("llamatelemetry-proxy", endpoint=args.otlp_endpoint, set_global=False,
                                   metric_readers=[reader])
    else:
        providers = local_providers("llamatelemetry-proxy", metric_readers=[reader])
    config = GatewayConfig(routes=routes, listen=args.listen, admin_port=args.admin_port,
                           min_max_tokens=args.min_max_tokens, recent_limit=args.recent,
                           max_body_bytes=args.max_body_size, max_concurrent=args.max_concurrent)
    try:
        gateway = Gateway(config, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider,
                          registry=registry)
    except OSError as exc:
        print(f"llamatelemetry proxy: {exc.strerror or exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.shutdown)
        for url, route in zip(gateway.urls, routes):
            print(f"llamatelemetry proxy: {url} -> {route.upstream}", flush=True)
        print(f"llamatelemetry proxy: admin {gateway.admin_url}/metrics /api/recent /health", flush=True)
        if not _is_loopback(args.listen):
            print(f"llamatelemetry proxy: listening on {args.listen}: other machines can use llama-server through it "
                  "and read /api/recent; put authentication in front of it", flush=True)
        await gateway.serve()

    try:
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(main())
        else:  # pragma: no cover - Python 3.10 has no Runner; the default loop is fine
            asyncio.run(main())
    finally:
        providers.shutdown()
    return 0
