"""The monitoring stack, run for real: every dashboard query and alert expression against real data, traces in a
real Jaeger, and the collector's self-monitoring alerts firing when its backend or the collector itself goes away.

What runs (nothing is a stand-in):

* a real llama-server (``full_server``) under traffic from ``LlamaCppClient`` (plain, streamed, reasoning-budget
  exhausting and failing calls), a real gateway (``llamatelemetry proxy``) with agent-like traffic, a traced client
  calling through that gateway, and one run of ``llamatelemetry demo`` against the same server;
* the real sidecar exporter (in-process ``ExporterApp``; GPU series from ``FakeNVML``: there is no GPU here);
* every application exports OTLP to **our collector** (the binary scripts/build-stack.sh builds from the official
  Go modules) running **collector/otel-collector.yaml** with only its ports moved to free loopback ports (and
  ``jaeger:4317`` pointed at the test's Jaeger);
* **Jaeger v2** (built from its Go module) running collector/jaeger.yaml (ports moved, Badger in a temp dir);
* a real Prometheus scraping them with **collector/prometheus.yml's job definitions** (targets moved to the loopback
  addresses, 1 s intervals), loading the shipped alert and recording rules.

Dashboard queries: ``$target``/``$gpu``/``$model``/... become the variables' "All" value, ``$__rate_interval`` 1m,
``$__range`` 5m; each query must return at least one series. Alert rules: every expression is
``<query> <comparison> <number>``; the query without the comparison must return data. Both lists are read from
dashboards/*.json and collector/alerts.yml when the tests are collected, so panels and rules added later are
covered without touching this file. ``stack_helpers.NEEDS_A_CONDITION`` is the one place to list a series the live stack cannot
produce (with the reason); such a query still has to run without error.
"""

from __future__ import annotations

import contextlib
import copy
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from prom_helpers import RunningPrometheus, run_prometheus
from stack_helpers import (COLLECTOR, needs_a_condition, HEALTH, JAEGER_QUERY, OTLP_GRPC, OTLP_HTTP, PROM_EXPORTER, SELF_METRICS,
                           RunningOtel, alert_query_parts, alert_rules, dashboard_queries, jaeger_in, jaeger_traces,
                           load_yaml, recording_rule_files, run_otel, span_tags, stack_binaries, variable_queries)
from stack_host import COLLECTOR_JOB, COLLECTOR_SELF_JOB, EXPORTER_JOB, JAEGER_JOB, TARGET, MonitoredHost, monitored_host

SERVICE = "stack-test"
PROXY_SERVICE = "llamatelemetry-proxy"

#: The compose service:port each shipped scrape target names -> the shipped port of the process the test runs.
#: Jobs whose process the test does not run are listed with the reason.
JOBS_NOT_RUN = {"prometheus": "Prometheus scraping itself: its port is only known after it started"}


@dataclass
class LiveStack:
    prom: RunningPrometheus
    collector: RunningOtel
    jaeger: RunningOtel
    host: MonitoredHost
    demo: subprocess.CompletedProcess[str]


