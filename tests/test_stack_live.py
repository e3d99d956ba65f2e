"""Every PromQL query of the dashboards and alert rules, run against a real Prometheus.

The Prometheus (tests/prom_helpers.py) scrapes, with the job names of collector/prometheus.yml:

* ``llamatelemetry-exporter``: the real sidecar exporter (in-process ``ExporterApp``) in front of a real
  llama-server (``full_server``: --metrics, 2 slots) under test traffic, with GPU series from
  ``FakeNVML`` (the llama-server's PID is listed as a process on GPU 0, so per-target GPU memory exists);
* ``otel-collector``: client telemetry recorded by ``LlamaCppClient`` through an OTel ``MeterProvider``
  with ``PrometheusMetricReader`` (the same name translation as the collector's prometheus exporter).

* ``llamatelemetry-proxy``: the real tracing gateway with agent-like traffic under several client names, once
  ``llamatelemetry.proxy`` is in the tree (tests/stack_host.py starts it through its CLI).

Dashboard queries: ``$target``/``$gpu``/``$model``/``$operation`` become the variables' "All" value
(``.*``), ``$__rate_interval`` 1m, ``$__range`` 5m; each query must return at least one series.
Alert rules: by convention every expression is ``<query> <comparison> <number>``; the query without the
comparison must return data (so every metric and label the rule relies on exists), and the rules loaded
into Prometheus must evaluate without error. Whether a rule fires is covered by promtool tests.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from prom_helpers import RunningPrometheus, start_prometheus
from stack_helpers import (AGENT_STACK_PANELS, COLLECTOR, OFFLINE_ONLY_RULES, alert_query_parts, alert_rules, dashboard_queries,
                           load_yaml, recording_rule_files, variable_queries)
from stack_host import COLLECTOR_JOB, EXPORTER_JOB, TARGET, monitored_host


def _jobs() -> tuple[str, str]:
    jobs = {job["job_name"] for job in load_yaml(COLLECTOR / "prometheus.yml")["scrape_configs"]}
    assert {EXPORTER_JOB, COLLECTOR_JOB} <= jobs
    return EXPORTER_JOB, COLLECTOR_JOB


@pytest.fixture(scope="module")
def stack(full_server: Any) -> Iterator[RunningPrometheus]:
    _jobs()
    with monitored_host(full_server) as host:
        with start_prometheus(host.scrape_targets, rule_files=[COLLECTOR / "alerts.yml", *recording_rule_files()]) as prom:
            # enough samples for rate(...[1m]) and for the busy-speed ratios to have a non-zero denominator
            prom.wait_for(f'count_over_time(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) >= 6', timeout=40)
            prom.wait_for('count_over_time(gen_ai_client_operation_duration_seconds_count[1m]) >= 6', timeout=20)
            prom.wait_for(f'rate(llamacpp_tokens_predicted_total{{target="{TARGET}"}}[1m]) > 0', timeout=20)
            host.check()
            yield prom


def test_scrape_targets_are_healthy(stack: RunningPrometheus) -> None:
    targets = stack.targets()
    assert len(targets) == 3
    for t in targets:
        assert t["health"] == "up", t
    # the exporter saw the llama-server up and healthy on (nearly) every scrape under traffic
    up = stack.value(f'avg_over_time(llamatelemetry_target_up{{target="{TARGET}"}}[1m])')
    ok = stack.value(f'avg_over_time(llamatelemetry_server_state{{target="{TARGET}", state="ok"}}[1m])')
    assert up is not None and up >= 0.9, (up, _diagnose(stack, "llamatelemetry_target_up llamatelemetry_server_state"),
                                          stack.query(f'llamatelemetry_server_state{{target="{TARGET}"}} == 1'))
    assert ok is not None and ok >= 0.9, (ok, stack.query(f'avg_over_time(llamatelemetry_server_state{{target="{TARGET}"}}[1m])'))


# Panels fed only by servers this stack does not run are queried by tests/test_agent_signals_stack.py instead.
DASHBOARD_QUERIES = [query for query in dashboard_queries() if query[1] not in AGENT_STACK_PANELS]


def _diagnose(stack: RunningPrometheus, expr: str) -> str:
    """What Prometheus holds for each metric name in ``expr`` (for failure messages)."""
    import re

    lines = [f"scrape targets: {[(t['labels']['job'], t['health'], t['lastError']) for t in stack.targets()]}"]
    for name in sorted(set(re.findall(r"\b(?:llamacpp|llamatelemetry|gen_ai)_[a-z0-9_]+", expr))):
        samples = stack.query(f"count_over_time({name}[5m])")
        lines.append(f"{name}: {len(samples)} series, samples in 5m: {[s['value'][1] for s in samples][:5]}")
    return "\n".join(lines)


@pytest.mark.parametrize("dashboard,title,expr", [pytest.param(d, t, e, id=f"{d}:{t}:{i}")
                                                  for i, (d, t, e) in enumerate(DASHBOARD_QUERIES)])
def test_dashboard_query_returns_data(stack: RunningPrometheus, dashboard: str, title: str, expr: str) -> None:
    result = stack.query(expr)
    assert result, f"{dashboard} panel {title!r} returns no data: {expr}\n{_diagnose(stack, expr)}"


# `cluster`/`host` come from the agents' external labels: a single box has none (their "All" matches the
# absent label); tests/test_fleet.py resolves them against the central Prometheus of two hosts.
SINGLE_BOX_VARIABLES = [pytest.param(*v, id=str(v)) for v in variable_queries() if v[1] not in {"cluster", "host"}]


@pytest.mark.parametrize("dashboard,name,metric,label", SINGLE_BOX_VARIABLES)
def test_dashboard_variable_resolves(stack: RunningPrometheus, dashboard: str, name: str, metric: str, label: str) -> None:
    values = {s["metric"].get(label) for s in stack.query(metric)} - {None, ""}
    assert values, f"{dashboard} ${name}: label_values({metric}, {label}) is empty"


RULES = alert_rules()
LIVE_RULES = [r for r in RULES if r["alert"] not in OFFLINE_ONLY_RULES]


@pytest.mark.parametrize("rule", LIVE_RULES, ids=[r["alert"] for r in LIVE_RULES])
def test_alert_query_returns_data(stack: RunningPrometheus, rule: dict[str, Any]) -> None:
    for query in alert_query_parts(rule["expr"]):
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
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {r["alert"] for r in RULES}
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"
