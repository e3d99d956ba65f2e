"""Helpers for the monitoring-stack tests (tests/test_stack*.py): repository paths, YAML loading,
and PromQL extraction from the dashboards and alert rules."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
COLLECTOR = ROOT / "collector"
DASHBOARDS = ROOT / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))

#: Values substituted for Grafana's built-in variables before a query is sent to Prometheus.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__from": "0", "__to": "0",
                     "__range_s": "300"}

#: Trailing threshold comparison of an alert expression (see the convention in collector/alerts.yml).
_THRESHOLD_RE = re.compile(r"^(?P<query>.*?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?[0-9][0-9.e+-]*)\s*$", re.S)
_VAR_RE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]+)(?::[a-z]+)?\}|(?P<plain>[A-Za-z0-9_]+))")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def datasource_uids() -> dict[str, str]:
    """uid -> type of every provisioned datasource."""
    uids: dict[str, str] = {}
    for path in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for ds in load_yaml(path).get("datasources", []):
            uids[ds["uid"]] = ds["type"]
    return uids


def prometheus_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query a dashboard sends to a Prometheus datasource."""
    prom = {uid for uid, kind in datasource_uids().items() if kind == "prometheus"}
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("uid") in prom:
                yield panel, target


def variables_used(text: str) -> set[str]:
    return {m.group("braced") or m.group("plain") for m in _VAR_RE.finditer(text)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$var`` / ``${var}`` by ``values[var]`` (built-ins included); unknown names raise KeyError."""
    merged = {**BUILTIN_VARIABLES, **values}

    def repl(m: re.Match[str]) -> str:
        return merged[m.group("braced") or m.group("plain")]

    return _VAR_RE.sub(repl, expr)


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(COLLECTOR / "alerts.yml")["groups"]:
        rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def split_top_level(expr: str) -> list[str]:
    """Split a PromQL expression at top-level ``and`` / ``or`` / ``unless`` (outside parentheses/braces)."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            m = re.match(r"(?<![A-Za-z0-9_])(and|or|unless)(?![A-Za-z0-9_])(\s+on\s*\([^)]*\))?", expr[i:])
            if m and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_")):
                parts.append(expr[start:i])
                i += m.end()
                start = i
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def alert_query_parts(expr: str) -> list[str]:
    """Each top-level part of an alert expression with its trailing ``<comparison> <number>`` removed."""
    return [strip_threshold(part) for part in split_top_level(expr)]


def strip_threshold(expr: str) -> str:
    """``<query> <op> <number>`` -> ``<query>``; raises ValueError when the rule does not follow the convention."""
    m = _THRESHOLD_RE.match(expr.strip())
    if not m:
        raise ValueError(f"alert expression is not '<query> <comparison> <number>': {expr!r}")
    return m.group("query")


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression with variables substituted) for every Prometheus query."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARD_FILES:
        board = load_dashboard(path)
        all_values = {v["name"]: v.get("allValue") or ".*" for v in board["templating"]["list"]}
        for panel, target in prometheus_targets(board):
            out.append((path.name, panel["title"], substitute(target["expr"], all_values)))
    return out


