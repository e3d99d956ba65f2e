"""The OpenTelemetry Collector configs, checked by the real collector: the compose one
(collector/otel-collector.yaml), the fleet pair (deploy/otel-agent.yaml on every host, deploy/otel-gateway.yaml in
the middle) and Jaeger's (collector/jaeger.yaml, Jaeger v2 being a collector distribution).

The binaries come from scripts/build-stack.sh (our collector built from the official Go modules at the release in
stack/versions.env, and Jaeger v2 from its module); the test fails, never skips, when they cannot be built.

* ``otelcol validate`` / ``jaeger validate`` accept every config (components exist in the build, every key is
  known, every pipeline reference resolves);
* the build contains exactly the components the configs use (stack/otelcol-builder.yaml is the one list);
* ports and trace routing agree between the agent, the gateway and the per-host Prometheus agent;
* the otelcol_* metric names the alerts use are ones the running collector serves.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack_helpers import (COLLECTOR, HEALTH, OTLP_HTTP, ROOT, SELF_METRICS, STACK, load_yaml, run_otel,
                           stack_binaries)

DEPLOY = ROOT / "deploy"
CONFIGS = [COLLECTOR / "otel-collector.yaml", DEPLOY / "otel-agent.yaml", DEPLOY / "otel-gateway.yaml"]
#: What the ${env:...} placeholders of the fleet configs name in production; any value passes validation.
FLEET_ENV = {"OTEL_GATEWAY_DNS": "otel-gateway.example", "JAEGER_OTLP_ENDPOINT": "jaeger.example:4317",
             "LLAMATELEMETRY_HOST": "host-a"}
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")


def _validate(binary: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), "validate", f"--config={config}"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **FLEET_ENV})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_otelcol_validate_accepts_every_collector_config(path: Path) -> None:
    proc = _validate(stack_binaries().otelcol, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_jaeger_validate_accepts_its_config() -> None:
    proc = _validate(stack_binaries().jaeger, COLLECTOR / "jaeger.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: an unknown key and an unknown component are refused."""
    cfg = load_yaml(COLLECTOR / "otel-collector.yaml")
    cfg["processors"]["batch"]["send_batch_sise"] = 1
    broken = tmp_path / "broken.yaml"
    import yaml

    broken.write_text(yaml.safe_dump(cfg))
    proc = _validate(stack_binaries().otelcol, broken)
    assert proc.returncode != 0 and "send_batch_sise" in proc.stdout + proc.stderr
    cfg = load_yaml(COLLECTOR / "otel-collector.yaml")
    cfg["exporters"]["kafka"] = {}
    cfg["service"]["pipelines"]["traces"]["exporters"].append("kafka")
    broken.write_text(yaml.safe_dump(cfg))
    proc = _validate(stack_binaries().otelcol, broken)
    assert proc.returncode != 0 and "kafka" in proc.stdout + proc.stderr


def _components_of_build() -> dict[str, set[str]]:
    """kind -> component type names (and their deprecated aliases) the built collector lists."""
    import yaml

    out = subprocess.run([str(stack_binaries().otelcol), "components"], capture_output=True, text=True, timeout=60, check=True).stdout
    listed = yaml.safe_load(out)
    return {kind: {c["name"] for c in listed.get(kind) or []} for kind in KINDS}


#: Components renamed upstream whose old name our configs keep: the build accepts both (deprecated alias), and
#: otelcol-contrib images of older releases know only the old one.
ALIASES = {"otlp": "otlp_grpc", "loadbalancing": "load_balancing"}


