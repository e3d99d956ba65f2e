"""The docs agree with the code: every flag the README and docs/ give a subcommand exists in that
subcommand's parser (and every parser option is in the README's flag tables), every span attribute and
metric in the README's reference tables is spelled in ``semconv.py`` and vice versa, and every relative
link in README.md and docs/*.md points at a file and heading that exist.

No server is started: these are seconds-long checks of text against the real parsers and modules.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from llamatelemetry.cli import SUBCOMMANDS
from llamatelemetry.telemetry import semconv

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = {path: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
                                            ROOT / "llamatelemetry" / "exporter" / "METRICS.md"]}


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"llamatelemetry {command}")
    importlib.import_module(SUBCOMMANDS[command]).add_arguments(parser)
    return parser


def _options(command: str) -> set[str]:
    return {flag for action in _parser(command)._actions for flag in action.option_strings}


def _section(heading: str, text: str = README) -> str:
    """The text under a ``## `` or ``### `` heading starting with ``heading``, up to the next heading of that level or higher."""
    match = re.search(rf"^(#+) {re.escape(heading)}.*?$", text, flags=re.M)
    assert match, f"no heading {heading!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """Every ``llamatelemetry SUBCOMMAND args`` written in backticks or on a line of its own."""
    found = []
    pattern = rf"(?:`|^)llamatelemetry ({'|'.join(SUBCOMMANDS)})\b([^`\n]*)"
    for match in re.finditer(pattern, text, flags=re.M):
        args = match.group(2).split(" #")[0].split(" |")[0].replace("&", " ")
        found.append((match.group(1), args.split()))
    return found


@pytest.mark.parametrize("path", sorted(DOCS), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_of_a_documented_command_exists(path: Path) -> None:
    unknown = [(command, flag) for command, args in _commands(DOCS[path])
               for flag in args if flag.startswith("-") and flag.split("=")[0] not in _options(command)]
    assert not unknown, f"{path.name}: flags the parser does not have: {unknown}"


def _flag_table(section: str) -> dict[str, str]:
    """``| `--flag ARG` | env | default | ... |`` rows: flag -> environment-variable cell."""
    rows = re.findall(r"^\| `(-[-\w]+)[^|]*\| ([^|]*)\|", section, flags=re.M)
    return {flag: env.strip() for flag, env in rows}


@pytest.mark.parametrize(("command", "heading"), [("proxy", "The gateway"), ("exporter", "The sidecar exporter")])
def test_flag_tables_match_the_parsers_both_ways(command: str, heading: str) -> None:
    table = _flag_table(_section(heading))
    parser_flags = {f for f in _options(command) if f.startswith("--") and f != "--help"}
    assert set(table) == parser_flags, f"README table vs parser: only README {set(table) - parser_flags}, only parser {parser_flags - set(table)}"
    help_text = _parser(command).format_help()
    for flag, env in table.items():  # the variable the README names is the one the command reads
        for variable in re.findall(r"`([A-Z_]{4,})(?:=1)?`", env):
            assert variable in help_text, f"{command} {flag}: README names ${variable}, --help does not"


def test_live_view_and_demo_flags_exist() -> None:
    for flag in re.findall(r"`(--[\w-]+)", _section("Live view")):
        assert flag in _options("top"), flag
    for flag in ("--target", "--serve"):  # "The two commands" describes these demo options
        assert flag in _section("The two commands") and flag in _options("demo")


def _expand(names: list[str]) -> set[str]:
    """`a.b.c`, `.d` -> {a.b.c, a.b.d}: the README's shorthand for siblings."""
    out: set[str] = set()
    prefix = ""
    for name in names:
        if name.startswith("."):
            out.add(prefix + name[1:])
        else:
            out.add(name)
            prefix = name.rsplit(".", 1)[0] + "."
    return out


def _first_column_names(section: str) -> set[str]:
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]*)\|", section, flags=re.M):
        names |= _expand(re.findall(r"`([\w.]+)`", row))
    return names


def _span_attributes() -> set[str]:
    not_span = {"SEMCONV_VERSION", "SCHEMA_URL", "INSTRUMENTATION_NAME", "PROVIDER_NAME", "CAPTURE_CONTENT_ENV",
                "STABILITY_OPT_IN_ENV", "LATEST_EXPERIMENTAL", "EVENT_REASONING_BUDGET_EXHAUSTED"}
    names = {value for key, value in vars(semconv).items()
             if key.isupper() and isinstance(value, str) and key not in not_span and not key.startswith(("METRIC_", "TOKEN_"))}
    return names | set(semconv.LLAMACPP_TIMING_ATTRIBUTES.values())


