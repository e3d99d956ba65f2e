"""Offline checks of the Grafana dashboards and provisioning: the shape Grafana provisions, unique ids,
datasources that exist, variables that are defined, units and thresholds set."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from stack_helpers import (
    BUILTIN_VARIABLES,
    DASHBOARD_FILES,
    DASHBOARDS,
    PROVISIONING,
    datasource_uids,
    iter_panels,
    load_dashboard,
    load_yaml,
    prometheus_targets,
    variables_used,
)

MODERN_PANELS = {"timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "row"}
EXPECTED = {"llama-server.json", "gpu.json", "requests.json", "proxy.json", "models.json"}


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards_build", DASHBOARDS / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARD_FILES} == EXPECTED


def test_committed_json_matches_generator() -> None:
    rendered = _generator().render()
    assert set(rendered) == EXPECTED
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, f"{name} is stale: run python dashboards/build.py"


def test_datasource_provisioning() -> None:
    docs = [load_yaml(p) for p in sorted((PROVISIONING / "datasources").glob("*.y*ml"))]
    assert docs
    all_ds = [ds for doc in docs for ds in doc["datasources"]]
    assert all(doc["apiVersion"] == 1 for doc in docs)
    uids = [ds["uid"] for ds in all_ds]
    assert len(uids) == len(set(uids))
    assert sorted(ds["type"] for ds in all_ds) == ["jaeger", "prometheus"]
    assert sum(1 for ds in all_ds if ds.get("isDefault")) == 1


def test_dashboard_provider() -> None:
    [path] = (PROVISIONING / "dashboards").glob("*.y*ml")
    doc = load_yaml(path)
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_shape(path) -> None:
    board = load_dashboard(path)
    uids = {load_dashboard(p)["uid"] for p in DASHBOARD_FILES}
    assert len(uids) == len(DASHBOARD_FILES)
    assert board.get("id") is None, "provisioned dashboards must not carry a database id"
    assert board["uid"] and len(board["uid"]) <= 40
    assert board["title"] and isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert isinstance(board["panels"], list) and isinstance(board["templating"]["list"], list)
    ids = [p["id"] for p in iter_panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = datasource_uids()
    for panel in iter_panels(board):
        assert panel["type"] in MODERN_PANELS, f"{panel['title']}: {panel['type']}"
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if panel["type"] == "row":
            continue
        ds = panel["datasource"]
        assert known.get(ds["uid"]) == ds["type"], f"{panel['title']}: unknown datasource {ds}"
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            tds = target.get("datasource", ds)
            assert known.get(tds["uid"]) == tds["type"]
            # PromQL in `expr`; a Jaeger search names the service it searches
            assert (target.get("expr") or target.get("query") or target.get("service") or "").strip(), panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{panel['title']}: no unit"
        assert defaults["thresholds"]["steps"][0]["value"] is None
        assert panel.get("description"), f"{panel['title']}: no description"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_variable_used_is_defined(path) -> None:
    board = load_dashboard(path)
    defined = {v["name"] for v in board["templating"]["list"]}
    text = json.dumps(board["panels"]) + json.dumps(board["links"])
    undefined = variables_used(text) - defined - set(BUILTIN_VARIABLES)
    assert not undefined, f"{path.name} uses undefined variables {undefined}"
    for var in board["templating"]["list"]:
        assert var["datasource"]["uid"] in datasource_uids()
        query = var["query"]["query"]
        assert not (variables_used(query) - set(BUILTIN_VARIABLES)), "variables chained on variables are not resolved by the tests"


def test_dashboards_cover_the_brief() -> None:
    exprs = {p.name: " ".join(t["expr"] for _, t in prometheus_targets(load_dashboard(p))) for p in DASHBOARD_FILES}
    ls = exprs["llama-server.json"]
    for needle in ("rate(llamacpp_prompt_tokens_total", "rate(llamacpp_tokens_predicted_total", "llamacpp_requests_processing",
                   "llamacpp_requests_deferred", "llamatelemetry_slot_processing", "llamatelemetry_slot_context_utilization_ratio",
                   "llamacpp_prompt_tokens_cached_total"):
        assert needle in ls, needle
    assert "_tokens_seconds{" not in ls, "throughput must come from rate() of counters, not the resetting gauges"
    gpu = exprs["gpu.json"]
    for needle in ("llamatelemetry_gpu_utilization_ratio", "llamatelemetry_gpu_memory_used_bytes", "llamatelemetry_gpu_power_watts",
                   "llamatelemetry_gpu_energy_joules_total", "llamatelemetry_gpu_temperature_celsius", "llamatelemetry_gpu_sm_clock_hertz",
                   "llamatelemetry_gpu_throttle_reason", "llamatelemetry_gpu_target_memory_used_bytes",
                   "llamatelemetry_gpu_process_memory_used_bytes"):
        assert needle in gpu, needle
    req = exprs["requests.json"]
    for needle in ("histogram_quantile(0.99, sum by (le) (rate(gen_ai_client_operation_duration_seconds_bucket",
                   "gen_ai_client_operation_time_to_first_chunk_seconds_bucket", "gen_ai_client_token_usage_sum",
                   'gen_ai_token_type="reasoning"', "llamatelemetry_reasoning_budget_exhausted_total", "sum by (error_type)"):
        assert needle in req, needle
    requests_board = load_dashboard(DASHBOARDS / "requests.json")
    jaeger_uid = next(uid for uid, kind in datasource_uids().items() if kind == "jaeger")
    assert any(jaeger_uid in link["url"] for link in requests_board["links"] if link["type"] == "link")
    assert any(p["datasource"]["uid"] == jaeger_uid for p in iter_panels(requests_board) if p["type"] != "row")
    assert any(t.get("exemplar") for _, t in prometheus_targets(requests_board))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_selector_variables_filter_every_query(path) -> None:
    board = load_dashboard(path)
    names = [v["name"] for v in board["templating"]["list"]]
    skip_titles = {"GPU collection", "Exporter scrape duration"}  # exporter-wide health, not per target/GPU
    for panel, target in prometheus_targets(board):
        if panel["title"] in skip_titles:
            continue
        assert any(f"${n}" in target["expr"] for n in names), f"{path.name} {panel['title']}: ignores the selector"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_query_filters_by_cluster_and_host(path) -> None:
    """The fleet variables come first on every dashboard and every Prometheus query honours them."""
    board = load_dashboard(path)
    names = [v["name"] for v in board["templating"]["list"]]
    assert names[:2] == ["cluster", "host"], names
    for panel, target in prometheus_targets(board):
        assert 'cluster=~"$cluster"' in target["expr"] and 'host=~"$host"' in target["expr"], f"{path.name} {panel['title']}"
        for by in re.findall(r"\bby \(([^)]*)\)", target["expr"]):
            labels = [label.strip() for label in by.split(",")]
            if "target" in labels or "gpu" in labels:  # the same target/GPU name on two hosts must not merge
                assert labels[:2] == ["cluster", "host"], f"{path.name} {panel['title']}: by ({by})"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_rate_panels_have_a_minimum_interval_and_totals_are_instant(path) -> None:
    board = load_dashboard(path)
    for panel, target in prometheus_targets(board):
        if "rate(" in target["expr"] and not target.get("instant"):
            assert panel.get("interval") in {"30s", "1m"}, f"{path.name} {panel['title']}: rate panel without a min interval"
        if "$__range" in target["expr"]:
            assert target["instant"] is True and target["range"] is False, f"{path.name} {panel['title']}: a total over the range is one number"
    if path.name in {"requests.json", "proxy.json"}:  # client-side metrics arrive every 15 s: a wider floor
        assert all(p.get("interval") in (None, "1m") for p, _ in prometheus_targets(board))


def test_proxy_and_energy_panels() -> None:
    proxy = " ".join(t["expr"] for _, t in prometheus_targets(load_dashboard(DASHBOARDS / "proxy.json")))
    for needle in ("histogram_quantile(0.5, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_time_to_first_token_seconds_bucket",
                   "histogram_quantile(0.95, sum by (le, llamatelemetry_client_name) (rate(gen_ai_server_time_to_first_token_seconds_bucket",
                   "sum by (llamatelemetry_client_name, gen_ai_token_type) (rate(gen_ai_client_token_usage_sum",
                   "llamatelemetry_reasoning_budget_exhausted_total", "sum by (http_route) (rate(llamatelemetry_proxy_requests_total"):
        assert needle in proxy, needle
    ls = " ".join(t["expr"] for _, t in prometheus_targets(load_dashboard(DASHBOARDS / "llama-server.json")))
    for needle in ("target:llamatelemetry_joules_per_token:rate5m", "target:llamatelemetry_joules_per_request:rate5m"):
        assert needle in ls, needle
    # llamacpp:n_busy_slots_per_decode is a counter in some llama.cpp builds and a gauge in others
    assert 'llamacpp_n_busy_slots_per_decode(_total)?' in ls
