"""The exporter process: wiring (:class:`ExporterApp`) and its HTTP endpoints.

Served by prometheus_client's own WSGI machinery (``make_wsgi_app`` behind the standard
library's threading WSGI server, as ``prometheus_client.start_http_server`` does), so content
negotiation (Prometheus text 0.0.4, or OpenMetrics 1.0 when ``Accept`` asks for
``application/openmetrics-text``), gzip and ``name[]`` filtering are the library's. Each request
runs in its own thread and waits while the fetch loop (:class:`~.fetch.AsyncRunner`) reads the
targets; at a scrape every few seconds that hand-off costs nothing worth a server of our own.

Endpoints:

* ``/metrics`` — the configured targets and the GPUs;
* ``/probe?target=http://host:port`` — that one llama-server (Prometheus' multi-target exporter
  pattern, as blackbox_exporter); see :func:`probe_target_allowed` for what may be probed;
* ``/health`` — the exporter itself (200 ``ok``); ``/`` — a small HTML index.

Example (in-process, e.g. from a test)::

    from llamatelemetry.exporter.server import ExporterApp, ExporterConfig
    app = ExporterApp(ExporterConfig(targets=["http://127.0.0.1:8080"], port=0, gpu=False))
    app.start()                      # serves on a background thread
    print(app.url)                   # http://127.0.0.1:<port>
    app.stop()
"""

from __future__ import annotations

import fnmatch
import html
import logging
import secrets
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from .._defaults import EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT
from .collector import ExporterCollector
from .fetch import DEFAULT_MAX_BYTES, LOOP_HEADER, AsyncRunner, Fetcher
from .gpu import GpuCollector
from .llama import TargetView
from .targets import Target, TargetSpecError, parse_target, parse_targets

log = logging.getLogger("llamatelemetry.exporter")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: /probe remembers this many targets (cached /props, logged problems, error counters).
PROBE_MEMORY = 1024


@dataclass
class ExporterConfig:
    """Everything the exporter needs; the CLI fills it from flags and environment variables.

    ``probe_allow``: ``host:port`` patterns (shell wildcards) that ``/probe`` may scrape; empty
    means any http/https target. The API key is sent to probed targets only when a pattern
    allows them (never to a target somebody typed into a URL).
    """

    targets: list[str] = field(default_factory=list)
    host: str = EXPORTER_DEFAULT_HOST
    port: int = EXPORTER_DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)  # repr=False: never printed in logs
    timeout: float = 2.0
    gpu: bool = True
    gpu_processes: bool = True
    gpu_pcie: bool = False
    max_response_bytes: int = DEFAULT_MAX_BYTES
    probe_allow: list[str] = field(default_factory=list)


def probe_target_allowed(target: Target, patterns: list[str]) -> bool:
    """Whether ``/probe`` may scrape ``target``: any target when ``patterns`` is empty, else a ``host:port`` match.

    >>> t = parse_target("http://10.0.0.5:8080")
    >>> probe_target_allowed(t, []), probe_target_allowed(t, ["10.0.0.*:8080"]), probe_target_allowed(t, ["gpu-*:*"])
    (True, True, False)
    """
    if not patterns:
        return True
    host_port = target.base_url.split("://", 1)[1].split("/", 1)[0].replace("[", "").replace("]", "")
    return any(fnmatch.fnmatchcase(host_port, p) for p in patterns)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape (prometheus_client's server is quiet the same way)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


def _text(start_response: StartResponse, status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(data)))])
    return [data]