def test_the_build_has_exactly_the_components_the_configs_use() -> None:
    """stack/otelcol-builder.yaml lists no component that no config uses, and misses none."""
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for path in CONFIGS:
        cfg = load_yaml(path)
        for kind in KINDS:
            types = {name.split("/", 1)[0] for name in cfg.get(kind) or {}}
            used[kind] |= {ALIASES.get(t, t) for t in types} if kind == "exporters" else types
    built = _components_of_build()
    # debug is in the build on purpose: `exporters: [debug]` is how one looks at data while fixing a pipeline.
    assert {k: v for k, v in built.items()} == {k: v | ({"debug"} if k == "exporters" else set()) for k, v in used.items()}
    manifest = (STACK / "otelcol-builder.yaml").read_text()
    assert manifest.count("gomod:") == sum(len(v) for v in built.values()) + 3 + 1  # + 3 providers + telemetry


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_pipelines_start_with_the_memory_limiter_and_end_with_batch(path: Path) -> None:
    for name, pipe in load_yaml(path)["service"]["pipelines"].items():
        assert pipe["processors"][0] == "memory_limiter" and pipe["processors"][-1] == "batch", name


def test_env_placeholders_use_the_env_provider_syntax() -> None:
    for path in CONFIGS:
        text = path.read_text()
        for m in re.finditer(r"\$\{([^}]*)\}", text):
            assert re.fullmatch(r"env:[A-Z_][A-Z0-9_]*(:-[^}]*)?", m.group(1)), f"{path.name}: {m.group(0)}"


def test_agent_routes_whole_traces_to_one_gateway_replica() -> None:
    """Tail sampling needs every span of a trace on the same replica: the agent's loadbalancing exporter hashes
    the trace ID onto the gateway replicas, on the port the gateway's OTLP receiver listens on.
    (tests/test_fleet.py shows it happening with two agents and two gateways.)"""
    agent, gateway = load_yaml(DEPLOY / "otel-agent.yaml"), load_yaml(DEPLOY / "otel-gateway.yaml")
    assert "tail_sampling" in gateway["service"]["pipelines"]["traces"]["processors"]
    assert agent["service"]["pipelines"]["traces"]["exporters"] == ["loadbalancing"]
    lb = agent["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    assert "endpoint" not in lb["protocol"]["otlp"], "the resolver sets each backend's endpoint"
    gateway_port = gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1]
    assert lb["resolver"]["dns"]["port"] == gateway_port
    [empty] = [p for p in gateway["processors"]["tail_sampling"]["policies"] if p["type"] == "boolean_attribute"]
    attribute = empty["boolean_attribute"]["key"]
    sources = " ".join(p.read_text() for p in (ROOT / "llamatelemetry").rglob("*.py"))
    assert f'"{attribute}"' in sources, f"no llamatelemetry code sets span attribute {attribute}"
    wait = gateway["processors"]["tail_sampling"]["decision_wait"]
    assert wait.endswith("s") and int(wait[:-1]) >= 60


def _with_env_defaults(path: Path) -> Any:
    """A config as the collector reads it when no variable with a default (``${env:NAME:-default}``) is set."""
    import yaml

    return yaml.safe_load(re.sub(r"\$\{env:[A-Z_][A-Z0-9_]*:-([^}]*)\}", r"\1", path.read_text()))


