"""OTLP export end to end (a local receiver decodes the protobuf) and OTLP endpoints that fail."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from loopback import LoopbackHTTPServer
from prom_helpers import one, scrape, start_prometheus
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

import llamatelemetry
from llamatelemetry import LlamaCppClient
from llamatelemetry.provision.model import REASONING_TOKENS
from llamatelemetry.provision.server import free_port
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.configure import SHUTDOWN_FLUSH_SECONDS

HI = [{"role": "user", "content": "hi"}]


class OtlpReceiver:
    """A minimal OTLP/HTTP receiver: decodes ExportTrace/MetricsServiceRequest protobufs."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces":
                    owner.traces.append(ExportTraceServiceRequest.FromString(body))
                elif self.path == "/v1/metrics":
                    owner.metrics.append(ExportMetricsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = LoopbackHTTPServer(Handler)
        self.url = self.server.url

    def spans(self) -> list:
        return [s for req in self.traces for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def metric_names(self) -> set[str]:
        return {m.name for req in self.metrics for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}

    def close(self) -> None:
        self.server.close()


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.int_value if v.HasField("int_value") else v.string_value if v.HasField("string_value") else v.double_value if v.HasField("double_value") else v.bool_value
    return out


def test_otlp_http_export_end_to_end(full_server):
    receiver = OtlpReceiver()
    try:
        providers = llamatelemetry.configure(service_name="otlp-test", endpoint=receiver.url, set_global=False)
        with LlamaCppClient(full_server.base_url, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider) as c:
            c.chat_completion(messages=HI, max_tokens=64)
        providers.force_flush()
        providers.shutdown()
        spans = receiver.spans()
        assert [s.name for s in spans] == ["chat scripted"]
        attrs = _attrs(spans[0])
        assert attrs[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
        assert attrs[sc.PROVIDER] == "llama.cpp"
        resource = {kv.key: kv.value.string_value for kv in receiver.traces[0].resource_spans[0].resource.attributes}
        assert resource["service.name"] == "otlp-test"
        assert {sc.METRIC_OPERATION_DURATION, sc.METRIC_TOKEN_USAGE} <= receiver.metric_names()
    finally:
        receiver.close()


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("kind", ["refused", "black_hole"])
def test_failing_otlp_endpoint_adds_no_latency(full_server, black_hole, kind):
    endpoint = black_hole if kind == "black_hole" else f"http://127.0.0.1:{free_port()}"
    providers = llamatelemetry.configure(endpoint=endpoint, set_global=False, export_interval_seconds=0.2)
    with LlamaCppClient(full_server.base_url, telemetry=False) as plain, LlamaCppClient(
        full_server.base_url, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider
    ) as traced:
        plain.chat_completion(messages=HI, max_tokens=64)
        traced.chat_completion(messages=HI, max_tokens=64)
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            traced.chat_completion(messages=HI, max_tokens=64)
            slowest = max(slowest, time.monotonic() - started)
    # The export timeout is 3 s: a call that waited on the exporter would take at least that long.
    assert slowest < 1.0
    started = time.monotonic()
    providers.shutdown()
    # Spans and metrics flush side by side within SHUTDOWN_FLUSH_SECONDS (it took ~6 s one after the other).
    assert time.monotonic() - started < SHUTDOWN_FLUSH_SECONDS + 0.5


SCRIPT = textwrap.dedent(
    """
    import sys, llamatelemetry
    llamatelemetry.configure(endpoint=sys.argv[2])
    client = llamatelemetry.LlamaCppClient(sys.argv[1])
    for _ in range(5):
        client.chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=64)
    from opentelemetry import trace
    tracer = trace.get_tracer("filler")
    for _ in range(5000):  # a full queue of spans the collector will never take
        tracer.start_span("filler").end()
    import time
    print("done", time.time(), flush=True)
    """
)


def test_process_exits_promptly_with_black_holed_collector(full_server, black_hole):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, full_server.base_url, black_hole], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    assert elapsed < 15, f"the run took {elapsed:.1f}s"
    # From the last line of the script to the end of the process: the bounded exit flush (spans + metrics).
    exit_took = time.time() - float(proc.stdout.split()[-1])
    assert exit_took < SHUTDOWN_FLUSH_SECONDS + 1.0, f"exit took {exit_took:.1f}s"  # + interpreter teardown on a busy machine


def test_console_exporter_for_local_debugging(full_server, capsys):
    providers = llamatelemetry.configure(console=True, set_global=False)
    with LlamaCppClient(full_server.base_url, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider) as c:
        c.chat_completion(messages=HI, max_tokens=64)
    providers.shutdown()
    out = capsys.readouterr().out
    assert '"name": "chat scripted"' in out and sc.USAGE_REASONING_OUTPUT_TOKENS in out
    # metrics too, not only spans
    assert f'"name": "{sc.METRIC_OPERATION_DURATION}"' in out and f'"name": "{sc.METRIC_TOKEN_USAGE}"' in out


def test_prometheus_endpoint_serves_client_metrics(full_server):
    providers = llamatelemetry.configure(prometheus_port=0, otlp=False, set_global=False)
    try:
        assert providers.prometheus_url.startswith("http://127.0.0.1:")
        with LlamaCppClient(full_server.base_url, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider) as c:
            c.chat_completion(messages=HI, max_tokens=64)
        series = scrape(providers.prometheus_url)
        assert one(series, "gen_ai_client_operation_duration_seconds_count", gen_ai_operation_name="chat") == 1
        assert one(series, "gen_ai_client_token_usage_sum", gen_ai_token_type="reasoning") == REASONING_TOKENS
        # and a real Prometheus scrapes it
        with start_prometheus({"client": [providers.prometheus_url.split("/")[2]]}) as prom:
            result = prom.wait_for('gen_ai_client_token_usage_sum{gen_ai_token_type="reasoning"}')
            assert float(result[0]["value"][1]) == REASONING_TOKENS
            assert result[0]["metric"]["gen_ai_request_model"] == "scripted"
    finally:
        providers.shutdown()
    with pytest.raises(httpx.HTTPError):
        httpx.get(providers.prometheus_url, timeout=1)


def test_otlp_grpc_export(full_server):
    """protocol="grpc": a real gRPC OTLP receiver gets the span."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import (
        metrics_service_pb2,
        metrics_service_pb2_grpc,
    )
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    received: list[ExportTraceServiceRequest] = []
    metric_requests: list[ExportMetricsServiceRequest] = []

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):  # noqa: N802
            metric_requests.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        providers = llamatelemetry.configure(endpoint=f"http://127.0.0.1:{port}", protocol="grpc", set_global=False)
        with LlamaCppClient(full_server.base_url, tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider) as c:
            c.chat_completion(messages=HI, max_tokens=64)
        providers.shutdown()
        spans = [s for req in received for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        assert [s.name for s in spans] == ["chat scripted"]
        assert _attrs(spans[0])[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
        assert metric_requests, "metrics were not exported over gRPC"
    finally:
        server.stop(None)


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(ValueError, match="http/protobuf.*grpc"):
        llamatelemetry.configure(protocol="thrift", set_global=False)  # type: ignore[arg-type]


def test_black_holed_collector_does_not_grow_memory(black_hole):
    """Spans pile up while the collector never answers: the queue is bounded, memory stays flat."""
    import tracemalloc

    providers = llamatelemetry.configure(endpoint=black_hole, set_global=False)
    tracer = providers.tracer_provider.get_tracer("memory-test")

    def burst(n: int) -> None:
        for i in range(n):
            with tracer.start_as_current_span("chat scripted", attributes={"gen_ai.usage.output_tokens": i, "x": "y" * 200}):
                pass

    tracemalloc.start()
    burst(6000)  # fills the 2048-span queue and the exporter's in-flight batch
    before = tracemalloc.get_traced_memory()[0]
    burst(10000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    started = time.monotonic()
    providers.shutdown()
    # Kept, 10,000 more spans of ~3.5 KB would be ~35 MB. Bounded, what remains is the queue (2,048 spans)
    # plus at most one batch in flight to the collector and its encoding (~3 MB): all constant.
    assert grown < 10_000_000, f"memory grew by {grown} bytes"
    assert time.monotonic() - started < 10


def test_prometheus_port_from_the_standard_variable_and_a_clear_error_when_taken(monkeypatch):
    port = free_port()
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
    providers = llamatelemetry.configure(prometheus=True, otlp=False, set_global=False)
    try:
        assert providers.prometheus_url == f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(providers.prometheus_url, timeout=5).status_code == 200
        with pytest.raises(OSError, match="pick another prometheus_port"):
            llamatelemetry.configure(prometheus=True, otlp=False, set_global=False)
    finally:
        providers.shutdown()
