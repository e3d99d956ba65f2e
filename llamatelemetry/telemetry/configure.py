"""Set up the OpenTelemetry SDK with OTLP export in one call (needs ``llamatelemetry[otlp]``).

The client itself only uses the OpenTelemetry *API*: it follows whatever providers the
application configured. This helper is for applications that have none yet.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

Protocol = Literal["http/protobuf", "grpc"]

#: Bounded export: at most this long per export attempt.
EXPORT_TIMEOUT_SECONDS = 3.0
#: At shutdown (process exit), queued spans and metrics are flushed for at most this long, then
#: dropped: with a collector that never answers, draining a full queue would otherwise take one
#: export timeout per batch (4 batches x 3 s), and the metrics' final export another 3 s.
SHUTDOWN_FLUSH_SECONDS = 2.0
#: At shutdown, how long to wait for a TCP connection to the collector before flushing to it. A
#: collector that refuses (nothing listens) gets no flush: the SDK would retry with backoff for the
#: whole flush bound to deliver nothing.
SHUTDOWN_PROBE_SECONDS = 0.3

log = logging.getLogger("llamatelemetry.telemetry")

#: The SDK loggers that report failed exports (one line per failed attempt and per retry).
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export", "opentelemetry.sdk.metrics._internal.export",
)


class _OneExportWarning(logging.Filter):
    """Turns the SDK's export-failure warnings (four lines for one span and one metric sent to a collector
    that is not running, more on every retry) into one warning of ours, once per process; every failure
    still goes to debug level on ``llamatelemetry.telemetry``. Installed by :func:`configure` only."""

    def __init__(self) -> None:
        super().__init__()
        self.endpoints: list[str] = []
        self.warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        log.debug("telemetry export failed (%s): %s", record.name, message, exc_info=record.exc_info)
        self.warn_once("connection refused" if "refused" in message.lower() or "UNAVAILABLE" in message else message[:200])
        return False

    def warn_once(self, reason: str) -> None:
        if not self.warned:
            self.warned = True
            log.warning("cannot export telemetry over OTLP to %s (%s): spans and metrics are dropped while it is "
                        "unreachable; further failures are logged at debug level (logger %s)",
                        " ".join(self.endpoints) or "the collector", reason, log.name)


_export_warning = _OneExportWarning()


def _quiet_export_failures(endpoint: str) -> None:
    if endpoint not in _export_warning.endpoints:
        _export_warning.endpoints.append(endpoint)
    for name in _EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if _export_warning not in logger.filters:
            logger.addFilter(_export_warning)


def _refuses(endpoint: str | None) -> bool:
    """True when nothing listens at the collector's address (connection refused or no such host)."""
    if not endpoint:
        return False
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=SHUTDOWN_PROBE_SECONDS):
            return False
    except (ConnectionRefusedError, socket.gaierror, ValueError):
        return True
    except OSError:  # a timeout: a black-holed collector, bounded by the flush deadline as before
        return False