def dashboard_queries_for(**values: str) -> list[tuple[str, str, str]]:
    """Like :func:`dashboard_queries`, with some variables set to ``values`` instead of "All"."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARD_FILES:
        board = load_dashboard(path)
        chosen = {v["name"]: v.get("allValue") or ".*" for v in board["templating"]["list"]}
        chosen.update(values)
        for panel, target in prometheus_targets(board):
            out.append((path.name, panel["title"], substitute(target["expr"], chosen)))
    return out


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, variable name, metric selector, label) for every ``label_values`` variable."""
    out = []
    for path in DASHBOARD_FILES:
        for var in load_dashboard(path)["templating"]["list"]:
            if var["type"] != "query":
                continue
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((?P<metric>.+),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
            assert m, f"{path.name} ${var['name']}: unsupported variable query {query!r}"
            out.append((path.name, var["name"], m.group("metric"), m.group("label")))
    return out


def recording_rule_files() -> list[Path]:
    """The recording rule files Prometheus loads next to alerts.yml (collector/prometheus.yml's glob)."""
    return [path for path in sorted(COLLECTOR.glob("recording_rules*.yml")) if not path.name.endswith("_test.yml")]


# --- the Go-built parts: our collector and Jaeger v2 (scripts/build-stack.sh) ---------------------------------

STACK = ROOT / "stack"
BUILD_SCRIPT = ROOT / "scripts" / "build-stack.sh"
#: Where a compose service name in a shipped config stands for a process the test starts on loopback.
_ENDPOINT_RE = re.compile(r"^(?P<host>0\.0\.0\.0|127\.0\.0\.1|localhost|\[::\]|\$\{env:[A-Z_]+:-[a-z0-9.]+\}):(?P<port>\d+)$")


def read_versions() -> dict[str, str]:
    """stack/versions.env as a dict (the same parser the build script uses)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_build", STACK / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    versions: dict[str, str] = module.read_versions()
    return versions


@dataclass(frozen=True)
class StackBinaries:
    otelcol: Path
    jaeger: Path


_BINARIES: list[StackBinaries] = []


def stack_binaries() -> StackBinaries:
    """Build or reuse both binaries through scripts/build-stack.sh (once per test session).

    Never skips: without a Go toolchain the script fails with a message saying how to get one, and so does
    the test that needs the binaries.
    """
    if not _BINARIES:
        proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/build-stack.sh failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
        lines = proc.stdout.split()
        assert len(lines) == 2, proc.stdout
        _BINARIES.append(StackBinaries(Path(lines[0]), Path(lines[1])))
    return _BINARIES[0]


def relocate_ports(config: dict[str, Any], hosts: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[int, int]]:
    """A copy of a collector config whose listening ports are free loopback ports, and ``{shipped port: new}``.

    Every ``endpoint: <any-address>:<port>`` and every internal-telemetry ``pull`` reader moves to
    ``127.0.0.1:<free port>`` (one free port per shipped port, so two settings sharing a port keep sharing
    it); ``hosts`` maps the shipped address of another service (``jaeger:4317``) to where the test runs it.
    Nothing else changes.
    """
    from llamatelemetry.provision.server import free_port

    hosts = hosts or {}
    moved: dict[int, int] = {}

    def new_port(port: int) -> int:
        if port not in moved:
            moved[port] = free_port()
        return moved[port]

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            if set(node) >= {"host", "port"} and key == "prometheus":  # service.telemetry.metrics.readers[].pull
                return {**node, "host": "127.0.0.1", "port": new_port(int(node["port"]))}
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if key == "endpoint" and isinstance(node, str):
            if node in hosts:
                return hosts[node]
            m = _ENDPOINT_RE.match(node)
            if m:
                return f"127.0.0.1:{new_port(int(m.group('port')))}"
        return node

    return walk(config), moved


@dataclass
class RunningOtel:
    """A collector-style process (our otelcol build or Jaeger v2) running a config with relocated ports.

    ``port(shipped)`` gives the loopback port that replaced a port of the shipped config. ``stop()`` and
    ``start()`` let a fault test take it away and bring it back on the same ports.
    """

    name: str
    binary: Path
    config: dict[str, Any]
    ports: dict[int, int]
    workdir: Path
    ready_paths: list[tuple[int, str]]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def port(self, shipped: int) -> int:
        return self.ports[shipped]

    def addr(self, shipped: int) -> str:
        return f"127.0.0.1:{self.ports[shipped]}"

    def url(self, shipped: int) -> str:
        return f"http://{self.addr(shipped)}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self, timeout: float = 60.0) -> None:
        import httpx

        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(self.binary), f"--config={config_path}"], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        pending = list(self.ready_paths)
        while pending:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            shipped, path = pending[0]
            try:
                if httpx.get(f"{self.url(shipped)}{path}", timeout=2).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s ({shipped}{path}):\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown that flushes) or SIGKILL (a crash, a lost host)."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def run_otel(name: str, binary: Path, shipped_config: dict[str, Any], *, hosts: dict[str, str] | None = None,
             ready: Sequence[tuple[int, str]] = (), env: dict[str, str] | None = None,
             edit: Callable[[dict[str, Any], Path], None] | None = None) -> Iterator[RunningOtel]:
    """Run ``binary --config=<shipped_config with relocated ports>`` until the ``with`` block ends.

    ``ready``: (shipped port, path) pairs that must answer 200 before the block starts. ``edit(config,
    workdir)`` may change the relocated config in place (say, a data directory) — each use says why.
    """
    config, ports = relocate_ports(shipped_config, hosts)
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    if edit is not None:
        edit(config, workdir)
    service = RunningOtel(name, binary, config, ports, workdir, list(ready), dict(env or {}))
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def jaeger_in(config: dict[str, Any], workdir: Path) -> None:
    """``edit`` for collector/jaeger.yaml: Badger's directories inside the test's temporary directory."""
    for backend in config["extensions"]["jaeger_storage"]["backends"].values():
        if "badger" in backend:
            backend["badger"]["directories"] = {"keys": str(workdir / "keys"), "values": str(workdir / "values")}


#: Ports of the shipped configs the tests talk to.
OTLP_GRPC, OTLP_HTTP, PROM_EXPORTER, SELF_METRICS, HEALTH = 4317, 4318, 8889, 8888, 13133
JAEGER_QUERY = 16686


def jaeger_traces(jaeger_query_url: str, service: str, *, limit: int = 200, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Traces of ``service`` through Jaeger's query API (the one the Jaeger UI and Grafana's data source use)."""
    import httpx

    params: dict[str, Any] = {"service": service, "limit": limit, "lookback": "1h"}
    if tags:
        params["tags"] = json.dumps(tags)
    resp = httpx.get(f"{jaeger_query_url}/api/traces", params=params, timeout=10)
    resp.raise_for_status()
    data: list[dict[str, Any]] = resp.json().get("data") or []
    return data


def span_tags(span: dict[str, Any]) -> dict[str, Any]:
    """A Jaeger API span's tags as a dict."""
    return {t["key"]: t["value"] for t in span.get("tags", [])}


#: Series the live stack (tests/test_stack_live.py) and the fleet (tests/test_fleet.py) cannot produce, by metric-name substring -> why. A dashboard query or alert-expression
#: part that mentions one still runs (it must evaluate without error) but need not return data.
#: Add an entry only with its reason; prefer making the stack produce the series.
NEEDS_A_CONDITION: dict[str, str] = {
    # The collector creates this counter at its first failed export; the fault test at the end of tests/test_stack_live.py
    # makes exports fail and checks OtelCollectorDroppingData fires on it.
    "otelcol_exporter_send_failed_spans": "appears at the first failed export (covered by the fault test below)",
    # A sending queue refuses only when it is full; the fault test's outages are shorter than the queue.
    "otelcol_exporter_enqueue_failed_": "needs a full sending queue (a long outage under heavy load)",
    # The prometheus exporter serves a pull endpoint: it never fails to "send" metric points.
    "otelcol_exporter_send_failed_metric_points": "needs a failing push exporter of metrics (none in the compose config)",
    # Router mode (llama-server --models-dir): the single-box stack has no router. tests/test_exporter_router.py
    # runs the router alerts' queries and tests/test_proxy_router.py / test_top_router.py the models board's
    # against a Prometheus scraping a real router and gateway.
    "llamatelemetry_model_": "router-mode series need a llama-server router target (covered by the router tests)",
    # Agent signals that need a model the shared stack does not run; tests/test_agent_signals_stack.py runs these
    # panels' queries against a real Prometheus fed by a tool-calling model and a draft model.
    "llamatelemetry_tool_calls": "needs a tool-calling model (tests/test_agent_signals_stack.py)",
    "llamatelemetry_speculative_": "needs a draft model, -md (tests/test_agent_signals_stack.py)",
}


def needs_a_condition(expr: str) -> str | None:
    """Why ``expr`` may return no data in the live stack or the fleet (None: it must return data)."""
    return next((why for marker, why in NEEDS_A_CONDITION.items() if marker in expr), None)
