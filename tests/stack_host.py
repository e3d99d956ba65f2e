"""One monitored llama-server "host" for the live stack tests: the real exporter in front of a real
llama-server (GPU series from the fake NVML), real client telemetry under traffic exported over OTLP to a
real collector, and — when the proxy is in the tree — the real gateway (``llamatelemetry proxy``) with
agent-like traffic through it, exporting over OTLP too, plus a traced client calling through the gateway
(its CLIENT span and the gateway's SERVER span make one trace).

``monitored_host(server, otlp_endpoint=...)`` yields the scrape targets of the processes it runs by job name
(the job names of collector/prometheus.yml and deploy/prometheus-agent.yml); the collector's own jobs
(``otel-collector``, ``otel-collector-self``) belong to whoever runs the collector::

    with run_otel("collector", ...) as collector:
        with monitored_host(full_server, otlp_endpoint=collector.url(OTLP_HTTP)) as host:
            ...

Used by tests/test_stack_live.py (one box) and tests/test_fleet.py (two hosts, each with its own agent
collector and Prometheus agent).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llamatelemetry
from llamatelemetry import LlamaCppClient
from llamatelemetry.exporter.server import ExporterApp, ExporterConfig
from llamatelemetry.provision.server import LlamaServer, free_port, stop_process

try:  # the fake NVML lives in tests/ once the exporter branch is merged
    from fake_nvml import FakeNVML, FakeProcess  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - before that merge
    from llamatelemetry.exporter.fake_nvml import FakeNVML, FakeProcess

TARGET = "llama-server"
MODEL = "scripted"
HI = [{"role": "user", "content": "hi"}]

EXPORTER_JOB = "llamatelemetry-exporter"
COLLECTOR_JOB = "otel-collector"
COLLECTOR_SELF_JOB = "otel-collector-self"
JAEGER_JOB = "jaeger"
PROXY_JOB = "llamatelemetry-proxy"


class Traffic:
    """Sends chat requests in background threads until stopped: plain, streaming, reasoning-budget
    exhausting (max_tokens too small for the scripted model's reasoning) and failing calls."""

    def __init__(self, client: LlamaCppClient, broken: LlamaCppClient, *, workers: int = 2, pause: float = 0.05,
                 via_gateway: LlamaCppClient | None = None) -> None:
        self.client, self.broken, self.pause, self.via_gateway = client, broken, pause, via_gateway
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        #: (monotonic end time, seconds) of every plain chat call: the fault tests compare them across outages
        self.durations: list[tuple[float, float]] = []
        self.gateway_durations: list[tuple[float, float]] = []  # the same through the gateway
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(workers)]

    def one_round(self, worker: int) -> None:
        c = self.client
        start = time.monotonic()
        c.chat.completions.create(messages=HI, model=MODEL, max_tokens=64)
        self.durations.append((time.monotonic(), time.monotonic() - start))
        for _ in c.chat.completions.create(messages=HI, model=MODEL, max_tokens=64, stream=True):
            pass
        c.chat.completions.create(messages=HI, model=MODEL, max_tokens=5)  # ends inside <think>: budget exhausted
        if worker == 0:
            try:
                self.broken.chat.completions.create(messages=HI, model=MODEL, max_tokens=5)
            except Exception:  # noqa: BLE001 - the failure is the point: it is recorded with error_type
                pass
        if self.via_gateway is not None:  # a CLIENT span whose traceparent the gateway's SERVER span joins
            start = time.monotonic()
            self.via_gateway.chat.completions.create(messages=HI, model=MODEL, max_tokens=64)
            self.gateway_durations.append((time.monotonic(), time.monotonic() - start))
        self.calls += 4

    def _loop(self, worker: int) -> None:
        while not self.stop_event.is_set():
            try:
                self.one_round(worker)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the fixture
                self.errors.append(exc)
                return
            time.sleep(self.pause)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)