def _bounded_span_processor(exporter: Any) -> Any:
    """A BatchSpanProcessor (bounded queue, short export timeout) whose shutdown is bounded too."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DeadlineExporter(SpanExporter):
        """Passes spans on until the shutdown deadline, then drops them without waiting."""

        def __init__(self) -> None:
            self.deadline: float | None = None

        def export(self, spans: Any) -> SpanExportResult:
            if self.deadline is not None and time.monotonic() > self.deadline:
                return SpanExportResult.FAILURE
            result: SpanExportResult = exporter.export(spans)
            return result

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(exporter.force_flush(timeout_millis))

    class BoundedBatchSpanProcessor(BatchSpanProcessor):
        def __init__(self) -> None:
            self.deadline_exporter = DeadlineExporter()
            super().__init__(self.deadline_exporter, max_queue_size=2048,
                             export_timeout_millis=int(EXPORT_TIMEOUT_SECONDS * 1000))

        def shutdown(self) -> None:
            self.deadline_exporter.deadline = time.monotonic() + SHUTDOWN_FLUSH_SECONDS
            super().shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    return BoundedBatchSpanProcessor()


@dataclass
class TelemetryProviders:
    """The providers :func:`configure` created; call :meth:`shutdown` to flush (it also runs at exit).

    ``prometheus_url`` is where the client's metrics can be scraped when ``prometheus_port`` was given.
    """

    tracer_provider: Any
    meter_provider: Any
    prometheus_url: str | None = None
    _prometheus_server: Any = None
    _shut_down: bool = False
    _otlp_endpoint: str | None = None

    def shutdown(self, timeout_seconds: float = SHUTDOWN_FLUSH_SECONDS) -> None:
        """Flush and stop both providers, waiting at most ``timeout_seconds`` in total (whatever the collector does).

        Spans and metrics are flushed side by side; what is not exported by the deadline is dropped.
        """
        if self._shut_down:
            return
        self._shut_down = True
        if self._prometheus_server is not None:
            self._prometheus_server.shutdown()
            self._prometheus_server.server_close()
        if _refuses(self._otlp_endpoint):
            # Nothing listens: do not spend the flush bound on retries that cannot succeed (say so, once).
            _export_warning.warn_once("connection refused")
            timeout_seconds = 0.0
        deadline = time.monotonic() + timeout_seconds
        workers = [threading.Thread(target=_quietly, args=(provider.shutdown,), daemon=True, name="llamatelemetry-shutdown")
                   for provider in (self.tracer_provider, self.meter_provider)]
        for worker in workers:
            worker.start()
        for worker in workers:
            # An export stuck on a black-holed collector is abandoned (a daemon thread) at the deadline.
            worker.join(max(0.0, deadline - time.monotonic()))

    def force_flush(self, timeout_millis: int = 5000) -> None:
        self.tracer_provider.force_flush(timeout_millis)
        self.meter_provider.force_flush(timeout_millis)


def _quietly(action: Any) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001 - shutting down: nothing useful to raise
        pass


def _prometheus_reader(host: str, port: int) -> tuple[Any, Any, str]:
    """A metric reader whose metrics are served for scraping on ``host:port`` (its own registry)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"prometheus_port must be 0..65535, got {port}")
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as exc:
        raise ImportError(
            "prometheus_port= needs opentelemetry-exporter-prometheus: pip install 'llamatelemetry[prometheus]'"
        ) from exc
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise OSError(
            f"cannot serve Prometheus metrics on {host}:{port} ({exc}); pick another prometheus_port= "
            "or set $OTEL_EXPORTER_PROMETHEUS_PORT"
        ) from exc
    bound_port = server.server_address[1]
    return reader, server, f"http://{host}:{bound_port}/metrics"


