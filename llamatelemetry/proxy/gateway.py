"""Run the gateway: one uvicorn server per route plus the admin server, in one event loop.

Example (in a background thread, as the demo and the tests use it)::

    config = GatewayConfig(routes=[Route(8089, "http://127.0.0.1:8080")])
    with Gateway(config) as gateway:
        print(gateway.urls[0], gateway.admin_url)     # http://127.0.0.1:8089 http://127.0.0.1:9184
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import uvicorn
from opentelemetry import metrics, trace
from prometheus_client import CollectorRegistry

from .._defaults import PROXY_ADMIN_DEFAULT_PORT, PROXY_DEFAULT_HOST
from .admin import admin_app
from .forward import ProxyApp, upstream_client, upstream_transport
from .headlimit import http_protocol
from .limits import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT, MAX_HEADER_BYTES, ConcurrencyGate
from .observe import Observer
from .recent import DEFAULT_RECENT_LIMIT, RecentRequests
from .upstreams import UpstreamHealth


@dataclass(frozen=True, slots=True)
class Route:
    """One listening port forwarding to one llama-server."""

    port: int
    upstream: str


@dataclass(slots=True)
class GatewayConfig:
    routes: list[Route]
    listen: str = PROXY_DEFAULT_HOST
    admin_port: int = PROXY_ADMIN_DEFAULT_PORT
    min_max_tokens: int | None = None
    recent_limit: int = DEFAULT_RECENT_LIMIT
    capture_content: bool | None = None
    #: Request bodies larger than this are answered 413 (default: llama-server's own limit).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Requests handled at once across all routes; past it a 503.
    max_concurrent: int = DEFAULT_MAX_CONCURRENT


class _Server(uvicorn.Server):
    # The gateway handles signals once for all its servers (see cli.run); uvicorn's own
    # per-server handlers would stop only the last server started.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say they are
    # TCP; with it on, each small SSE write waits for the client's delayed ACK (40 ms on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); pick another port "
                                 f"(--port / --admin-port / --route PORT=URL) or stop what uses it") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


#: How long an idle client connection stays open. Longer than clients keep idle connections
#: (httpx and the SDKs on it: 5 s), so a client never reuses one the gateway is closing at that very
#: moment ("Server disconnected without sending a response" — llama-server's own quirk at 5 s vs 5 s).
CLIENT_KEEP_ALIVE_SECONDS = 75


def _uvicorn_config(app: Any) -> uvicorn.Config:
    # No Server/Date headers of our own: llama-server's are forwarded. No lifespan: nothing to set up.
    return uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                          server_header=False, date_header=False, timeout_keep_alive=CLIENT_KEEP_ALIVE_SECONDS,
                          http=http_protocol(), h11_max_incomplete_event_size=MAX_HEADER_BYTES)


class Gateway:
    """The proxy ports and the admin port (see module docs). Sockets are bound in ``__init__``."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not config.routes:
            raise ValueError("the gateway needs at least one route (--upstream URL or --route PORT=URL)")
        self.config = config
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.registry = registry if registry is not None else CollectorRegistry()
        self.recent = RecentRequests(config.recent_limit)
        self.upstreams = UpstreamHealth(r.upstream for r in config.routes)  # admin /health, its gauge, the log
        with contextlib.suppress(ValueError):  # a registry shared with another gateway has the gauge already
            self.registry.register(self.upstreams)
        #: Requests in flight across every route (``gate.in_flight``), bounded by ``config.max_concurrent``.
        self.gate = ConcurrencyGate(config.max_concurrent)
        self._sockets = [_bind(config.listen, r.port) for r in config.routes]
        self._admin_socket = _bind(config.listen, config.admin_port)
        self.observer: Observer | None = None
        self._servers: list[_Server] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _url(self, sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def urls(self) -> list[str]:
        """Where clients point, one per route (in route order)."""
        return [self._url(s) for s in self._sockets]

    @property
    def admin_url(self) -> str:
        return self._url(self._admin_socket)

    async def serve(self) -> None:
        """Serve until :meth:`shutdown` (or ``should_exit`` on the servers) — call inside an event loop."""
        transport = upstream_transport()
        http = upstream_client(transport)
        self.observer = Observer(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, http=http,
                                 recent=self.recent, capture_content=self.config.capture_content, upstreams=self.upstreams)
        gate = self.gate
        apps = [ProxyApp(route.upstream, transport, self.observer, min_max_tokens=self.config.min_max_tokens,
                         max_body_bytes=self.config.max_body_bytes, gate=gate)
                for route in self.config.routes]
        self._servers = [_Server(_uvicorn_config(app)) for app in apps]
        admin = _Server(_uvicorn_config(admin_app(self.registry, self.recent, self.upstreams)))
        self._servers.append(admin)
        sockets = [*self._sockets, self._admin_socket]
        try:
            tasks = [asyncio.ensure_future(server.serve(sockets=[sock])) for server, sock in zip(self._servers, sockets)]
            while not all(s.started for s in self._servers):
                if any(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.01)
            self._ready.set()
            watcher = asyncio.ensure_future(self.upstreams.watch(http))  # warns at once if an upstream is down
            try:
                await asyncio.gather(*tasks)
            finally:
                watcher.cancel()
        finally:
            await self.observer.drain()
            await self.observer.aclose()
            await http.aclose()
            self._ready.set()

    def shutdown(self) -> None:
        """Ask every server to stop (thread-safe; returns at once)."""
        for server in self._servers:
            server.should_exit = True

    # -- background-thread mode (demo, tests) --

    def start(self) -> "Gateway":
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.serve())
            except BaseException as exc:  # noqa: BLE001 - reported by start()
                self._error = exc
            finally:
                self._loop.close()
                self._ready.set()

        self._thread = threading.Thread(target=run, name="llamatelemetry-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self.shutdown()
        if self._thread is not None:
            self._thread.join(30)
        for sock in [*self._sockets, self._admin_socket]:
            sock.close()

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until background telemetry of finished requests is recorded (tests, demo)."""
        if self._loop is not None and self.observer is not None:
            asyncio.run_coroutine_threadsafe(self.observer.drain(timeout), self._loop).result(timeout + 1)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
