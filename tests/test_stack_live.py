"""Every PromQL query of the dashboards and alert rules, run against a real Prometheus.

The Prometheus (tests/prom_helpers.py) scrapes, with the job names of collector/prometheus.yml:

* ``llamatelemetry-exporter``: the real sidecar exporter (in-process ``ExporterApp``) in front of a real
  llama-server (``full_server``: --metrics, 2 slots) under test traffic, with GPU series from
  ``FakeNVML`` (the llama-server's PID is listed as a process on GPU 0, so per-target GPU memory exists);
* ``otel-collector``: client telemetry recorded by ``LlamaCppClient`` through an OTel ``MeterProvider``
  with ``PrometheusMetricReader`` (the same name translation as the collector's prometheus exporter).

Dashboard queries: ``$target``/``$gpu``/``$model``/``$operation`` become the variables' "All" value
(``.*``), ``$__rate_interval`` 1m, ``$__range`` 5m; each query must return at least one series.
Alert rules: by convention every expression is ``<query> <comparison> <number>``; the query without the
comparison must return data (so every metric and label the rule relies on exists), and the rules loaded
into Prometheus must evaluate without error. Whether a rule fires is covered by promtool tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server

from llamatelemetry import LlamaCppClient
from llamatelemetry.provision.server import free_port
from fake_nvml import FakeNVML, FakeProcess
from llamatelemetry.exporter.server import ExporterApp, ExporterConfig
from prom_helpers import RunningPrometheus, start_prometheus
from stack_helpers import COLLECTOR, alert_rules, dashboard_queries, load_yaml, strip_threshold, variable_queries

TARGET = "llama-server"
MODEL = "scripted"
HI = [{"role": "user", "content": "hi"}]


def _jobs() -> tuple[str, str]:
    jobs = {job["job_name"] for job in load_yaml(COLLECTOR / "prometheus.yml")["scrape_configs"]}
    assert {"llamatelemetry-exporter", "otel-collector"} <= jobs
    return "llamatelemetry-exporter", "otel-collector"


class Traffic:
    """Sends chat requests in background threads until stopped: plain, streaming, reasoning-budget
    exhausting (max_tokens too small for the scripted model's reasoning) and failing calls."""

    def __init__(self, client: LlamaCppClient, broken: LlamaCppClient) -> None:
        self.client, self.broken = client, broken
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.calls = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(2)]

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
            time.sleep(0.05)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture(scope="module")
def stack(full_server: Any) -> Iterator[RunningPrometheus]:
    exporter_job, collector_job = _jobs()

    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(pid=full_server.pid, used_bytes=3 << 30))
    exporter = ExporterApp(ExporterConfig(targets=[f"{TARGET}={full_server.base_url}"], host="127.0.0.1", port=0), nvml=nvml)
    exporter.start()

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    resource = Resource.create({"service.name": "stack-test"})
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    tracer_provider = TracerProvider(resource=resource)
    metrics_port = free_port()
    http_server, http_thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    client = LlamaCppClient(full_server.base_url, meter_provider=meter_provider, tracer_provider=tracer_provider, max_retries=2)
    broken = LlamaCppClient(f"http://127.0.0.1:{free_port()}", meter_provider=meter_provider, tracer_provider=tracer_provider,
                            max_retries=0)
    traffic = Traffic(client, broken)
    traffic.one_round(0)  # fail fast, in the test's thread, if the client cannot talk to the server
    traffic.start()
    try:
        exporter_addr = exporter.url.split("://", 1)[1].rstrip("/")
        with start_prometheus({exporter_job: [exporter_addr], collector_job: [f"127.0.0.1:{metrics_port}"]},
                              rule_files=[COLLECTOR / "alerts.yml"]) as prom:
            # enough samples for rate(...[1m]) and for the busy-speed ratios to have a non-zero denominator
            prom.wait_for(f'count_over_time(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) >= 6', timeout=40)
            prom.wait_for('count_over_time(gen_ai_client_operation_duration_seconds_count[1m]) >= 6', timeout=20)
            prom.wait_for(f'rate(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) > 0', timeout=20)
            assert not traffic.errors, traffic.errors
            yield prom
    finally:
        traffic.stop()
        client.close()
        broken.close()
        http_server.shutdown()
        http_thread.join(timeout=5)
        meter_provider.shutdown()
        tracer_provider.shutdown()
        exporter.stop()
    assert not traffic.errors, traffic.errors


def test_scrape_targets_are_healthy(stack: RunningPrometheus) -> None:
    targets = stack.targets()
    assert len(targets) == 2
    for t in targets:
        assert t["health"] == "up", t
    # the exporter saw the llama-server up and healthy on (nearly) every scrape under traffic
    up = stack.value(f'avg_over_time(llamatelemetry_target_up{{target="{TARGET}"}}[1m])')
    ok = stack.value(f'avg_over_time(llamatelemetry_server_state{{target="{TARGET}", state="ok"}}[1m])')
    assert up is not None and up >= 0.9, (up, _diagnose(stack, "llamatelemetry_target_up llamatelemetry_server_state"),
                                          stack.query(f'llamatelemetry_server_state{{target="{TARGET}"}} == 1'))
    assert ok is not None and ok >= 0.9, (ok, stack.query(f'avg_over_time(llamatelemetry_server_state{{target="{TARGET}"}}[1m])'))


DASHBOARD_QUERIES = dashboard_queries()


def _diagnose(stack: RunningPrometheus, expr: str) -> str:
    """What Prometheus holds for each metric name in ``expr`` (for failure messages)."""
    import re

    lines = [f"scrape targets: {[(t['labels']['job'], t['health'], t['lastError']) for t in stack.targets()]}"]
    for name in sorted(set(re.findall(r"\b(?:llamacpp|llamatelemetry|gen_ai)_[a-z0-9_]+", expr))):
        samples = stack.query(f"count_over_time({name}[5m])")
        lines.append(f"{name}: {len(samples)} series, samples in 5m: {[s['value'][1] for s in samples][:5]}")
    return "\n".join(lines)


@pytest.mark.parametrize("dashboard,title,expr", DASHBOARD_QUERIES, ids=[f"{d}:{t}:{i}" for i, (d, t, _) in enumerate(DASHBOARD_QUERIES)])
def test_dashboard_query_returns_data(stack: RunningPrometheus, dashboard: str, title: str, expr: str) -> None:
    result = stack.query(expr)
    assert result, f"{dashboard} panel {title!r} returns no data: {expr}\n{_diagnose(stack, expr)}"


@pytest.mark.parametrize("dashboard,name,metric,label", variable_queries(), ids=lambda v: str(v))
def test_dashboard_variable_resolves(stack: RunningPrometheus, dashboard: str, name: str, metric: str, label: str) -> None:
    values = {s["metric"].get(label) for s in stack.query(metric)} - {None, ""}
    assert values, f"{dashboard} ${name}: label_values({metric}, {label}) is empty"


RULES = alert_rules()


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_query_returns_data(stack: RunningPrometheus, rule: dict[str, Any]) -> None:
    query = strip_threshold(rule["expr"])
    assert stack.query(query), f"{rule['alert']}: {query} returns no data"
    stack.query(rule["expr"])  # the full expression runs too (empty: nothing is wrong right now)


def test_loaded_rules_evaluate_without_error(stack: RunningPrometheus) -> None:
    import httpx

    deadline = time.monotonic() + 10
    while True:
        groups = httpx.get(stack.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("0001") is False for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.5)
    assert {r["name"] for r in rules} == {r["alert"] for r in RULES}
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