def _resource(service_name: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name or "llamatelemetry-app"
    return Resource.create(attributes)


def local_providers(service_name: str | None = None, *, metric_readers: Sequence[Any] = ()) -> TelemetryProviders:
    """SDK providers that export nothing (for callers that add their own span processors).

    ``metric_readers``: readers of the caller's own (e.g. a Prometheus reader serving ``/metrics``).
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    resource = _resource(service_name)
    return TelemetryProviders(TracerProvider(resource=resource), MeterProvider(resource=resource, metric_readers=list(metric_readers)))


def configure(
    service_name: str | None = None,
    *,
    endpoint: str | None = None,
    protocol: Protocol | None = None,
    console: bool = False,
    export_interval_seconds: float | None = None,
    set_global: bool = True,
    otlp: bool = True,
    prometheus: bool = False,
    prometheus_port: int | None = None,
    prometheus_host: str | None = None,
    metric_readers: Sequence[Any] = (),
) -> TelemetryProviders:
    """Create tracer and meter providers exporting over OTLP, honouring the ``OTEL_*`` variables.

    Args:
        service_name: ``service.name`` (``$OTEL_SERVICE_NAME`` wins if set; default ``llamatelemetry-app``).
        endpoint: OTLP base URL, e.g. ``http://127.0.0.1:4318`` (http) or ``http://127.0.0.1:4317``
            (grpc). Default: ``$OTEL_EXPORTER_OTLP_ENDPOINT`` or the exporter's own default.
        protocol: ``"http/protobuf"`` (default) or ``"grpc"`` (``$OTEL_EXPORTER_OTLP_PROTOCOL``).
        console: print spans and metrics to stdout instead of exporting (local debugging).
        export_interval_seconds: metric export interval (``$OTEL_METRIC_EXPORT_INTERVAL``, default 60 s).
        set_global: install the providers as the global ones (what most applications want).
        otlp: export over OTLP (default). ``otlp=False`` with ``prometheus_port`` serves metrics only.
        prometheus: also serve the metrics for Prometheus to scrape (needs ``llamatelemetry[prometheus]``)
            at ``http://{prometheus_host}:{prometheus_port}/metrics``, see ``providers.prometheus_url``.
        prometheus_port: that endpoint's port (implies ``prometheus=True``; 0 picks a free one); default
            ``$OTEL_EXPORTER_PROMETHEUS_PORT`` or 9464, the OpenTelemetry Prometheus exporter's port.
        prometheus_host: address to bind it to; default ``$OTEL_EXPORTER_PROMETHEUS_HOST`` or 127.0.0.1.
        metric_readers: more metric readers of the caller's own, e.g. a Prometheus reader on a
            registry it serves itself (the gateway's admin ``/metrics``).

    Export never blocks the application: spans go through a bounded batch queue (dropped,
    never buffered without bound, when the collector is down) with a short export timeout.

    Example::

        import llamatelemetry
        providers = llamatelemetry.configure(service_name="my-agent", endpoint="http://127.0.0.1:4318")
    """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    resource = _resource(service_name)
    chosen = protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    interval_ms = export_interval_seconds * 1000 if export_interval_seconds else None

    span_exporter: Any = None
    metric_exporter: Any = None
    if console:
        # Bind to the current sys.stdout (the SDK's default is whatever stdout was at import time).
        span_exporter = ConsoleSpanExporter(out=sys.stdout)
        metric_exporter = ConsoleMetricExporter(out=sys.stdout)
    elif not otlp:
        pass
    elif chosen == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        span_exporter = GrpcSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
        metric_exporter = GrpcMetricExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
    elif chosen == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/") if endpoint else None
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces" if base else None, timeout=EXPORT_TIMEOUT_SECONDS)
        metric_exporter = OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None, timeout=EXPORT_TIMEOUT_SECONDS)
    else:
        raise ValueError(f"unknown OTLP protocol {chosen!r}; use 'http/protobuf' or 'grpc'")

    readers: list[Any] = []
    if metric_exporter is not None:
        readers.append(PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval_ms,
                                                     export_timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000))
    readers.extend(metric_readers)
    prometheus_server = prometheus_url = None
    if prometheus or prometheus_port is not None:
        port = prometheus_port if prometheus_port is not None else int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT") or 9464)
        host = prometheus_host or os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "127.0.0.1"
        reader, prometheus_server, prometheus_url = _prometheus_reader(host, port)
        readers.append(reader)
    # Our own exit hook replaces the SDK's: its shutdown waits on each exporter's timeout in turn
    # (up to ~6 s with a black-holed collector); ours flushes both side by side within 2 s.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if span_exporter is not None:
        tracer_provider.add_span_processor(_bounded_span_processor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    otlp_endpoint = None
    if span_exporter is not None and not console:
        default = "http://localhost:4317" if chosen == "grpc" else "http://localhost:4318"
        otlp_endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or default
        _quiet_export_failures(otlp_endpoint)
    providers = TelemetryProviders(tracer_provider, meter_provider, prometheus_url, prometheus_server,
                                   _otlp_endpoint=otlp_endpoint)
    atexit.register(providers.shutdown)
    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    return providers