def prometheus_config(targets: dict[str, str]) -> dict[str, Any]:
    """collector/prometheus.yml with every ``service:port`` target replaced by ``targets[service:port]``, 1 s
    intervals, and the jobs of JOBS_NOT_RUN left out. Everything else (job names, honor_labels) as shipped."""
    config = load_yaml(COLLECTOR / "prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in JOBS_NOT_RUN:
            continue
        job = dict(job)
        job.pop("scrape_interval", None)
        shipped = [t for sc in job["static_configs"] for t in sc["targets"]]
        missing = [t for t in shipped if t not in targets]
        assert not missing, f"job {job['job_name']}: the test runs nothing for {missing}; run it or list it in JOBS_NOT_RUN"
        job["static_configs"] = [{"targets": [targets[t] for t in shipped]}]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


#: Watcher alerts whose firing the fault test checks; loaded a second time with `for: 0s` (group
#: "watchers-now") so the test need not sit out the shipped 2-5 minutes. The expressions are the shipped ones.
WATCHER_ALERTS = ("OtelCollectorDown", "OtelCollectorDroppingData", "JaegerDown")


def _watchers_now(path: Path) -> Path:
    rules = [dict(copy.deepcopy(r), **{"for": "0s"}) for r in alert_rules() if r["alert"] in WATCHER_ALERTS]
    assert {r["alert"] for r in rules} == set(WATCHER_ALERTS), "a watcher alert was renamed: update WATCHER_ALERTS"
    path.write_text(yaml.safe_dump({"groups": [{"name": "watchers-now", "rules": rules}]}))
    return path


def _run_demo(server_url: str, otlp_endpoint: str) -> subprocess.CompletedProcess[str]:
    """`llamatelemetry demo` against the test's llama-server, exporting to the collector (its default sends)."""
    return subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "demo", "--target", server_url, "--otlp-endpoint", otlp_endpoint],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def stack(full_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    binaries = stack_binaries()
    with contextlib.ExitStack() as es:
        jaeger = es.enter_context(run_otel("jaeger", binaries.jaeger, load_yaml(COLLECTOR / "jaeger.yaml"), edit=jaeger_in,
                                           ready=[(SELF_METRICS, "/metrics"), (JAEGER_QUERY, "/api/services")]))
        collector = es.enter_context(run_otel("collector", binaries.otelcol, load_yaml(COLLECTOR / "otel-collector.yaml"),
                                              hosts={"jaeger:4317": jaeger.addr(OTLP_GRPC)},
                                              ready=[(HEALTH, "/"), (SELF_METRICS, "/metrics")]))
        host = es.enter_context(monitored_host(full_server, otlp_endpoint=collector.url(OTLP_HTTP), service_name=SERVICE))
        [exporter] = host.scrape_targets[EXPORTER_JOB]
        targets = {"exporter:9183": exporter, "collector:8889": collector.addr(PROM_EXPORTER),
                   "collector:8888": collector.addr(SELF_METRICS), "jaeger:8888": jaeger.addr(SELF_METRICS)}
        rules = [COLLECTOR / "alerts.yml", *recording_rule_files(), _watchers_now(tmp_path_factory.mktemp("rules") / "watchers-now.yml")]
        prom = es.enter_context(run_prometheus(prometheus_config(targets), rules))
        demo = _run_demo(full_server.base_url, collector.url(OTLP_HTTP))
        # enough samples for rate(...[1m]) and for the busy-speed ratios to have a non-zero denominator
        prom.wait_for(f'count_over_time(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) >= 6', timeout=60)
        prom.wait_for('count_over_time(gen_ai_client_operation_duration_seconds_count[1m]) >= 6', timeout=60)
        prom.wait_for('count_over_time(gen_ai_server_request_duration_seconds_count[1m]) >= 6', timeout=60)
        prom.wait_for(f'rate(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) > 0', timeout=30)
        host.check()
        yield LiveStack(prom, collector, jaeger, host, demo)


def test_scrape_targets_are_healthy(stack: LiveStack) -> None:
    targets = stack.prom.targets()
    assert {t["labels"]["job"] for t in targets} == {EXPORTER_JOB, COLLECTOR_JOB, COLLECTOR_SELF_JOB, JAEGER_JOB}
    for t in targets:
        assert t["health"] == "up", t
    # the exporter saw the llama-server up and healthy on (nearly) every scrape under traffic
    up = stack.prom.value(f'avg_over_time(llamatelemetry_target_up{{target="{TARGET}"}}[1m])')
    ok = stack.prom.value(f'avg_over_time(llamatelemetry_server_state{{target="{TARGET}", state="ok"}}[1m])')
    assert up is not None and up >= 0.9, up
    assert ok is not None and ok >= 0.9, ok


def test_client_metrics_arrive_through_the_collector(stack: LiveStack) -> None:
    """The collector's prometheus exporter, not an in-process reader: job/instance come from the OTel resource
    (honor_labels), and the collector's own counters show the points it accepted."""
    jobs = {s["metric"]["job"] for s in stack.prom.query("gen_ai_client_operation_duration_seconds_count")}
    assert SERVICE in jobs, jobs
    assert PROXY_SERVICE in {s["metric"]["job"] for s in stack.prom.query("gen_ai_server_request_duration_seconds_count")}
    accepted = stack.prom.value(f'sum(otelcol_receiver_accepted_metric_points{{job="{COLLECTOR_SELF_JOB}"}})')
    assert accepted and accepted > 0


DASHBOARD_QUERIES = dashboard_queries()


def _diagnose(prom: RunningPrometheus, expr: str) -> str:
    """What Prometheus holds for each metric name in ``expr`` (for failure messages)."""
    lines = [f"scrape targets: {[(t['labels']['job'], t['health'], t['lastError']) for t in prom.targets()]}"]
    for name in sorted(set(re.findall(r"\b(?:llamacpp|llamatelemetry|gen_ai|otelcol)_[a-z0-9_]+", expr))):
        samples = prom.query(f"count_over_time({name}[5m])")
        lines.append(f"{name}: {len(samples)} series, samples in 5m: {[s['value'][1] for s in samples][:5]}")
    return "\n".join(lines)


@pytest.mark.parametrize("dashboard,title,expr", [pytest.param(d, t, e, id=f"{d}:{t}:{i}") for i, (d, t, e) in enumerate(DASHBOARD_QUERIES)])
def test_dashboard_query_returns_data(stack: LiveStack, dashboard: str, title: str, expr: str) -> None:
    result = stack.prom.query(expr)  # raises when Prometheus cannot evaluate it
    if needs_a_condition(expr) is None:
        assert result, f"{dashboard} panel {title!r} returns no data: {expr}\n{_diagnose(stack.prom, expr)}"


# `cluster`/`host` come from the agents' external labels: a single box has none (their "All" matches the
# absent label); tests/test_fleet.py resolves them against the central Prometheus of two hosts.
SINGLE_BOX_VARIABLES = [pytest.param(*v, id=str(v)) for v in variable_queries() if v[1] not in {"cluster", "host"}]


@pytest.mark.parametrize("dashboard,name,metric,label", SINGLE_BOX_VARIABLES)
def test_dashboard_variable_resolves(stack: LiveStack, dashboard: str, name: str, metric: str, label: str) -> None:
    values = {s["metric"].get(label) for s in stack.prom.query(metric)} - {None, ""}
    if needs_a_condition(metric) is None:
        assert values, f"{dashboard} ${name}: label_values({metric}, {label}) is empty"


RULES = alert_rules()


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_query_returns_data(stack: LiveStack, rule: dict[str, Any]) -> None:
    for query in alert_query_parts(rule["expr"]):
        result = stack.prom.query(query)
        if needs_a_condition(query) is None:
            assert result, f"{rule['alert']}: {query} returns no data\n{_diagnose(stack.prom, query)}"
    stack.prom.query(rule["expr"])  # the full expression runs too (empty: nothing is wrong right now)


def test_loaded_rules_evaluate_without_error(stack: LiveStack) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(stack.prom.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.5)
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {r["alert"] for r in RULES}
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
    # nothing is wrong yet: the watchers are quiet (fired below, once something is broken on purpose)
    assert not _firing(stack.prom, *WATCHER_ALERTS)


# --- traces in Jaeger --------------------------------------------------------------------------------------------

def _service_of(trace: dict[str, Any], span: dict[str, Any]) -> str:
    return str(trace["processes"][span["processID"]]["serviceName"])


def _wait_for_traces(stack: LiveStack, service: str, predicate: Any, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    traces: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        traces = [t for t in jaeger_traces(stack.jaeger.url(JAEGER_QUERY), service) if predicate(t)]
        if traces:
            return traces
        time.sleep(1)
    services = httpx.get(stack.jaeger.url(JAEGER_QUERY) + "/api/services", timeout=10).json()
    raise AssertionError(f"no matching trace of {service} in Jaeger after {timeout}s; services: {services}\n"
                         f"collector log:\n{stack.collector.log_tail(10)}")


def test_gateway_server_span_and_its_client_span_make_one_trace_in_jaeger(stack: LiveStack) -> None:
    def joined(trace: dict[str, Any]) -> bool:
        kinds = {(_service_of(trace, s), span_tags(s).get("span.kind")) for s in trace["spans"]}
        return {(SERVICE, "client"), (PROXY_SERVICE, "server")} <= kinds

    trace = _wait_for_traces(stack, PROXY_SERVICE, joined)[0]
    [client] = [s for s in trace["spans"] if _service_of(trace, s) == SERVICE and span_tags(s).get("span.kind") == "client"]
    [server] = [s for s in trace["spans"] if _service_of(trace, s) == PROXY_SERVICE and span_tags(s).get("span.kind") == "server"]
    # the gateway's SERVER span is the child of the client's CLIENT span (the traceparent the client sent)
    assert {"refType": "CHILD_OF", "traceID": trace["traceID"], "spanID": client["spanID"]} in server["references"], server["references"]
    for span in (client, server):
        tags = span_tags(span)
        assert tags["gen_ai.operation.name"] == "chat", tags
        assert tags["gen_ai.request.model"] == "scripted", tags
        assert int(tags["gen_ai.usage.input_tokens"]) > 0 and int(tags["gen_ai.usage.output_tokens"]) > 0, tags
        assert "gen_ai.provider.name" in tags, tags
    assert client["operationName"] == "chat scripted"


def test_failed_calls_are_error_traces_in_jaeger(stack: LiveStack) -> None:
    def failed(trace: dict[str, Any]) -> bool:
        return any(span_tags(s).get("error") is True and "error.type" in span_tags(s) for s in trace["spans"])

    trace = _wait_for_traces(stack, SERVICE, failed)[0]
    [span] = [s for s in trace["spans"] if span_tags(s).get("error") is True]
    assert span_tags(span)["otel.status_code"] == "ERROR"


def test_demo_traffic_reaches_jaeger_and_prometheus(stack: LiveStack) -> None:
    assert stack.demo.returncode == 0, stack.demo.stdout[-2000:] + stack.demo.stderr[-2000:]
    services = set(httpx.get(stack.jaeger.url(JAEGER_QUERY) + "/api/services", timeout=10).json()["data"] or [])
    demo_services = services - {SERVICE, PROXY_SERVICE, "jaeger"}
    assert demo_services, services
    for service in demo_services:
        assert _wait_for_traces(stack, service, lambda t: bool(t["spans"]))
    jobs = {s["metric"]["job"] for s in stack.prom.query("gen_ai_client_operation_duration_seconds_count")}
    assert jobs & demo_services, (jobs, demo_services)


# --- collector faults, live (runs last: it stops things) -----------------------------------------------------------

def _firing(prom: RunningPrometheus, *names: str) -> set[str]:
    alerts = httpx.get(prom.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing" and a["labels"]["alertname"] in names}


def _wait_firing(stack: LiveStack, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while name not in _firing(stack.prom, name):
        assert time.monotonic() < deadline, (f"{name} did not fire within {timeout}s\n{_diagnose(stack.prom, 'otelcol_exporter_send_failed_spans')}\n"
                                             f"collector log:\n{stack.collector.log_tail(10)}")
        time.sleep(1)


def _calls_during(stack: LiveStack, start: float, end: float, *, via_gateway: bool = False) -> list[float]:
    calls = stack.host.traffic.gateway_durations if via_gateway else stack.host.traffic.durations
    return [d for t, d in list(calls) if start <= t <= end]


@pytest.mark.takes_down_shared_stack
def test_watcher_alerts_fire_and_applications_stay_fast_when_the_backend_or_the_collector_goes_away(stack: LiveStack) -> None:
    """Kill Jaeger (a crash): JaegerDown, then OtelCollectorDroppingData once the collector gives up retrying
    (its shipped `retry_on_failure.max_elapsed_time`, 60 s). Then stop the collector: OtelCollectorDown.
    Meanwhile the client, the gateway and the client calling through it lose no request, and their calls take
    about as long as before (OTLP export happens off the request path and drops rather than blocks)."""
    traffic = stack.host.traffic
    calls_before, t0 = traffic.calls, time.monotonic()
    time.sleep(5)
    baseline = _calls_during(stack, t0 - 30, time.monotonic())
    gateway_baseline = _calls_during(stack, t0 - 30, time.monotonic(), via_gateway=True)

    stack.jaeger.stop(kill=True)
    outage = time.monotonic()
    _wait_firing(stack, "JaegerDown", timeout=30)
    _wait_firing(stack, "OtelCollectorDroppingData", timeout=150)
    stack.collector.stop()
    _wait_firing(stack, "OtelCollectorDown", timeout=30)
    time.sleep(15)  # applications keep calling with the collector gone
    during = _calls_during(stack, outage, time.monotonic())
    gateway_during = _calls_during(stack, outage, time.monotonic(), via_gateway=True)

    stack.host.check()  # no failed request anywhere (client, gateway, client through the gateway)
    assert traffic.calls > calls_before + 20, (calls_before, traffic.calls)
    assert len(baseline) >= 5 and len(during) >= 20, (len(baseline), len(during))
    before, after = statistics.median(baseline), statistics.median(during)
    # generous on a shared 2-core machine: a blocking exporter would add its 10 s timeout to calls
    assert after < 3 * before + 0.5, (before, after)
    assert max(during) < 5.0, max(during)
    assert len(gateway_baseline) >= 2 and len(gateway_during) >= 10, (len(gateway_baseline), len(gateway_during))
    before, after = statistics.median(gateway_baseline), statistics.median(gateway_during)
    assert after < 3 * before + 0.5 and max(gateway_during) < 5.0, (before, after, max(gateway_during))

    # both come back on the same ports and the alerts resolve
    stack.jaeger.start()
    stack.collector.start()
    for job in (COLLECTOR_SELF_JOB, JAEGER_JOB):
        stack.prom.wait_for(f'up{{job="{job}"}} == 1', timeout=30)
    deadline = time.monotonic() + 30
    while _firing(stack.prom, "OtelCollectorDown", "JaegerDown"):
        assert time.monotonic() < deadline, _firing(stack.prom, *WATCHER_ALERTS)
        time.sleep(1)
