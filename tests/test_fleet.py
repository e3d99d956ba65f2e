"""The fleet tier, for real: two "hosts", each with its own collector agent and Prometheus agent; two gateway
collectors with tail sampling; one central Prometheus.

Each host is a real llama-server, the real exporter (fake NVML for GPU series), real client telemetry under
traffic and the real gateway (tests/stack_host.py), all exporting OTLP to the host's **collector agent** (our
collector build running deploy/otel-agent.yaml), scraped by a real Prometheus in *agent mode* running the
shipped deploy/prometheus-agent.yml — only the scrape targets (loopback ports), the remote-write URL and the
intervals (1 s instead of 10-15 s) are changed for the test. The agents' ``external_labels`` come from the
environment (``LLAMATELEMETRY_HOST``/``LLAMATELEMETRY_CLUSTER``), as in production; the collector agent reads
the same ``LLAMATELEMETRY_HOST`` for ``host.name``. The central Prometheus runs deploy/prometheus-central.yml
with its remote-write receiver and the shipped alert (and recording) rules.

Traces: each collector agent load-balances spans by trace ID onto two **gateway collectors**
(deploy/otel-gateway.yaml, tail sampling), each writing to its own Jaeger so the test sees which gateway kept
what. A client on host-a calls the gateway of host-b, so the two spans of one trace reach the gateways through
*different* agents. Changed for the test, besides ports: the agents resolve the gateways from a static list
(one loopback address cannot have two DNS records with two ports) and the gateways decide after 5 s instead of
120 s (``decision_wait``).

Checked on the central one: both hosts arrive with their labels; every dashboard query returns data for
each host when the dashboard's ``host`` variable selects it (and both hosts under "All" where the query
keeps the host label); the ``cluster``/``host`` variables list them; the rules evaluate; and a host whose
agent is killed becomes visible through LlamaTelemetryHostSilent's expression (its firing after the real
3 minutes is a promtool case in collector/alerts_test.yml).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest

from prom_helpers import RunningPrometheus, run_prometheus
from stack_helpers import (COLLECTOR, needs_a_condition, HEALTH, JAEGER_QUERY, OTLP_GRPC, OTLP_HTTP, PROM_EXPORTER, ROOT, SELF_METRICS,
                           RunningOtel, alert_rules, dashboard_queries_for, jaeger_in, load_yaml,
                           recording_rule_files, run_otel, span_tags, split_top_level, stack_binaries,
                           strip_threshold, variable_queries)
from stack_host import (COLLECTOR_JOB, COLLECTOR_SELF_JOB, HI, MODEL, TARGET, MonitoredHost, monitored_host,
                        series_hosts, traced_client)

DEPLOY = ROOT / "deploy"
CLUSTER = "lab"
HOSTS = ("host-a", "host-b")


def agent_config(scrape_targets: dict[str, list[str]], central_url: str) -> dict[str, Any]:
    """deploy/prometheus-agent.yml with this host's loopback targets, the central URL and 1 s intervals.

    Every job the test runs must exist in the shipped file, and every shipped job must be run.
    """
    config = load_yaml(DEPLOY / "prometheus-agent.yml")
    assert "rule_files" not in config and "alerting" not in config, "an agent evaluates no rules"
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    shipped = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(scrape_targets) == set(shipped), f"jobs run vs deploy/prometheus-agent.yml: {set(scrape_targets) ^ set(shipped)}"
    config["scrape_configs"] = []
    for name, targets in scrape_targets.items():
        job = dict(shipped[name])
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": targets}]
        config["scrape_configs"].append(job)
    [remote] = config["remote_write"]
    remote["url"] = central_url + "/api/v1/write"
    remote["queue_config"]["batch_send_deadline"] = "1s"
    return config


def central_config() -> dict[str, Any]:
    config = load_yaml(DEPLOY / "prometheus-central.yml")
    rule_files = {(DEPLOY / f).resolve() for f in config["rule_files"]}
    assert (COLLECTOR / "alerts.yml").resolve() in rule_files and (COLLECTOR / "recording_rules.yml").resolve() in rule_files
    config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"] = []  # only itself in production; its port is not known before it starts
    return config


@dataclass
class Host:
    name: str
    monitored: MonitoredHost
    agent: RunningPrometheus
    collector: RunningOtel


@dataclass
class Fleet:
    central: RunningPrometheus
    hosts: list[Host]
    gateways: list[RunningOtel]
    jaegers: list[RunningOtel]


GATEWAYS = 2
DECISION_WAIT_S = 5


def _gateway_for_test(config: dict[str, Any], workdir: Any) -> None:
    """Decide 5 s after a trace's first span instead of 120 s: the test cannot wait minutes per trace."""
    config["processors"]["tail_sampling"]["decision_wait"] = f"{DECISION_WAIT_S}s"