def test_agent_ports_match_the_prometheus_agent() -> None:
    """The host's Prometheus agent scrapes the collector agent's client metrics and its own telemetry."""
    agent = _with_env_defaults(DEPLOY / "otel-agent.yaml")  # bare host: OTEL_AGENT_BIND unset
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in load_yaml(DEPLOY / "prometheus-agent.yml")["scrape_configs"]}
    assert jobs["otel-collector"] == [agent["exporters"]["prometheus"]["endpoint"]]
    prom = agent["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert jobs["otel-collector-self"] == [f"{prom['host']}:{prom['port']}"]
    # on a host, everything binds loopback: applications and the Prometheus agent are local
    for receiver in agent["receivers"]["otlp"]["protocols"].values():
        assert receiver["endpoint"].startswith("127.0.0.1:")
    assert agent["service"]["pipelines"]["metrics"]["exporters"] == ["prometheus"]


def test_alerts_use_otelcol_metric_names_the_collector_serves() -> None:
    """Run the compose collector config, make every counter the alerts watch move (a span and a metric point in,
    the trace backend unreachable so exports fail), and read the names off its own /metrics."""
    import llamatelemetry

    exprs = " ".join(r["expr"] for g in load_yaml(COLLECTOR / "alerts.yml")["groups"] for r in g["rules"])
    used = set(re.findall(r"\botelcol_[a-z_]+", exprs))
    assert used, "no alert watches the collector's own metrics"
    cfg: dict[str, Any] = load_yaml(COLLECTOR / "otel-collector.yaml")
    # the trace exporter gives up after 1 s instead of 60 s, so a failed send is counted within the test
    cfg["exporters"]["otlp/jaeger"]["retry_on_failure"].update(initial_interval="100ms", max_interval="500ms", max_elapsed_time="1s")
    with run_otel("collector", stack_binaries().otelcol, cfg, hosts={"jaeger:4317": "127.0.0.1:9"},
                  ready=[(HEALTH, "/"), (SELF_METRICS, "/metrics")]) as collector:
        providers = llamatelemetry.configure(service_name="names", endpoint=collector.url(OTLP_HTTP), set_global=False)
        with providers.tracer_provider.get_tracer("t").start_as_current_span("s"):
            pass
        providers.meter_provider.get_meter("m").create_counter("c").add(1)
        providers.shutdown()
        import time

        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(collector.url(SELF_METRICS) + "/metrics", timeout=5).text
            served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
            if "otelcol_exporter_send_failed_spans" in served or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    # A counter appears once it moved. The alerts also watch the same counters for the other signal (metric points
    # failing, a full queue refusing): those must belong to a family served here for some signal.
    families = {re.sub(r"_(spans|metric_points|log_records)$", "", name) for name in served}
    for name in sorted(used):
        family = re.sub(r"_(spans|metric_points|log_records)$", "", name)
        assert name in served or family in families or family == "otelcol_exporter_enqueue_failed", (name, sorted(served))
    assert {"otelcol_exporter_send_failed_spans", "otelcol_receiver_refused_spans", "otelcol_exporter_queue_size"} <= served


def test_binaries_are_the_pinned_releases() -> None:
    """The collector reports the release of stack/versions.env and is made of modules of that release; Jaeger
    reports the v2 release the images are tagged with and is made of the approved module version."""
    import json

    from stack_helpers import read_versions

    versions = read_versions()
    binaries = stack_binaries()
    out = subprocess.run([str(binaries.otelcol), "--version"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split()[-1] == versions["OTELCOL_VERSION"], out
    modules = subprocess.run(["go", "version", "-m", str(binaries.otelcol)], capture_output=True, text=True, timeout=60, check=True).stdout
    deps = dict(re.findall(r"^\tdep\t(\S+)\t(\S+)", modules, re.M))
    collector_modules = {m: v for m, v in deps.items() if m.startswith(("go.opentelemetry.io/collector/",
                                                                          "github.com/open-telemetry/opentelemetry-collector-contrib/"))}
    assert collector_modules
    for module, version in collector_modules.items():
        assert version in {f"v{versions['OTELCOL_VERSION']}", f"v{versions['OTELCOL_STABLE_VERSION']}"}, (module, version)
    out = subprocess.run([str(binaries.jaeger), "version"], capture_output=True, text=True, timeout=60, check=True)
    info = json.loads(re.search(r"\{.*\}", out.stdout + out.stderr).group(0))  # type: ignore[union-attr]
    assert info["gitVersion"] == f"v{versions['JAEGER_VERSION']}", info
    modules = subprocess.run(["go", "version", "-m", str(binaries.jaeger)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert re.search(rf"^\t(mod|dep)\tgithub.com/jaegertracing/jaeger\tv{re.escape(versions['JAEGER_MODULE_VERSION'])}\t",
                     modules, re.M), modules[:2000]