class ProxyTraffic:
    """Agent-like traffic through a real ``llamatelemetry proxy`` (its real CLI): OpenAI chat
    (plain, streamed, budget-exhausting) and a rejected request, under several client names."""

    CLIENTS = ("aider", "claude-code", "curl")

    def __init__(self, upstream: str, *, pause: float = 0.1, otlp_endpoint: str | None = None) -> None:
        self.pause = pause
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"127.0.0.1:{self.admin_port}"
        self.log = tempfile.NamedTemporaryFile(prefix="llamatelemetry-proxy-", suffix=".log")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", upstream,
             "--port", str(self.port), "--admin-port", str(self.admin_port),
             *(["--otlp-endpoint", otlp_endpoint] if otlp_endpoint else [])],
            # metrics exported every second (the compose file says 15 s, as often as Prometheus scrapes there)
            # stderr to a file, never an unread pipe: with the collector down the OTLP exporter logs a retry
            # warning every second, and a full pipe would block the gateway mid-request
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "OTEL_METRIC_EXPORT_INTERVAL": "1000"})
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"http://{self.admin}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = Path(self.log.name).read_text(errors="replace")
                raise RuntimeError(f"llamatelemetry proxy did not start: {err[-2000:]}")
            time.sleep(0.2)

    def one_round(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for name in self.CLIENTS:
                headers = {"X-Client-Name": name}
                body = {"model": MODEL, "messages": HI, "max_tokens": 64}
                steps = [
                    ("chat", lambda: http.post("/v1/chat/completions", json=body, headers=headers).raise_for_status()),
                    ("stream", lambda: self._stream(http, {**body, "stream": True}, headers)),
                    ("empty answer", lambda: http.post("/v1/chat/completions", json={**body, "max_tokens": 5}, headers=headers)),
                    # the common rejection with agent prompts: context overflow, a 400 from llama-server
                    ("rejected", lambda: http.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi " * 3000}]},
                                                   headers=headers)),
                    ("models", lambda: http.get("/v1/models", headers=headers)),
                ]
                for what, step in steps:
                    try:
                        step()
                    except httpx.HTTPError as exc:
                        raise RuntimeError(f"proxy traffic: {what} as {name} failed: {exc!r}") from exc

    @staticmethod
    def _stream(http: httpx.Client, body: dict[str, Any], headers: dict[str, str]) -> None:
        with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
            resp.raise_for_status()
            for _ in resp.iter_lines():
                pass

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.one_round()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the fixture
                self.errors.append(exc)
                return
            time.sleep(self.pause)

    def start(self) -> None:
        self.wait_ready()
        self.one_round()  # fail fast in the caller's thread
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)
        stop_process(self.process)
        self.log.close()


@dataclass
class MonitoredHost:
    """What runs on one host. ``scrape_targets`` is ``{job name: ["127.0.0.1:port"]}`` for the processes
    started here; ``spans`` holds every span the host's clients ended (a copy of what went over OTLP)."""

    server: LlamaServer
    scrape_targets: dict[str, list[str]]
    traffic: Traffic
    providers: llamatelemetry.TelemetryProviders
    spans: InMemorySpanExporter
    proxy: ProxyTraffic | None = None
    errors: list[BaseException] = field(default_factory=list)

    def check(self) -> None:
        errors = self.traffic.errors + (self.proxy.errors if self.proxy else [])
        assert not errors, errors


def traced_client(base_url: str, providers: llamatelemetry.TelemetryProviders, *, max_retries: int = 2) -> LlamaCppClient:
    return LlamaCppClient(base_url, meter_provider=providers.meter_provider, tracer_provider=providers.tracer_provider,
                          max_retries=max_retries)


@contextlib.contextmanager
def monitored_host(server: LlamaServer, *, otlp_endpoint: str, service_name: str = "stack-test", workers: int = 2,
                   pause: float = 0.05) -> Iterator[MonitoredHost]:
    """Exporter + client telemetry over OTLP/HTTP to ``otlp_endpoint`` (+ the gateway, exporting there too,
    when available) for ``server`` until the ``with`` block ends."""
    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(pid=server.pid, used_bytes=3 << 30))
    exporter = ExporterApp(ExporterConfig(targets=[f"{TARGET}={server.base_url}"], host="127.0.0.1", port=0), nvml=nvml)
    exporter.start()

    # The application's side, as a user sets it up: llamatelemetry.configure() exporting OTLP (metrics every
    # second instead of the SDK's 60 s, so a test sees rates within seconds).
    providers = llamatelemetry.configure(service_name=service_name, endpoint=otlp_endpoint, set_global=False,
                                         export_interval_seconds=1.0)
    spans = InMemorySpanExporter()
    providers.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))

    client = traced_client(server.base_url, providers)
    broken = traced_client(f"http://127.0.0.1:{free_port()}", providers, max_retries=0)
    proxy = ProxyTraffic(server.base_url, pause=pause * 5, otlp_endpoint=otlp_endpoint)
    via_gateway = traced_client(proxy.url, providers) if proxy is not None else None
    traffic = Traffic(client, broken, workers=workers, pause=pause, via_gateway=via_gateway)
    exporter_addr = exporter.url.split("://", 1)[1].rstrip("/")
    targets = {EXPORTER_JOB: [exporter_addr]}
    if proxy is not None:
        targets[PROXY_JOB] = [proxy.admin]
    host = MonitoredHost(server, targets, traffic, providers, spans, proxy)
    try:
        if proxy is not None:
            proxy.start()
        traffic.one_round(0)  # fail fast, in the test's thread, if the client cannot talk to the server
        traffic.start()
        yield host
    finally:
        traffic.stop()
        if proxy is not None:
            proxy.stop()
        for c in (client, broken, via_gateway):
            if c is not None:
                c.close()
        providers.shutdown()
        exporter.stop()
    host.check()


def series_hosts(result: list[dict[str, Any]]) -> set[str]:
    """The ``host`` label values in a query result."""
    return {s["metric"].get("host", "") for s in result}