def _agent_for_test(gateways: list[str]) -> Any:
    def edit(config: dict[str, Any], workdir: Any) -> None:
        """The same hash ring over a static list: two gateways on one loopback address differ only by port, which
        DNS records cannot express."""
        resolver = config["exporters"]["loadbalancing"]["resolver"]
        assert set(resolver) == {"dns"}
        config["exporters"]["loadbalancing"]["resolver"] = {"static": {"hostnames": gateways}}
    return edit


@pytest.fixture(scope="module")
def fleet(llama_server_factory: Any) -> Iterator[Fleet]:
    binaries = stack_binaries()
    with contextlib.ExitStack() as stack:
        central = stack.enter_context(run_prometheus(
            central_config(), [COLLECTOR / "alerts.yml", *recording_rule_files()],
            extra_args=["--web.enable-remote-write-receiver"]))
        jaegers, gateways = [], []
        for i in range(GATEWAYS):
            jaeger = stack.enter_context(run_otel(f"jaeger-{i}", binaries.jaeger, load_yaml(COLLECTOR / "jaeger.yaml"), edit=jaeger_in,
                                                  ready=[(SELF_METRICS, "/metrics"), (JAEGER_QUERY, "/api/services")]))
            gateway = stack.enter_context(run_otel(f"gateway-{i}", binaries.otelcol, load_yaml(DEPLOY / "otel-gateway.yaml"),
                                                   env={"JAEGER_OTLP_ENDPOINT": jaeger.addr(OTLP_GRPC)}, edit=_gateway_for_test,
                                                   ready=[(HEALTH, "/"), (SELF_METRICS, "/metrics")]))
            jaegers.append(jaeger)
            gateways.append(gateway)
        hosts = []
        for name in HOSTS:
            collector = stack.enter_context(run_otel(f"agent-{name}", binaries.otelcol, load_yaml(DEPLOY / "otel-agent.yaml"),
                                                     env={"LLAMATELEMETRY_HOST": name, "OTEL_GATEWAY_DNS": "unused"},
                                                     edit=_agent_for_test([g.addr(OTLP_GRPC) for g in gateways]),
                                                     ready=[(HEALTH, "/"), (SELF_METRICS, "/metrics")]))
            server = llama_server_factory("--metrics", parallel=2)
            monitored = stack.enter_context(monitored_host(server, otlp_endpoint=collector.url(OTLP_HTTP), service_name="fleet-app",
                                                           workers=1, pause=0.1))
            targets = {**monitored.scrape_targets, COLLECTOR_JOB: [collector.addr(PROM_EXPORTER)],
                       COLLECTOR_SELF_JOB: [collector.addr(SELF_METRICS)]}
            agent = stack.enter_context(run_prometheus(
                agent_config(targets, central.url), agent=True,
                env={"LLAMATELEMETRY_HOST": name, "LLAMATELEMETRY_CLUSTER": CLUSTER}))
            hosts.append(Host(name, monitored, agent, collector))
        for host in hosts:
            sel = f'host="{host.name}", cluster="{CLUSTER}"'
            central.wait_for(f'count_over_time(llamacpp_tokens_predicted_total{{{sel}, target="{TARGET}"}}[1m]) >= 4', timeout=60)
            central.wait_for(f'count_over_time(gen_ai_client_operation_duration_seconds_count{{{sel}}}[1m]) >= 4', timeout=60)
            central.wait_for(f'rate(llamacpp_tokens_predicted_total{{{sel}}}[1m]) > 0', timeout=30)
        for host in hosts:
            host.monitored.check()
        yield Fleet(central, hosts, gateways, jaegers)


