"""One monitored llama-server "host" for the live stack tests: the real exporter in front of a real
llama-server (GPU series from the fake NVML), real client telemetry under traffic, and the real
proxy with agent-like traffic through it.

``monitored_host(server)`` yields the scrape targets by job name (the job names of collector/prometheus.yml
and deploy/prometheus-agent.yml), so a test points a Prometheus (or a Prometheus agent) at them::

    with monitored_host(full_server) as host:
        with start_prometheus(host.scrape_targets) as prom:
            ...

Used by tests/test_stack_live.py (one box) and tests/test_fleet.py (two hosts remote-writing to a central
Prometheus).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server

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
PROXY_JOB = "llamatelemetry-proxy"


class Traffic:
    """Sends chat requests in background threads until stopped: plain, streaming, reasoning-budget
    exhausting (max_tokens too small for the scripted model's reasoning) and failing calls."""

    def __init__(self, client: LlamaCppClient, broken: LlamaCppClient, *, workers: int = 2, pause: float = 0.05) -> None:
        self.client, self.broken, self.pause = client, broken, pause
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(workers)]

    def one_round(self, worker: int) -> None:
        c = self.client
        c.chat.completions.create(messages=HI, model=MODEL, max_tokens=64)
        for _ in c.chat.completions.create(messages=HI, model=MODEL, max_tokens=64, stream=True):
            pass
        c.chat.completions.create(messages=HI, model=MODEL, max_tokens=5)  # ends inside <think>: budget exhausted
        if worker == 0:
            try:
                self.broken.chat.completions.create(messages=HI, model=MODEL, max_tokens=5)
            except Exception:  # noqa: BLE001 - the failure is the point: it is recorded with error_type
                pass
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

    def __init__(self, upstream: str, *, pause: float = 0.1) -> None:
        self.pause = pause
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"127.0.0.1:{self.admin_port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", upstream,
             "--port", str(self.port), "--admin-port", str(self.admin_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
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
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
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


@dataclass
class MonitoredHost:
    """What a Prometheus scrapes on one host: ``scrape_targets`` is ``{job name: ["127.0.0.1:port"]}``."""

    server: LlamaServer
    scrape_targets: dict[str, list[str]]
    traffic: Traffic
    proxy: ProxyTraffic | None = None
    errors: list[BaseException] = field(default_factory=list)

    def check(self) -> None:
        errors = self.traffic.errors + (self.proxy.errors if self.proxy else [])
        assert not errors, errors


@contextlib.contextmanager
def monitored_host(server: LlamaServer, *, service_name: str = "stack-test", workers: int = 2,
                   pause: float = 0.05) -> Iterator[MonitoredHost]:
    """Exporter + client telemetry + proxy for ``server`` until the ``with`` block ends."""
    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(pid=server.pid, used_bytes=3 << 30))
    exporter = ExporterApp(ExporterConfig(targets=[f"{TARGET}={server.base_url}"], host="127.0.0.1", port=0), nvml=nvml)
    exporter.start()

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    resource = Resource.create({"service.name": service_name})
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    tracer_provider = TracerProvider(resource=resource)
    metrics_port = free_port()
    http_server, http_thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    client = LlamaCppClient(server.base_url, meter_provider=meter_provider, tracer_provider=tracer_provider, max_retries=2)
    broken = LlamaCppClient(f"http://127.0.0.1:{free_port()}", meter_provider=meter_provider, tracer_provider=tracer_provider,
                            max_retries=0)
    traffic = Traffic(client, broken, workers=workers, pause=pause)
    proxy = ProxyTraffic(server.base_url, pause=pause * 5)
    exporter_addr = exporter.url.split("://", 1)[1].rstrip("/")
    targets = {EXPORTER_JOB: [exporter_addr], COLLECTOR_JOB: [f"127.0.0.1:{metrics_port}"]}
    targets[PROXY_JOB] = [proxy.admin]
    host = MonitoredHost(server, targets, traffic, proxy)
    try:
        traffic.one_round(0)  # fail fast, in the test's thread, if the client cannot talk to the server
        traffic.start()
        if proxy is not None:
            proxy.start()
        yield host
    finally:
        traffic.stop()
        if proxy is not None:
            proxy.stop()
        client.close()
        broken.close()
        http_server.shutdown()
        http_thread.join(timeout=5)
        meter_provider.shutdown()
        tracer_provider.shutdown()
        exporter.stop()
    host.check()


def series_hosts(result: list[dict[str, Any]]) -> set[str]:
    """The ``host`` label values in a query result."""
    return {s["metric"].get("host", "") for s in result}
