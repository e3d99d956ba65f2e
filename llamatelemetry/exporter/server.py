"""The exporter process: wiring (:class:`ExporterApp`) and the HTTP endpoints.

Endpoints: ``/metrics`` (Prometheus text 0.0.4, or OpenMetrics 1.0 when the ``Accept`` header
asks for ``application/openmetrics-text``), ``/health`` (the exporter itself; 200 ``ok``) and
``/`` (a small HTML index listing the targets).

Example (in-process, e.g. from a test)::

    from llamatelemetry.exporter.server import ExporterApp, ExporterConfig
    from llamatelemetry.exporter.fake_nvml import FakeNVML
    app = ExporterApp(ExporterConfig(targets=["http://127.0.0.1:8080"], port=0), nvml=FakeNVML())
    app.start()                      # serves in a background thread
    print(app.url)                   # http://127.0.0.1:<port>
    app.stop()
"""

from __future__ import annotations

import gzip
import html
import logging
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .._defaults import EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT
from .collector import ExporterCollector
from .fetch import DEFAULT_MAX_BYTES, AsyncRunner, Fetcher
from .gpu import GpuCollector
from .targets import Target, parse_targets

log = logging.getLogger("llamatelemetry.exporter")


@dataclass
class ExporterConfig:
    """Everything the exporter needs; the CLI fills it from flags and environment variables."""

    targets: list[str] = field(default_factory=list)
    host: str = EXPORTER_DEFAULT_HOST
    port: int = EXPORTER_DEFAULT_PORT
    api_key: str | None = field(default=None, repr=False)  # repr=False: never printed in logs
    timeout: float = 2.0
    gpu: bool = True
    gpu_processes: bool = True
    gpu_pcie: bool = False
    max_response_bytes: int = DEFAULT_MAX_BYTES


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: "ExporterApp"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hangs up mid-answer is not worth a traceback on stderr.
        log.debug("error while answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so Prometheus reuses its connection
    # Headers and body go out as separate writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "llamatelemetry-exporter"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            body = encoder(app.registry)
            extra: dict[str, str] = {}
            if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 4096:
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            self._send(200, body, content_type, extra)
        elif path == "/health":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(200, app.index_html().encode(), "text/html; charset=utf-8")
        else:
            self._send(404, b"not found; try /metrics\n", "text/plain; charset=utf-8")


class ExporterApp:
    """The running exporter: fetch loop, collectors, registry and HTTP server.

    ``nvml`` overrides the NVML module (e.g. :class:`~llamatelemetry.exporter.fake_nvml.FakeNVML`);
    """

    def __init__(self, config: ExporterConfig, *, nvml: Any = None) -> None:
        self.config = config
        self.targets: list[Target] = parse_targets(config.targets)
        self.runner = AsyncRunner()
        self.fetcher = Fetcher(timeout=config.timeout, max_bytes=config.max_response_bytes, api_key=config.api_key)
        gpu = None
        if config.gpu:
            gpu = GpuCollector(nvml, targets=self.targets, processes=config.gpu_processes, pcie=config.gpu_pcie)
        self.collector = ExporterCollector(self.targets, self.fetcher, self.runner, gpu)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}" if ":" not in str(host) else f"http://[{host}]:{port}"

    def index_html(self) -> str:
        rows = "".join(f"<li><code>{html.escape(t.name)}</code> → {html.escape(t.base_url)}</li>" for t in self.targets)
        gpu = "on" if self.config.gpu else "off"
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>llamatelemetry exporter</title></head><body>"
            "<h1>llamatelemetry exporter</h1>"
            "<p><a href='/metrics'>/metrics</a> (Prometheus) · <a href='/health'>/health</a></p>"
            f"<h2>Targets</h2><ul>{rows}</ul><p>GPU collection: {gpu}</p></body></html>"
        )

    def start(self) -> "ExporterApp":
        """Bind the listen address and serve in a background thread."""
        self.runner.start()
        self._httpd = _Server((self.config.host, self.config.port), _Handler)
        self._httpd.app = self
        # A short poll interval makes stop() (and Ctrl-C) return promptly.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="llamatelemetry-http", daemon=True)
        self._thread.start()
        log.info("serving metrics on %s/metrics for %d target(s): %s", self.url, len(self.targets),
                 ", ".join(f"{t.name}={t.base_url}" for t in self.targets))
        return self

    def stop(self) -> None:
        """Stop serving, close connections to llama-server and shut NVML down."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self.runner.running:
            try:
                self.runner.run(self.fetcher.aclose(), timeout=5)
            except Exception:  # noqa: BLE001 - best effort during shutdown
                pass
        self.runner.stop()
        self.collector.close()

    def __enter__(self) -> "ExporterApp":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
