"""In-memory OpenTelemetry providers and small loopback servers for the telemetry tests."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from loopback import LoopbackHTTPServer
from llamatelemetry.telemetry.finisher import flush_threads
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class Telemetry:
    """A tracer provider and a meter provider that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    @property
    def providers(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[Any]:
        """The finished spans, once the sync clients' background telemetry (e.g. a first call's n_ctx lookup) ended."""
        flush_threads(10.0)
        return self.ended_spans()

    def ended_spans(self) -> list[Any]:
        """The spans finished so far (background telemetry may still be pending)."""
        return list(self.exporter.get_finished_spans())

    def only_span(self) -> Any:
        spans = self.spans()
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def points(self, name: str) -> list[Any]:
        flush_threads(10.0)
        data = self.reader.get_metrics_data()
        out = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        out.extend(metric.data.data_points)
        return out

    def histogram_sum(self, name: str, **attrs: Any) -> float:
        return sum(p.sum for p in self.points(name) if all(p.attributes.get(k) == v for k, v in attrs.items()))

    def histogram_count(self, name: str, **attrs: Any) -> int:
        return sum(p.count for p in self.points(name) if all(p.attributes.get(k) == v for k, v in attrs.items()))


class RecordingServer:
    """A loopback HTTP server that records request headers/bodies and answers with fixed JSON."""

    def __init__(self, reply: dict[str, Any] | None = None, status: int = 200) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.requests.append((self.path, dict(self.headers), body))
                payload = json.dumps(reply or {}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = LoopbackHTTPServer(Handler)
        self.url = self.server.url

    def __enter__(self) -> "RecordingServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
