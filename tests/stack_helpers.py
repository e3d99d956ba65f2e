"""Helpers for the monitoring-stack tests (tests/test_stack*.py): repository paths, YAML loading,
and PromQL extraction from the dashboards and alert rules."""

from __future__ import annotations

import json
import re
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


#: Alert rules whose data needs a process CI cannot run (no otelcol-contrib or Tempo binary here). Their
#: firing and quiet cases are promtool tests; their otelcol_* metric names are checked against the
#: collector's sources by tests/test_deploy_collector.py.
OFFLINE_ONLY_RULES = {
    "OtelCollectorDown": "up{job=\"otel-collector-self\"} needs a running OTel collector",
    "OtelCollectorDroppingData": "otelcol_* counters need a running OTel collector",
    "TempoDown": "up{job=\"tempo\"} needs a running Tempo",
}


#: Dashboard panels whose data needs servers the shared live stack does not run (a model that calls tools, a
#: draft model): tests/test_agent_signals_stack.py runs their queries against a real Prometheus fed by those.
AGENT_STACK_PANELS = {
    "Tool calls/s and malformed": "needs a tool-calling model (tests/test_agent_signals_stack.py)",
    "Speculative acceptance ratio": "needs a draft model, -md (tests/test_agent_signals_stack.py)",
}


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
