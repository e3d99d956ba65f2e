"""Run the gateway in-process with in-memory telemetry, and a TCP tap to see what crosses the wire.

Example::

    with running_gateway(server.base_url) as gw:
        httpx.get(gw.url + "/health")
        gw.wait_for_spans(1)
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from llamatelemetry.proxy import Gateway, GatewayConfig, Route
from telemetry_helpers import Telemetry


class ProxyUnderTest(Telemetry):
    """A running gateway plus the in-memory spans/metrics and the Prometheus registry it feeds."""

    def __init__(self) -> None:  # noqa: D107 - not Telemetry.__init__: a reader joins one meter provider only
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.registry = CollectorRegistry()
        # One meter provider feeds the in-memory reader (assertions) and the admin /metrics.
        self.meter_provider = MeterProvider(metric_readers=[self.reader, PrometheusMetricReader(registry=self.registry)])
        self.gateway: Gateway | None = None

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.urls[0]

    @property
    def admin_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.admin_url

    def wait_for_spans(self, count: int, timeout: float = 10.0) -> list[Any]:
        """Spans end in a background task after the response: wait until ``count`` have ended."""
        deadline = time.monotonic() + timeout
        while len(self.spans()) < count:
            assert time.monotonic() < deadline, f"only {len(self.spans())} of {count} spans ended: {[s.name for s in self.spans()]}"
            time.sleep(0.01)
        return self.spans()

    def wait_for_recent(self, count: int, timeout: float = 10.0) -> list[Any]:
        assert self.gateway is not None
        deadline = time.monotonic() + timeout
        while len(self.gateway.recent.newest()) < count:
            assert time.monotonic() < deadline, "requests were not recorded"
            time.sleep(0.01)
        return self.gateway.recent.newest()


@contextlib.contextmanager
def running_gateway(*upstreams: str, **config: Any) -> Iterator[ProxyUnderTest]:
    proxy = ProxyUnderTest()
    routes = [Route(0, url) for url in upstreams]
    gateway = Gateway(GatewayConfig(routes=routes, admin_port=0, **config), tracer_provider=proxy.tracer_provider,
                      meter_provider=proxy.meter_provider, registry=proxy.registry)
    proxy.gateway = gateway
    with gateway:
        yield proxy


class TcpTap:
    """A byte-for-byte TCP relay in front of a server that keeps a copy of both directions.

    Put it between the gateway and llama-server to compare what llama-server sent with what
    the client received, and to see the headers the gateway sent upstream.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.to_server = bytearray()
        self.to_client = bytearray()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, self.to_server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.to_client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, copy: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    copy.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.to_server.clear()
            self.to_client.clear()

    def response_bodies(self) -> list[bytes]:
        """Bodies of the (Content-Length delimited) responses the server sent through the tap, in order."""
        with self._lock:
            data = bytes(self.to_client)
        bodies, pos = [], 0
        while (start := data.find(b"HTTP/1.1 ", pos)) >= 0:
            head, sep, rest = data[start:].partition(b"\r\n\r\n")
            lengths = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if not sep or not lengths or len(rest) < lengths[0]:
                break
            bodies.append(rest[:lengths[0]])
            pos = start + len(head) + 4 + lengths[0]
        return bodies

    def close(self) -> None:
        self._closed = True
        self.listener.close()

    def __enter__(self) -> "TcpTap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
