"""The exporter process: wiring (:class:`ExporterApp`) and the HTTP endpoints.

Endpoints: ``/metrics`` (Prometheus text 0.0.4, or OpenMetrics 1.0 when the ``Accept`` header
asks for ``application/openmetrics-text``), ``/health`` (the exporter itself; 200 ``ok``) and
``/`` (a small HTML index listing the targets).

Example (in-process, e.g. from a test)::

    from llamatelemetry.exporter.server import ExporterApp, ExporterConfig
    from llamatelemetry.exporter.fake_nvml import FakeNVML
    app = ExporterApp(ExporterConfig(targets=["http://127.0.0.1:8080"], port=0), nvml=FakeNVML())
    app.start()                      # serves on a background thread
    print(app.url)                   # http://127.0.0.1:<port>
    app.stop()
"""

from __future__ import annotations

import asyncio
import gzip
import html
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Iterable, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from .._defaults import EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT
from .collector import ExporterCollector
from .encode import CONTENT_TYPE as TEXT_CONTENT_TYPE
from .encode import TextEncoder
from .fetch import DEFAULT_MAX_BYTES, AsyncRunner, Fetcher
from .gpu import GpuCollector
from .targets import Target, parse_targets

log = logging.getLogger("llamatelemetry.exporter")
T = TypeVar("T")


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


class _Families:
    """A registry look-alike holding one scrape's families (all ``generate_latest`` needs)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


_MAX_REQUEST_HEAD = 16 * 1024
_IDLE_SECONDS = 120.0  # close keep-alive connections idle for longer (Prometheus scrapes far more often)


_HEAD_SECONDS = 10.0  # for the header lines, once the request line came
_timeout = getattr(asyncio, "timeout", None)


async def _bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable`` for at most ``seconds`` (raises ``asyncio.TimeoutError``).

    Why not ``asyncio.wait_for``: before Python 3.12 it runs the awaitable in a new task, which
    per request line and header line was a measurable part of a scrape.
    """
    if _timeout is None:  # pragma: no cover - Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with _timeout(seconds):
        return await awaitable


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


class _HttpServer:
    """A small asyncio HTTP/1.1 server (GET/HEAD, keep-alive) running on the fetch loop.

    Why not ``http.server``: a scrape there crosses from the request thread to the fetch loop
    and back, which measured ~1 ms per scrape on 2 cores; here the scrape is awaited in place.
    """

    def __init__(self, app: "ExporterApp") -> None:
        self.app = app
        self.server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._encoder = TextEncoder()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, limit=_MAX_REQUEST_HEAD, reuse_address=True)
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            # Idle keep-alive connections would keep their tasks alive past the loop: end them.
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request_line = await _bounded(reader.readline(), _IDLE_SECONDS)
                if not request_line:
                    return
                headers = await _bounded(_read_headers(reader), _HEAD_SECONDS)
                parts = request_line.decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    await self._write(writer, "HEAD", 400, b"bad request\n", "text/plain; charset=utf-8", close=True)
                    return
                method, target, version = parts
                length = headers.get("content-length", "0")
                if length.isdigit() and int(length):
                    await reader.readexactly(min(int(length), _MAX_REQUEST_HEAD))
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                await self._respond(writer, method, target, headers, close)
                if close:
                    return
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            return  # idle, hung up or sent something unparseable: just drop the connection
        except asyncio.CancelledError:
            # Cancelled by close(); ending normally keeps Python 3.11's stream callback from
            # logging the cancellation as an error. This is the connection's top-level task.
            return
        finally:
            self._connections.discard(task)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, method: str, target: str, headers: dict[str, str], close: bool) -> None:
        if method not in ("GET", "HEAD"):
            await self._write(writer, method, 405, b"only GET\n", "text/plain; charset=utf-8", close, {"Allow": "GET, HEAD"})
            return
        path = target.split("?", 1)[0]
        if path == "/metrics":
            families = await self.app.collector.collect_async()
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            if content_type.startswith("application/openmetrics-text"):
                body = encoder(_Families(families))  # type: ignore[arg-type]
            else:
                body, content_type = self._encoder.encode(families), TEXT_CONTENT_TYPE
            extra: dict[str, str] = {}
            if "gzip" in headers.get("accept-encoding", "") and len(body) > 4096:
                body = gzip.compress(body, compresslevel=1)
                extra["Content-Encoding"] = "gzip"
            await self._write(writer, method, 200, body, content_type, close, extra)
        elif path == "/health":
            await self._write(writer, method, 200, b"ok\n", "text/plain; charset=utf-8", close)
        elif path == "/":
            await self._write(writer, method, 200, self.app.index_html().encode(), "text/html; charset=utf-8", close)
        else:
            await self._write(writer, method, 404, b"not found; try /metrics\n", "text/plain; charset=utf-8", close)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, method: str, status: int, body: bytes, content_type: str,
                     close: bool, extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}", "Server: llamatelemetry-exporter"]
        if close:
            head.append("Connection: close")
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else body))
        await writer.drain()


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
        self._http: _HttpServer | None = None
        self._address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        """Base URL the exporter serves on, e.g. ``http://127.0.0.1:9183``."""
        assert self._address is not None, "not started"
        host, port = self._address
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
        """Bind the listen address and serve on the fetch loop's background thread."""
        self.runner.start()
        self._http = _HttpServer(self)
        try:
            self._address = self.runner.run(self._http.start(self.config.host, self.config.port), timeout=10)
        except BaseException:
            self.runner.stop()
            raise
        log.info("serving metrics on %s/metrics for %d target(s): %s", self.url, len(self.targets),
                 ", ".join(f"{t.name}={t.base_url}" for t in self.targets))
        return self

    def stop(self) -> None:
        """Stop serving and shut NVML down. Safe to call twice or without start()."""
        if self.runner.running:
            try:
                if self._http is not None:
                    self.runner.run(self._http.close(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort during shutdown
                log.debug("error while closing the HTTP server", exc_info=True)
        self._http = None
        self.runner.stop()
        self.collector.close()

    def __enter__(self) -> "ExporterApp":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