def test_shipped_configs_pass_promtool() -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    for name in ("prometheus-agent.yml", "prometheus-central.yml"):
        proc = subprocess.run([promtool, "check", "config", str(DEPLOY / name)], capture_output=True, text=True, timeout=60,
                              env={"LLAMATELEMETRY_HOST": "h", "LLAMATELEMETRY_CLUSTER": "c", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_commands_are_the_ones_tested() -> None:
    """README's "Scaling out" starts the agents and the central Prometheus with exactly the flags used here."""
    from prom_helpers import agent_mode_flags, prometheus_binary

    readme = (ROOT / "README.md").read_text()
    binary = prometheus_binary()
    assert binary
    agent = f"prometheus {' '.join(agent_mode_flags(binary))} --config.file=deploy/prometheus-agent.yml"
    assert agent in readme, agent
    assert "prometheus --config.file=deploy/prometheus-central.yml --web.enable-remote-write-receiver" in readme
    assert "export LLAMATELEMETRY_HOST=" in readme and " LLAMATELEMETRY_CLUSTER=" in readme


def test_agents_run_in_agent_mode(fleet: Fleet) -> None:
    """An agent has no query engine: its query API answers with an error, the central one has the data."""
    for host in fleet.hosts:
        resp = httpx.get(host.agent.url + "/api/v1/query", params={"query": "up"}, timeout=5)
        assert resp.status_code != 200 or resp.json().get("status") != "success", "the agent answered a query: not in agent mode"


def test_each_host_arrives_with_its_external_labels(fleet: Fleet) -> None:
    for host in fleet.hosts:
        jobs = {s["metric"]["job"] for s in fleet.central.query(f'up{{cluster="{CLUSTER}", host="{host.name}"}} == 1')}
        assert set(host.monitored.scrape_targets) <= jobs, (host.name, jobs)
    # the two hosts' identical target names stay apart
    result = fleet.central.query(f'llamatelemetry_target_up{{target="{TARGET}", cluster="{CLUSTER}"}}')
    assert series_hosts(result) == set(HOSTS), result


QUERIES = dashboard_queries_for(host="HOST", cluster=CLUSTER)


@pytest.mark.parametrize("dashboard,title,expr", [pytest.param(d, t, e, id=f"{d}:{t}:{i}")
                                                  for i, (d, t, e) in enumerate(QUERIES)])
def test_dashboard_query_returns_per_host_data(fleet: Fleet, dashboard: str, title: str, expr: str) -> None:
    if needs_a_condition(expr) is not None:
        fleet.central.query(expr)  # must evaluate; its data needs a condition the fleet does not produce
        return
    for host in HOSTS:
        result = fleet.central.query(expr.replace('"HOST"', f'"{host}"'))
        assert result, f"{dashboard} {title!r} has no data for host {host}: {expr}"
        if "by (cluster, host" in expr:
            assert series_hosts(result) == {host}, (dashboard, title, series_hosts(result))
    # "All" hosts: queries that keep the host label show both hosts side by side
    everything = fleet.central.query(expr.replace('host=~"HOST"', 'host=~".*"'))
    assert everything
    if "by (cluster, host" in expr:
        assert series_hosts(everything) == set(HOSTS), (dashboard, title, series_hosts(everything))


@pytest.mark.parametrize("dashboard,name,metric,label", [pytest.param(*v, id=str(v)) for v in variable_queries()])
def test_dashboard_variables_resolve_on_the_central_prometheus(fleet: Fleet, dashboard: str, name: str, metric: str, label: str) -> None:
    values = {s["metric"].get(label) for s in fleet.central.query(metric)} - {None, ""}
    if needs_a_condition(metric) is not None:
        return  # e.g. a router's models: the fleet runs none
    assert values, f"{dashboard} ${name}: label_values({metric}, {label}) is empty"
    if name == "host":
        assert set(HOSTS) <= values
    if name == "cluster":
        assert CLUSTER in values


def test_rules_evaluate_on_the_central_prometheus(fleet: Fleet) -> None:
    deadline = time.monotonic() + 10
    while True:
        groups = httpx.get(fleet.central.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules):
            break
        assert time.monotonic() < deadline, "rules were not evaluated"
        time.sleep(0.5)
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {r["alert"] for r in alert_rules()}
    for r in rules:
        assert r["health"] == "ok", f"{r['name']}: {r.get('lastError')}"


# --- traces: load balancing by trace ID onto gateway collectors with tail sampling --------------------------------

def _stored_traces(jaeger: RunningOtel) -> dict[str, list[dict[str, Any]]]:
    """trace ID -> spans (each with its service name) of every trace one Jaeger holds."""
    base = jaeger.url(JAEGER_QUERY)
    services = httpx.get(base + "/api/services", timeout=10).json()["data"] or []
    out: dict[str, list[dict[str, Any]]] = {}
    for service in services:
        resp = httpx.get(base + "/api/traces", params={"service": service, "limit": 5000, "lookback": "1h"}, timeout=30)
        for trace in resp.json()["data"] or []:
            spans = out.setdefault(trace["traceID"], [])
            seen = {s["spanID"] for s in spans}
            for span in trace["spans"]:
                if span["spanID"] not in seen:
                    spans.append({**span, "service": trace["processes"][span["processID"]]["serviceName"]})
    return out


def _cross_host_calls(fleet: Fleet, calls: int) -> tuple[Any, set[str]]:
    """A client exporting to host-a's collector agent calls host-b's gateway (which exports to host-b's agent):
    the two spans of each trace reach the gateways through different agents. Every fourth call is refused by
    llama-server (context overflow): an error trace. Returns the client's finished spans and the error trace IDs."""
    import llamatelemetry
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    a, b = fleet.hosts
    assert b.monitored.proxy is not None, "the gateway (llamatelemetry.proxy) is part of this tree"
    providers = llamatelemetry.configure(service_name="fleet-cross", endpoint=a.collector.url(OTLP_HTTP), set_global=False)
    spans = InMemorySpanExporter()
    providers.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    client = traced_client(b.monitored.proxy.url, providers, max_retries=0)
    try:
        for i in range(calls):
            try:
                prompt = [{"role": "user", "content": "hi " * 3000}] if i % 4 == 3 else HI
                # 64 tokens: room for the scripted model's reasoning and answer (with fewer the answer would be
                # empty, a trace the empty-answers policy keeps)
                client.chat.completions.create(messages=prompt, model=MODEL, max_tokens=64)
            except Exception:  # noqa: BLE001 - the refused calls are the point
                pass
    finally:
        client.close()
        providers.shutdown()
    finished = spans.get_finished_spans()
    errors = {format(s.context.trace_id, "032x") for s in finished if s.status.status_code.name == "ERROR"}
    return finished, errors


@pytest.fixture(scope="module")
def traces(fleet: Fleet) -> dict[str, Any]:
    cross, cross_errors = _cross_host_calls(fleet, calls=40)
    # every error trace any client of the fleet ended by now (the hosts' own traffic fails every round too)
    errors = set(cross_errors)
    for host in fleet.hosts:
        errors |= {format(s.context.trace_id, "032x") for s in host.monitored.spans.get_finished_spans()
                   if s.status.status_code.name == "ERROR"}
    cutoff = time.monotonic()
    # decided DECISION_WAIT_S after their first span, then batched (5 s) by the gateway and by Jaeger
    deadline = cutoff + 60
    while True:
        stored = [_stored_traces(j) for j in fleet.jaegers]
        kept = set().union(*stored)
        if errors <= kept or time.monotonic() > deadline:
            break
        time.sleep(2)
    return {"stored": stored, "errors": errors, "cross": {format(s.context.trace_id, "032x") for s in cross},
            "cross_errors": cross_errors}


def test_every_trace_ends_on_exactly_one_gateway(traces: dict[str, Any]) -> None:
    first, second = (set(s) for s in traces["stored"])
    assert first and second, f"load balancing used one gateway only: {len(first)} / {len(second)} traces"
    assert not first & second, f"{len(first & second)} traces split across gateways"


def test_cross_host_traces_are_whole_on_one_gateway(traces: dict[str, Any]) -> None:
    """The client span (via host-a's agent) and the gateway's server span (via host-b's agent) of a kept trace
    are stored together, by the one gateway both agents chose for that trace ID."""
    whole = 0
    for stored in traces["stored"]:
        for trace_id in traces["cross"] & set(stored):
            services = {(s["service"], span_tags(s).get("span.kind")) for s in stored[trace_id]}
            assert {("fleet-cross", "client"), ("llamatelemetry-proxy", "server")} <= services, (trace_id, services)
            whole += 1
    assert whole >= len(traces["cross_errors"]) > 0, (whole, len(traces["cross_errors"]))


def test_tail_sampling_keeps_every_error_trace_and_drops_most_others(traces: dict[str, Any]) -> None:
    kept = set().union(*traces["stored"])
    missing = traces["errors"] - kept
    assert not missing, f"{len(missing)} of {len(traces['errors'])} error traces were dropped"
    # the cross-host successes are neither errors nor empty answers nor slow: the 10% baseline keeps few of them
    ok = traces["cross"] - traces["cross_errors"]
    assert len(ok) >= 20
    assert len(ok & kept) <= len(ok) // 2, f"{len(ok & kept)} of {len(ok)} ordinary traces kept: is tail sampling on?"


def test_collector_agents_report_host_name_and_their_own_metrics(fleet: Fleet) -> None:
    """The agents' self-telemetry reaches the central Prometheus per host, and their spans carry host.name."""
    for host in fleet.hosts:
        sel = f'host="{host.name}", cluster="{CLUSTER}", job="{COLLECTOR_SELF_JOB}"'
        fleet.central.wait_for(f"otelcol_receiver_accepted_spans{{{sel}}}", timeout=30)
    # Traces reach Jaeger after the gateways' tail-sampling decision wait: poll (the test may run first).
    deadline = time.monotonic() + 60
    while True:
        hosts_seen = set()
        for jaeger in fleet.jaegers:
            base = jaeger.url(JAEGER_QUERY)
            for trace in httpx.get(base + "/api/traces", params={"service": "fleet-app", "limit": 50}, timeout=10).json()["data"] or []:
                for process in trace["processes"].values():
                    hosts_seen |= {t["value"] for t in process["tags"] if t["key"] == "host.name"}
        if hosts_seen == set(HOSTS) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert hosts_seen == set(HOSTS), hosts_seen


def test_a_host_that_goes_away_is_visible(fleet: Fleet) -> None:
    """Kill a host's agent (the host is gone): LlamaTelemetryHostSilent's expression singles it out.

    The shipped rule waits 180 s (+ 2 m `for:`); here the same expression runs with a 5 s threshold. The host
    that goes away is a third one started here (host-a's targets, in a cluster of its own), so the fleet the
    other tests read stays whole whatever order the tests run in.
    """
    [rule] = [r for r in alert_rules() if r["alert"] == "LlamaTelemetryHostSilent"]
    [part] = split_top_level(rule["expr"])
    age_query = strip_threshold(part)
    fast_rule = re.sub(r">\s*[0-9.]+\s*$", "> 5", part.strip())
    assert fast_rule != part.strip()

    gone, everyone = "host-gone", {*HOSTS, "host-gone"}
    first = fleet.hosts[0]
    targets = {**first.monitored.scrape_targets, COLLECTOR_JOB: [first.collector.addr(PROM_EXPORTER)],
               COLLECTOR_SELF_JOB: [first.collector.addr(SELF_METRICS)]}
    with run_prometheus(agent_config(targets, fleet.central.url), agent=True,
                        env={"LLAMATELEMETRY_HOST": gone, "LLAMATELEMETRY_CLUSTER": "lab-gone"}) as agent:
        fleet.central.wait_for(f'count_over_time(llamatelemetry_target_up{{host="{gone}"}}[1m]) >= 2', timeout=45)
        ages = {s["metric"]["host"]: float(s["value"][1]) for s in fleet.central.query(age_query) if "host" in s["metric"]}
        assert everyone <= set(ages) and all(ages[h] < 5 for h in everyone), ages
        assert not [s for s in fleet.central.query(fast_rule) if s["metric"].get("host") in everyone]

        agent.process.kill()  # no clean shutdown, no staleness markers: like a host losing power
        agent.process.wait(timeout=10)
        silent = fleet.central.wait_for(fast_rule, lambda r: any(s["metric"].get("host") == gone for s in r), timeout=20)
        assert {s["metric"].get("host") for s in silent} & everyone == {gone}, silent
        ages = {s["metric"]["host"]: float(s["value"][1]) for s in fleet.central.query(age_query) if "host" in s["metric"]}
        assert ages[gone] > 5 > max(ages[h] for h in HOSTS), ages