def test_span_table_and_semconv_agree() -> None:
    section = _section("Span reference")
    in_table = _first_column_names(section)
    spelled = _span_attributes()
    assert in_table - spelled == set(), "in the README's span table but not in semconv.py"
    mentioned = in_table | _expand(re.findall(r"`([\w.]+)`", section))
    assert spelled - mentioned == set(), "in semconv.py but not in the README's span reference"


def test_metric_table_and_semconv_agree() -> None:
    section = _section("Client metric reference")
    metrics = {value for key, value in vars(semconv).items() if key.startswith("METRIC_") and isinstance(value, str)}
    in_table = _first_column_names(section)
    assert in_table - metrics == set(), "in the README's metric table but not in semconv.py"
    assert metrics - (in_table | _expand(re.findall(r"`([\w.]+)`", section))) == set(), "in semconv.py but not in the README"
    listed = re.search(r"Metric attributes are low-cardinality only:(.*?)\.\s", section, flags=re.S)
    assert listed and set(re.findall(r"`([\w.]+)`", listed.group(1))) >= set(semconv.METRIC_ATTRIBUTES)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)}


@pytest.mark.parametrize("path", sorted(DOCS), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", DOCS[path]):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


def test_slug_matches_github_for_headings_with_code() -> None:
    assert _slug("The gateway: `llamatelemetry proxy`") == "the-gateway-llamatelemetry-proxy"
    assert _slug("Scaling out: many GPU hosts, Kubernetes") == "scaling-out-many-gpu-hosts-kubernetes"


def _extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _reached(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """Requirement names an extra brings in, its ``llamatelemetry[...]`` references followed."""
    names: set[str] = set()
    for requirement in extras[extra]:
        own = re.match(r"llamatelemetry\[(.*)\]", requirement)
        if own:
            for sub in own.group(1).split(","):
                names |= _reached(sub.strip(), extras)
        else:
            names.add(re.split(r"[<>=;!\[ ]", requirement, maxsplit=1)[0].lower())
    return names


def test_extras_are_consistent() -> None:
    extras = _extras()
    runtime = set(extras) - {"all", "test", "bench"}
    assert set(re.match(r"llamatelemetry\[(.*)\]", extras["all"][0]).group(1).split(",")) == runtime  # type: ignore[union-attr]
    for name, requirements in extras.items():  # nothing listed twice, directly or through another extra
        direct = [re.split(r"[<>=;!\[ ]", r, maxsplit=1)[0].lower() for r in requirements if not r.startswith("llamatelemetry[")]
        via_others = set().union(*(_reached(sub.strip(), extras) for r in requirements if r.startswith("llamatelemetry[")
                                   for sub in r[len("llamatelemetry["):-1].split(",")))
        assert len(direct) == len(set(direct)) and not set(direct) & via_others, f"[{name}] repeats {set(direct) & via_others}"
    # what the tests import from outside the standard library and the tests folder
    import tomllib

    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    test_deps = _reached("test", extras) | {re.split(r"[<>=;!\[ ]", r, maxsplit=1)[0].lower() for r in core}
    for module, dist in {"yaml": "pyyaml", "openai": "openai", "anthropic": "anthropic", "textual": "textual",
                         "kubernetes_validate": "kubernetes-validate", "prometheus_client": "prometheus-client",
                         "grpc": "opentelemetry-exporter-otlp-proto-grpc", "pytest": "pytest", "httpx": "httpx"}.items():
        assert dist in test_deps, f"tests import {module}: [test] must bring {dist}"


def _dashboard_titles() -> set[str]:
    import json

    titles: set[str] = set()

    def walk(node: dict) -> None:  # type: ignore[type-arg]
        for panel in node.get("panels", []):
            titles.add(panel.get("title", ""))
            walk(panel)

    for path in (ROOT / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        titles.add(board["title"])
        walk(board)
    return titles


GRAFANA_WORDS = {"Related metrics", "Traces in Jaeger"}  # Grafana features and links, not our panels


@pytest.mark.parametrize("path", sorted(DOCS), ids=lambda p: str(p.relative_to(ROOT)))
def test_panels_named_in_docs_exist(path: Path) -> None:
    """Docs name dashboard panels in italics (*Slot occupancy*): each must be a real panel or dashboard."""
    names = {re.sub(r"\s+", " ", n) for n in re.findall(r"(?<![\w*])\*([A-Z][^*]+?)\*(?![\w*])", DOCS[path])}
    missing = names - _dashboard_titles() - GRAFANA_WORDS
    assert not missing, f"{path.name} names panels no dashboard has: {missing}"


def _documented_admin_names(heading: str = "Admin `/metrics` names") -> set[str]:
    section = _section(heading, (ROOT / "docs" / "proxy.md").read_text())  # the first heading that starts so
    names: set[str] = set()
    for row in re.findall(r"^\| (`[^|]*)\|", section, flags=re.M):
        for name in re.findall(r"`([a-z_]+)(?:_\*|_\{[a-z,]+\})?`", row):
            names.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    return names


def test_proxy_md_admin_metric_names_are_what_the_gateway_serves(full_server) -> None:  # noqa: ANN001
    """docs/proxy.md's table of admin /metrics names, against the running gateway's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    from proxy_helpers import running_gateway

    hi = [{"role": "user", "content": "hi"}]
    with running_gateway(full_server.base_url) as gw:
        httpx.post(gw.url + "/v1/chat/completions", json={"messages": hi, "max_tokens": 64}, timeout=30)
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json={"messages": hi, "max_tokens": 8, "stream": True}) as r:
            r.read()  # a stream that runs out of max_tokens while thinking: TTFT, per-token, budget exhausted
        gw.wait_for_recent(2)
        text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    # Names that need their condition (an overflow, a tool call, a draft model, n_ctx known) may or may not be served.
    conditional = _documented_admin_names("Admin `/metrics` names that need their condition")
    served = {family.name for family in text_string_to_metric_families(text)} - {"target_info"} - conditional
    assert served == _documented_admin_names(), f"only served: {served - _documented_admin_names()}, only documented: {_documented_admin_names() - served}"
    assert not conditional & _documented_admin_names()


def test_readme_constructor_line_is_the_real_signature() -> None:
    import inspect

    from llamatelemetry import LlamaCppClient

    line = re.search(r"Constructor: `LlamaCppClient\((.*?)\)`", README, flags=re.S)
    assert line
    written = {p.split("=")[0].strip(): p.split("=")[1].strip() for p in line.group(1).replace("\n", " ").split(",") if "=" in p}
    real = inspect.signature(LlamaCppClient.__init__).parameters
    assert set(written) == set(real) - {"self"}
    for name, default in written.items():
        if default != "...":
            assert default == repr(real[name].default), f"{name}: README {default}, code {real[name].default!r}"


def test_default_ports_line_matches_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from llamatelemetry import _defaults
    from llamatelemetry.top import cli as top_cli

    line = re.search(r"Default ports, all on 127\.0\.0\.1:(.*?)\n\n", README, flags=re.S)
    assert line
    text = " ".join(line.group(1).split())
    assert f"llama-server {urlsplit_port(_defaults.DEFAULT_BASE_URL)}" in text
    assert f"gateway {_defaults.PROXY_DEFAULT_PORT} (admin {_defaults.PROXY_ADMIN_DEFAULT_PORT})" in text
    assert f"exporter {_defaults.EXPORTER_DEFAULT_PORT}" in text
    prometheus = re.search(r"Prometheus endpoint (\d+)", text)
    assert prometheus and f"or {prometheus.group(1)})" in (ROOT / "llamatelemetry" / "telemetry" / "configure.py").read_text()
    # top's defaults are the exporter's and the gateway admin's ports
    for variable in ("LLAMATELEMETRY_TOP_EXPORTER", "LLAMATELEMETRY_TOP_GATEWAY"):
        monkeypatch.delenv(variable, raising=False)
    parser = argparse.ArgumentParser()
    top_cli.add_arguments(parser)
    args = parser.parse_args([])
    assert urlsplit_port(args.exporter) == _defaults.EXPORTER_DEFAULT_PORT
    assert urlsplit_port(args.gateway) == _defaults.PROXY_ADMIN_DEFAULT_PORT


def urlsplit_port(url: str) -> int | None:
    from urllib.parse import urlsplit

    return urlsplit(url).port
