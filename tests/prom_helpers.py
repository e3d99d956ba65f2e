"""Start a real Prometheus (Debian package ``prometheus``) for tests, and query it.

Example::

    from prom_helpers import start_prometheus
    with start_prometheus({"exporter": ["127.0.0.1:9183"]}) as prom:
        prom.wait_for("up{job='exporter'} == 1")
        print(prom.query("rate(llamacpp_tokens_predicted_total[10s])"))

Each job scrapes its targets every ``scrape_interval`` (1s by default) with
``honor_labels: true`` (so the exporter's own ``target`` label is kept as is). Rule files are
copied next to the generated config; ``evaluation_interval`` follows ``scrape_interval``.
The binary is ``$PROMETHEUS_BINARY``, else ``prometheus`` on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx
import yaml


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str | None:
    """The Prometheus binary to use, or ``None`` when it is not installed."""
    return os.environ.get("PROMETHEUS_BINARY") or shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None)


@dataclass
class RunningPrometheus:
    """A Prometheus child process; ``url`` is its base URL (``http://127.0.0.1:<port>``)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Run an instant PromQL query (at unix time ``at``, default now); returns ``data.result``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        resp = httpx.get(self.url + "/api/v1/query", params=params, timeout=10)
        body = resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {json.dumps(body)[:500]}")
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of ``expr``, or ``None`` when the result is empty."""
        result = self.query(expr, at)
        if not result:
            return None
        assert len(result) == 1, f"{expr!r} returned {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool] = bool, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds (default: non-empty); returns the result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {expr!r}; last result: {result}\n"
                             f"prometheus log:\n{self.log_tail()}")

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (``/api/v1/targets``), with health and lastError."""
        return httpx.get(self.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]


@contextlib.contextmanager
def start_prometheus(
    scrape_targets: dict[str, list[str]],
    rule_files: Sequence[str | os.PathLike[str]] = (),
    *,
    scrape_interval: str = "1s",
    ready_timeout: float = 30.0,
) -> Iterator[RunningPrometheus]:
    """Run Prometheus scraping ``{job: ["host:port", ...]}`` until the ``with`` block ends.

    The data directory is temporary and removed afterwards. Raises ``RuntimeError`` with
    the tail of Prometheus's log if it does not become ready.
    """
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval, "scrape_timeout": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": [{"targets": list(targets)}]}
            for job, targets in scrape_targets.items()
        ],
    }
    with run_prometheus(config, rule_files, ready_timeout=ready_timeout) as prom:
        yield prom


@contextlib.contextmanager
def run_prometheus(
    config: dict[str, Any],
    rule_files: Sequence[str | os.PathLike[str]] = (),
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    agent: bool = False,
    ready_timeout: float = 30.0,
) -> Iterator[RunningPrometheus]:
    """Run Prometheus with ``config`` (a parsed prometheus.yml) until the ``with`` block ends.

    ``rule_files`` are copied next to the generated config and replace its ``rule_files``. ``agent``
    starts it in agent mode (``--enable-feature=agent`` on the 2.x Debian package, ``--agent`` on 3.x).
    ``env`` is added to the process environment (for ``${VAR}`` in external labels).
    """
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed: apt-get install prometheus (or set PROMETHEUS_BINARY)")
    workdir = Path(tempfile.mkdtemp(prefix="prom-test-"))
    config = dict(config)
    if rule_files:
        rules = []
        for i, path in enumerate(rule_files):
            dest = workdir / f"rules_{i}_{Path(path).name}"
            shutil.copyfile(path, dest)
            rules.append(str(dest))
        config["rule_files"] = rules
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = _free_port()
    log_path = workdir / "prometheus.log"
    args = [binary, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    if agent:
        args += [*agent_mode_flags(binary), f"--storage.agent.path={workdir / 'data'}"]
    else:
        args.append(f"--storage.tsdb.path={workdir / 'data'}")
    args += list(extra_args)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})})
    prom = RunningPrometheus(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {process.returncode}:\n{prom.log_tail()}")
            try:
                if httpx.get(prom.url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready after {ready_timeout}s:\n{prom.log_tail()}")
            time.sleep(0.1)
        yield prom
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def prometheus_major_version(binary: str) -> int:
    """2 or 3 (from ``prometheus --version``)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    m = re.search(r"version (\d+)\.", text)
    if not m:
        raise RuntimeError(f"cannot read the Prometheus version from: {text[:200]}")
    return int(m.group(1))


def agent_mode_flags(binary: str) -> list[str]:
    """The flags that start ``binary`` in agent mode with ``${VAR}`` expansion in external labels."""
    if prometheus_major_version(binary) >= 3:
        return ["--agent"]  # 3.x: agent is a flag; external-label expansion is always on
    return ["--enable-feature=agent,expand-external-labels"]


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_exposition(text: str) -> dict[SeriesKey, float]:
    """``{(sample name, sorted label items): value}`` using prometheus_client's own parser.

    An independent parser on purpose: it checks the exporter's output is valid exposition.
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[SeriesKey, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def scrape(url: str, **kw: Any) -> dict[SeriesKey, float]:
    """GET an exporter's ``/metrics`` (``url`` is its base URL) and parse it."""
    resp = httpx.get(url.rstrip("/") + "/metrics", timeout=30, **kw)
    resp.raise_for_status()
    return parse_exposition(resp.text)


def pick(series: dict[SeriesKey, float], name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The series named ``name`` whose labels include ``labels``."""
    return {k: v for (n, k), v in series.items() if n == name and all(dict(k).get(a) == b for a, b in labels.items())}


def one(series: dict[SeriesKey, float], name: str, **labels: str) -> float:
    """The value of the single series ``name{labels...}``; fails when there is not exactly one."""
    found = pick(series, name, **labels)
    assert len(found) == 1, f"expected one {name}{labels}, got {found}"
    return next(iter(found.values()))