class ExporterApp:
    """The running exporter: fetch loop, collectors, registry and HTTP server.

    ``nvml`` replaces the ``pynvml`` module (tests pass a stand-in from ``tests/fake_nvml.py``).
    """

    def __init__(self, config: ExporterConfig, *, nvml: Any = None) -> None:
        self.config = config
        self.targets: list[Target] = parse_targets(config.targets) if config.targets else []
        self.instance_id = secrets.token_hex(8)
        self.runner = AsyncRunner()
        self.fetcher = Fetcher(timeout=config.timeout, max_bytes=config.max_response_bytes, api_key=config.api_key,
                               instance_id=self.instance_id)
        # Probed targets get the API key only when an allow-list says they are ours.
        self.probe_fetcher = self.fetcher if config.probe_allow else Fetcher(
            timeout=config.timeout, max_bytes=config.max_response_bytes, instance_id=self.instance_id)
        self.gpu = GpuCollector(nvml, targets=self.targets, processes=config.gpu_processes, pcie=config.gpu_pcie) if config.gpu else None
        self.collector = ExporterCollector(self.targets, self.fetcher, self.runner, self.gpu)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._metrics_app: WsgiApp = make_wsgi_app(self.registry)
        self._probe_views: OrderedDict[str, tuple[Target, TargetView]] = OrderedDict()
        self._probe_lock = threading.Lock()
        self._httpd: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- HTTP -------------------------------------------------------------------------------------
    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: dispatches on the path."""
        if environ.get("HTTP_" + LOOP_HEADER.upper().replace("-", "_")) == self.instance_id:
            return _text(start_response, "508 Loop Detected",
                         "this exporter is scraping itself: a --target points at the exporter, not at a llama-server\n")
        if environ.get("REQUEST_METHOD", "GET") != "GET":  # as prometheus_client's own app answers
            start_response("405 Method Not Allowed", [("Allow", "GET"), ("Content-Type", "text/plain; charset=utf-8")])
            return [b"only GET\n"]
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/probe":
            return self._probe(environ, start_response)
        if path == "/health":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/":
            return _text(start_response, "200 OK", self.index_html(), "text/html; charset=utf-8")
        return _text(start_response, "404 Not Found", "not found; try /metrics, /probe?target=URL or /health\n")

    def _probe(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        specs = query.get("target", [])
        if len(specs) != 1:
            return _text(start_response, "400 Bad Request", "give exactly one target: /probe?target=http://HOST:PORT\n")
        try:
            target, view = self._probe_target(specs[0])
        except TargetSpecError as exc:
            # The parser speaks in command-line terms; here the target came as a query parameter.
            return _text(start_response, "400 Bad Request", str(exc).replace("--target ", "/probe?target=") + "\n")
        if not probe_target_allowed(target, self.config.probe_allow):
            return _text(start_response, "403 Forbidden",
                         f"{target.name} is not allowed by --probe-allow {' '.join(self.config.probe_allow)}\n")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ExporterCollector([target], self.probe_fetcher, self.runner, None, views={target.name: view},
                                            model_ports=self.gpu))
        body: Iterable[bytes] = make_wsgi_app(registry)(environ, start_response)
        return body

    def _probe_target(self, spec: str) -> tuple[Target, TargetView]:
        """The parsed target and its memory across scrapes (cached /props, logged problems, counters).

        Parsed once per spec (parsing may resolve the host to tell whether it is local); the least
        recently probed of more than :data:`PROBE_MEMORY` specs are forgotten.
        """
        with self._probe_lock:
            known = self._probe_views.pop(spec, None)
            if known is None:
                target = parse_target(spec)
                known = (target, TargetView(target))
                if self.gpu is not None:  # a llama-server on this node: its GPU share shows on /metrics
                    self.gpu.add_target(target)
            self._probe_views[spec] = known
            while len(self._probe_views) > PROBE_MEMORY:
                self._probe_views.popitem(last=False)[1][1].close()  # stops a router's event stream
            return known

    def index_html(self) -> str:
        """The index page: endpoints, targets and whether GPU collection really works."""
        rows = "".join(f"<li><code>{html.escape(t.name)}</code> → {html.escape(t.base_url)}</li>" for t in self.targets)
        if self.gpu is None:
            gpu = "off (--no-gpu)"
        elif self.gpu.last_error is None:
            gpu = "on"
        else:
            gpu = f"down: {html.escape(self.gpu.last_error)}"
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>llamatelemetry exporter</title></head><body>"
            "<h1>llamatelemetry exporter</h1>"
            "<p><a href='/metrics'>/metrics</a> (Prometheus) · <code>/probe?target=http://HOST:PORT</code> (one llama-server)"
            " · <a href='/health'>/health</a></p>"
            f"<h2>Targets</h2><ul>{rows or '<li>none (use /probe)</li>'}</ul><p>GPU collection: {gpu}</p></body></html>"
        )

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL the exporter serves on, e.g. ``http://127.0.0.1:9183``."""
        assert self._httpd is not None, "not started"
        address = self._httpd.server_address
        host, port = str(address[0]), int(address[1])
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    def start(self) -> "ExporterApp":
        """Bind the listen address and serve from a background thread."""
        host = self.config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingWSGIServer):
            address_family = family

        self._httpd = make_server(host, self.config.port, self.wsgi, Server, handler_class=_QuietHandler)
        self.runner.start()
        if self.gpu is not None:  # first NVML read now, so the log and the index page tell at once whether it works
            self.gpu.collect()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llamatelemetry-exporter-http", daemon=True)
        self._thread.start()
        log.info("serving metrics on %s/metrics for %d target(s)%s", self.url, len(self.targets),
                 (": " + ", ".join(f"{t.name}={t.base_url}" for t in self.targets)) if self.targets else "")
        return self

    def stop(self) -> None:
        """Stop serving and shut NVML down. Safe to call twice or without start()."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        if self.runner.running:
            for fetcher in {id(f): f for f in (self.fetcher, self.probe_fetcher)}.values():
                try:
                    self.runner.run(fetcher.aclose(), timeout=5)
                except Exception:  # noqa: BLE001 - best effort during shutdown
                    log.debug("error while closing the HTTP client", exc_info=True)
        self.runner.stop()
        self.collector.close_views()
        with self._probe_lock:
            for _, view in self._probe_views.values():
                view.close()
        self.collector.close()

    def __enter__(self) -> "ExporterApp":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
