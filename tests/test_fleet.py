"""Fleet metrics, for real: two "hosts" remote-writing into one central Prometheus.

Each host is a real llama-server, the real exporter (fake NVML for GPU series), real client telemetry under
traffic (and the real proxy once it is in the tree: tests/stack_host.py), scraped by a real Prometheus in
*agent mode* running the shipped deploy/prometheus-agent.yml — only the scrape targets (loopback ports),
the remote-write URL and the intervals (1 s instead of 10-15 s) are changed for the test. The agents'
``external_labels`` come from the environment (``LLAMATELEMETRY_HOST``/``LLAMATELEMETRY_CLUSTER``), as in
production. The central Prometheus runs deploy/prometheus-central.yml with its remote-write receiver and
the shipped alert (and recording) rules.

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
from stack_helpers import (COLLECTOR, ROOT, alert_rules, dashboard_queries_for, load_yaml,
                           recording_rule_files, split_top_level, strip_threshold, variable_queries)
from stack_host import TARGET, MonitoredHost, monitored_host, series_hosts

DEPLOY = ROOT / "deploy"
CLUSTER = "lab"
HOSTS = ("host-a", "host-b")


def agent_config(scrape_targets: dict[str, list[str]], central_url: str) -> dict[str, Any]:
    """deploy/prometheus-agent.yml with this host's loopback targets, the central URL and 1 s intervals.

    Jobs whose process this test does not run (the collector's self-telemetry) are left out; every job the
    test runs must exist in the shipped file.
    """
    config = load_yaml(DEPLOY / "prometheus-agent.yml")
    assert "rule_files" not in config and "alerting" not in config, "an agent evaluates no rules"
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    shipped = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(scrape_targets) <= set(shipped), f"jobs missing from deploy/prometheus-agent.yml: {set(scrape_targets) - set(shipped)}"
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


@dataclass
class Fleet:
    central: RunningPrometheus
    hosts: list[Host]


@pytest.fixture(scope="module")
def fleet(llama_server_factory: Any) -> Iterator[Fleet]:
    with contextlib.ExitStack() as stack:
        central = stack.enter_context(run_prometheus(
            central_config(), [COLLECTOR / "alerts.yml", *recording_rule_files()],
            extra_args=["--web.enable-remote-write-receiver"]))
        hosts = []
        for name in HOSTS:
            server = llama_server_factory("--metrics", parallel=2)
            monitored = stack.enter_context(monitored_host(server, service_name="fleet-app", workers=1, pause=0.1))
            agent = stack.enter_context(run_prometheus(
                agent_config(monitored.scrape_targets, central.url), agent=True,
                env={"LLAMATELEMETRY_HOST": name, "LLAMATELEMETRY_CLUSTER": CLUSTER}))
            hosts.append(Host(name, monitored, agent))
        for host in hosts:
            sel = f'host="{host.name}", cluster="{CLUSTER}"'
            central.wait_for(f'count_over_time(llamacpp_tokens_predicted_total{{{sel}, target="{TARGET}"}}[1m]) >= 4', timeout=45)
            central.wait_for(f'count_over_time(gen_ai_client_operation_duration_seconds_count{{{sel}}}[1m]) >= 4', timeout=30)
            central.wait_for(f'rate(llamacpp_tokens_predicted_total{{{sel}}}[1m]) > 0', timeout=20)
        for host in hosts:
            host.monitored.check()
        yield Fleet(central, hosts)


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
    with run_prometheus(agent_config(fleet.hosts[0].monitored.scrape_targets, fleet.central.url), agent=True,
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
