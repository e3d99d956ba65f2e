"""Offline checks of the OpenTelemetry Collector configs: the compose one (collector/otel-collector.yaml) and the
fleet pair (deploy/otel-agent.yaml on every host, deploy/otel-gateway.yaml in the middle).

otelcol-contrib cannot run here (no binary from PyPI/Debian/npm), so the configs are checked as far as that
allows: they parse; every component is one that otelcol-contrib 0.115.0 (the image tag compose pins) ships;
every key used under a component is one of that component's configuration keys; every pipeline reference
resolves; ports and trace-routing agree between the agent, the gateway and the per-host Prometheus agent;
and the otelcol_* metric names the alerts use are the names 0.115.0 serves.

``OTELCOL_CONTRIB_0_115`` and ``CONFIG_KEYS`` were written from upstream sources: the distribution manifest
``distributions/otelcol-contrib/manifest.yaml`` of open-telemetry/opentelemetry-collector-releases at tag
v0.115.0, and the components' ``config.go`` (mapstructure tags) and ``documentation.md`` in
opentelemetry-collector (tag v0.115.0) and opentelemetry-collector-contrib. Only the components and keys these
configs use are listed; add a row (after checking upstream) when a config starts using another one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from stack_helpers import COLLECTOR, ROOT, load_yaml

DEPLOY = ROOT / "deploy"
CONFIGS = [COLLECTOR / "otel-collector.yaml", DEPLOY / "otel-agent.yaml", DEPLOY / "otel-gateway.yaml"]
PINNED_IMAGE = "otel/opentelemetry-collector-contrib:0.115.0"

#: kind -> component type -> Go module in the otelcol-contrib 0.115.0 manifest.
OTELCOL_CONTRIB_0_115 = {
    "receivers": {
        "otlp": "go.opentelemetry.io/collector/receiver/otlpreceiver",
        "prometheus": "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/prometheusreceiver",
        "hostmetrics": "github.com/open-telemetry/opentelemetry-collector-contrib/receiver/hostmetricsreceiver",
    },
    "processors": {
        "batch": "go.opentelemetry.io/collector/processor/batchprocessor",
        "memory_limiter": "go.opentelemetry.io/collector/processor/memorylimiterprocessor",
        "resourcedetection": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/resourcedetectionprocessor",
        "resource": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/resourceprocessor",
        "tail_sampling": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/tailsamplingprocessor",
        "k8sattributes": "github.com/open-telemetry/opentelemetry-collector-contrib/processor/k8sattributesprocessor",
    },
    "exporters": {
        "otlp": "go.opentelemetry.io/collector/exporter/otlpexporter",
        "otlphttp": "go.opentelemetry.io/collector/exporter/otlphttpexporter",
        "prometheus": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/prometheusexporter",
        "loadbalancing": "github.com/open-telemetry/opentelemetry-collector-contrib/exporter/loadbalancingexporter",
    },
    "extensions": {
        "health_check": "github.com/open-telemetry/opentelemetry-collector-contrib/extension/healthcheckextension",
    },
    "connectors": {},
}

_OTLP_CLIENT = {"endpoint", "tls", "timeout", "sending_queue", "retry_on_failure", "compression", "headers",
                "balancer_name", "keepalive", "auth", "wait_for_ready"}
#: kind/type -> nested key paths allowed (a trailing ``.*`` allows anything below, e.g. the OTLP client settings).
CONFIG_KEYS: dict[str, set[str]] = {
    "receivers/otlp": {"protocols", "protocols.grpc", "protocols.grpc.endpoint", "protocols.http", "protocols.http.endpoint"},
    "processors/memory_limiter": {"check_interval", "limit_mib", "spike_limit_mib", "limit_percentage", "spike_limit_percentage"},
    "processors/batch": {"send_batch_size", "send_batch_max_size", "timeout"},
    "processors/resourcedetection": {"detectors", "system", "system.hostname_sources", "timeout", "override"},
    "processors/tail_sampling": {"decision_wait", "num_traces", "expected_new_traces_per_sec", "policies"},
    "exporters/otlp": _OTLP_CLIENT | {"tls.insecure", "tls.ca_file", "sending_queue.enabled", "sending_queue.queue_size",
                                       "sending_queue.num_consumers", "retry_on_failure.enabled", "retry_on_failure.max_elapsed_time"},
    "exporters/prometheus": {"endpoint", "enable_open_metrics", "metric_expiration", "resource_to_telemetry_conversion",
                             "resource_to_telemetry_conversion.enabled", "namespace", "const_labels", "send_timestamps"},
    "exporters/loadbalancing": {"routing_key", "protocol", "protocol.otlp", "protocol.otlp.*", "resolver", "resolver.dns",
                                "resolver.dns.hostname", "resolver.dns.port", "resolver.k8s", "resolver.k8s.service",
                                "resolver.k8s.ports", "resolver.static", "resolver.static.hostnames"},
    "extensions/health_check": {"endpoint"},
}
#: tail_sampling policy types in 0.115.0 and the keys of each one's block.
TAIL_POLICIES = {"status_code": {"status_codes"}, "latency": {"threshold_ms", "upper_threshold_ms"},
                 "probabilistic": {"sampling_percentage", "hash_salt"}, "boolean_attribute": {"key", "value"},
                 "string_attribute": {"key", "values", "enabled_regex_matching", "cache_max_size", "invert_match"}}
#: Internal metrics of collector 0.115.0 (exporterhelper/receiverhelper documentation.md). Served without the
#: `_total` suffix: 0.115's internal Prometheus exporter is built WithoutCounterSuffixes.
OTELCOL_0_115_METRICS = {f"otelcol_{kind}_{what}_{signal}"
                         for kind, whats in (("receiver", ("accepted", "refused")), ("exporter", ("sent", "send_failed", "enqueue_failed")))
                         for what in whats for signal in ("spans", "metric_points", "log_records")}


def _key_paths(node: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= _key_paths(value, path + ".")
    return paths


def _allowed(path: str, allowed: set[str]) -> bool:
    return path in allowed or any(a.endswith(".*") and path.startswith(a[:-1]) for a in allowed)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_components_exist_in_otelcol_contrib_0_115(path: Path) -> None:
    cfg = load_yaml(path)
    for kind in ("receivers", "processors", "exporters", "extensions", "connectors"):
        for name, settings in (cfg.get(kind) or {}).items():
            ctype = name.split("/", 1)[0]
            assert ctype in OTELCOL_CONTRIB_0_115[kind], f"{path.name}: {kind} {ctype!r} is not in otelcol-contrib 0.115.0"
            allowed = CONFIG_KEYS.get(f"{kind}/{ctype}")
            assert allowed is not None, f"{path.name}: no verified key list for {kind}/{ctype}: check upstream, then add it"
            for key in sorted(_key_paths(settings or {})):
                assert _allowed(key, allowed), f"{path.name}: {kind} {name}: unknown key {key!r}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_pipelines_resolve_and_every_component_is_used(path: Path) -> None:
    cfg = load_yaml(path)
    service = cfg["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipe in service["pipelines"].items():
        assert name.split("/")[0] in {"traces", "metrics", "logs"}, name
        assert pipe["receivers"] and pipe["exporters"], name
        assert pipe["processors"][0] == "memory_limiter" and pipe["processors"][-1] == "batch", name
        for kind in used:
            for component in pipe.get(kind, []):
                assert component in (cfg.get(kind) or {}), f"{path.name} pipeline {name}: {kind} {component!r} is not defined"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(cfg.get(kind) or {}) == names, f"{path.name}: {kind} defined but unused: {set(cfg[kind]) - names}"
    assert set(service.get("extensions", [])) == set(cfg.get("extensions") or {})
    # internal telemetry: the 0.115 `readers` form (metrics.address is deprecated since 0.111)
    [reader] = service["telemetry"]["metrics"]["readers"]
    prom = reader["pull"]["exporter"]["prometheus"]
    assert set(prom) == {"host", "port"}
    assert "address" not in service["telemetry"]["metrics"]


def test_env_placeholders_use_the_env_provider_syntax() -> None:
    for path in CONFIGS:
        text = path.read_text()
        for m in re.finditer(r"\$\{([^}]*)\}", text):
            assert re.fullmatch(r"env:[A-Z_][A-Z0-9_]*(:-[^}]*)?", m.group(1)), f"{path.name}: {m.group(0)}"


def test_compose_pins_the_version_the_tables_describe() -> None:
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    assert services["collector"]["image"] == PINNED_IMAGE


def test_agent_routes_whole_traces_to_one_gateway_replica() -> None:
    """Tail sampling needs every span of a trace on the same replica: the agent's loadbalancing exporter hashes
    the trace ID onto the gateway replicas, on the port the gateway's OTLP receiver listens on."""
    agent, gateway = load_yaml(DEPLOY / "otel-agent.yaml"), load_yaml(DEPLOY / "otel-gateway.yaml")
    assert "tail_sampling" in gateway["service"]["pipelines"]["traces"]["processors"]
    assert agent["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    lb = agent["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert "endpoint" not in lb["protocol"]["otlp"], "the resolver sets each backend's endpoint"
    gateway_port = gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    assert lb["resolver"]["dns"]["port"] == gateway_port
    # the gateway keeps what matters for LLM traffic, decided late enough for minutes-long generations
    policies = gateway["processors"]["tail_sampling"]["policies"]
    for policy in policies:
        assert policy["type"] in TAIL_POLICIES, policy
        assert set(policy[policy["type"]]) <= TAIL_POLICIES[policy["type"]], policy
    kinds = {p["type"] for p in policies}
    assert {"status_code", "boolean_attribute", "probabilistic"} <= kinds
    [empty] = [p for p in policies if p["type"] == "boolean_attribute"]
    attribute = empty["boolean_attribute"]["key"]
    sources = " ".join(p.read_text() for p in (ROOT / "llamatelemetry").rglob("*.py"))
    assert f'"{attribute}"' in sources, f"no llamatelemetry code sets span attribute {attribute}"
    wait = gateway["processors"]["tail_sampling"]["decision_wait"]
    assert wait.endswith("s") and int(wait[:-1]) >= 60


def test_agent_ports_match_the_prometheus_agent() -> None:
    """The host's Prometheus agent scrapes the collector agent's client metrics and its own telemetry."""
    agent = load_yaml(DEPLOY / "otel-agent.yaml")
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in load_yaml(DEPLOY / "prometheus-agent.yml")["scrape_configs"]}
    assert jobs["otel-collector"] == [agent["exporters"]["prometheus"]["endpoint"]]
    prom = agent["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert jobs["otel-collector-self"] == [f"{prom['host']}:{prom['port']}"]
    # on a host, everything binds loopback: applications and the Prometheus agent are local
    for receiver in agent["receivers"]["otlp"]["protocols"].values():
        assert receiver["endpoint"].startswith("127.0.0.1:")
    assert agent["service"]["pipelines"]["metrics"]["exporters"] == ["prometheus"]


def test_alerts_use_otelcol_metric_names_of_0_115() -> None:
    exprs = " ".join(r["expr"] for g in load_yaml(COLLECTOR / "alerts.yml")["groups"] for r in g["rules"])
    used = set(re.findall(r"\botelcol_[a-z_]+", exprs))
    assert used, "no alert watches the collector's own metrics"
    assert used <= OTELCOL_0_115_METRICS, used - OTELCOL_0_115_METRICS
