"""/probe (the multi-target exporter pattern) against real llama-servers and a real Prometheus with file_sd;
exposition checked by the real promtool; connecting to 'localhost' whose resolver lists ::1 first."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from loopback import LoopbackHTTPServer
from prom_helpers import one, parse_exposition, pick, run_prometheus, scrape

from llamatelemetry.exporter import ExporterApp, ExporterConfig

COLLECTOR = Path(__file__).resolve().parent.parent / "collector"


def probe(app: ExporterApp, target: str, **kw: Any) -> httpx.Response:
    return httpx.get(app.url + "/probe", params={"target": target}, timeout=30, **kw)


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture(scope="module")
def probe_app() -> Iterator[ExporterApp]:
    with ExporterApp(ExporterConfig(targets=[], port=0, gpu=False, timeout=1.0, api_key="sk-probe-secret")) as app:
        yield app


def test_probe_scrapes_exactly_the_target_it_is_given(probe_app: ExporterApp, full_server) -> None:  # noqa: ANN001
    httpx.post(full_server.base_url + "/v1/chat/completions", timeout=30,
               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).raise_for_status()
    resp = probe(probe_app, host_port(full_server.base_url))  # host:port, as Prometheus passes __address__
    assert resp.status_code == 200
    series = parse_exposition(resp.text)
    name = host_port(full_server.base_url)
    assert one(series, "llamatelemetry_target_up", target=name) == 1
    own = parse_exposition(httpx.get(full_server.base_url + "/metrics", timeout=10).text)
    predicted = one(series, "llamacpp_tokens_predicted_total", target=name)
    assert predicted > 0 and predicted == one(own, "llamacpp:tokens_predicted_total")  # the target's own counter
    assert not [k for k in series if k[0].startswith("llamatelemetry_gpu_")]  # GPU metrics stay on /metrics
    # /metrics of a probe-only exporter has no target at all
    assert not pick(scrape(probe_app.url), "llamatelemetry_target_up")
    # the OpenAI-style base URL works too
    assert one(parse_exposition(probe(probe_app, full_server.base_url + "/v1").text), "llamatelemetry_target_up", target=name) == 1


def test_probe_refuses_what_is_not_an_http_target(probe_app: ExporterApp) -> None:
    assert probe(probe_app, "ftp://127.0.0.1:21").status_code == 400
    assert probe(probe_app, "file:///etc/passwd").status_code == 400
    missing = httpx.get(probe_app.url + "/probe", timeout=10)
    assert missing.status_code == 400 and "target=" in missing.text


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(dict(self.headers))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_probe_never_sends_the_api_key_without_an_allow_list_and_honours_the_list() -> None:
    with LoopbackHTTPServer(_Recorder) as peer:
        peer_host_port = host_port(peer.url)
        with ExporterApp(ExporterConfig(targets=[], port=0, gpu=False, timeout=1.0, api_key="sk-probe-secret")) as open_app:
            probe(open_app, peer.url)
        assert _Recorder.seen and all("Authorization" not in h and "authorization" not in h for h in _Recorder.seen)
        _Recorder.seen.clear()
        allowed = ExporterConfig(targets=[], port=0, gpu=False, timeout=1.0, api_key="sk-probe-secret", probe_allow=[peer_host_port])
        with ExporterApp(allowed) as app:
            probe(app, peer.url)
            assert _Recorder.seen and all(h.get("Authorization") == "Bearer sk-probe-secret" for h in _Recorder.seen)
            refused = probe(app, "http://192.0.2.1:8080")  # not on the list: 403, and nothing is fetched
            assert refused.status_code == 403 and "--probe-allow" in refused.text


def test_an_exporter_scraping_another_exporter_passes_promtool(full_server) -> None:  # noqa: ANN001
    """The inner exporter's llamatelemetry_* (and already renamed llamacpp_*) families must not be duplicated."""
    with ExporterApp(ExporterConfig(targets=[f"inner={full_server.base_url}"], port=0, gpu=False)) as inner, \
         ExporterApp(ExporterConfig(targets=[f"outer={inner.url}", f"real={full_server.base_url}"], port=0, gpu=False)) as outer:
        text = httpx.get(outer.url + "/metrics", timeout=30).text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    # promtool exits 3 for lint-only findings (e.g. a counter without _total) and 1 for errors such as duplicates
    assert check.returncode == 0, check.stdout + check.stderr + text[:2000]
    series = parse_exposition(text)
    assert one(series, "llamatelemetry_server_state", target="real", state="ok") == 1
    assert not pick(series, "llamatelemetry_target_up", exported_target="inner")  # the inner families were dropped


def test_an_exporter_pointed_at_itself_fails_fast_instead_of_recursing() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with ExporterApp(ExporterConfig(targets=[f"self=http://127.0.0.1:{port}"], port=port, gpu=False, timeout=2.0)) as app:
        start = time.monotonic()
        series = scrape(app.url)
        assert time.monotonic() - start < 1.0  # a 508 at once, not nested scrapes until the timeout
        assert one(series, "llamatelemetry_target_up", target="self") == 0
        assert one(series, "llamatelemetry_server_state", target="self", state="error") == 1


def test_localhost_resolving_to_ipv6_first_still_connects(monkeypatch: pytest.MonkeyPatch, full_server) -> None:  # noqa: ANN001
    """The resolver may list ::1 before 127.0.0.1 (a common /etc/hosts); llama-server listens on 127.0.0.1 only."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def ipv6_first(host: Any, *args: Any, **kw: Any) -> Any:
        if host in ("localhost", b"localhost"):  # anyio passes the IDNA-encoded name as bytes
            asked.append(str(host))
            port = args[0] if args else kw.get("port")
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", int(port), 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", ipv6_first)
    port = full_server.base_url.rsplit(":", 1)[1]
    with ExporterApp(ExporterConfig(targets=[f"l=http://localhost:{port}"], port=0, gpu=False)) as app:
        assert one(scrape(app.url), "llamatelemetry_target_up", target="l") == 1
    assert asked  # the exporter really resolved through the ::1-first answer


def _probe_config(exporter: str, sd_file: Path) -> dict[str, Any]:
    """The shipped collector/prometheus-probe.yml, pointed at this exporter and SD file, scraping every second."""
    config = yaml.safe_load((COLLECTOR / "prometheus-probe.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    probe_job = jobs["llama-servers"]
    probe_job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
    for rule in probe_job["relabel_configs"]:
        if rule.get("target_label") == "__address__":
            rule["replacement"] = exporter
    jobs["llamatelemetry-gpu"]["static_configs"] = [{"targets": [exporter]}]
    return config


def test_file_sd_adds_and_removes_llama_servers(probe_app: ExporterApp, full_server, llama_server_factory, tmp_path: Path) -> None:  # noqa: ANN001
    second = llama_server_factory("--metrics")
    first_addr, second_addr = host_port(full_server.base_url), host_port(second.base_url)
    sd_file = tmp_path / "llama-servers.json"
    sd_file.write_text(json.dumps([{"targets": [first_addr]}]))
    config = _probe_config(host_port(probe_app.url), sd_file)
    with run_prometheus(config, rule_files=[COLLECTOR / "recording_rules.yml"]) as prom:
        up = 'llamatelemetry_target_up{{job="llama-servers",instance="{0}",target="{0}"}}'
        prom.wait_for(up.format(first_addr) + " == 1", timeout=30)
        assert prom.query(f'llamacpp_tokens_predicted_total{{target="{second_addr}"}}') == []

        sd_file.write_text(json.dumps([{"targets": [first_addr, second_addr]}]))  # add a server: its series appear
        prom.wait_for(up.format(second_addr) + " == 1", timeout=30)
        assert prom.query(f'llamacpp_tokens_predicted_total{{instance="{second_addr}"}}')

        sd_file.write_text(json.dumps([{"targets": [first_addr]}]))  # remove it: its series go stale
        prom.wait_for(f'llamatelemetry_target_up{{target="{second_addr}"}}', lambda r: r == [], timeout=30)
        assert prom.query(up.format(first_addr)), "the remaining server must still be scraped"


def test_a_probed_local_llama_server_gets_its_gpu_memory_and_energy_on_metrics(full_server) -> None:  # noqa: ANN001
    from fake_nvml import FakeNVML, FakeProcess

    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(full_server.pid, 2 << 30))
    with ExporterApp(ExporterConfig(targets=[], port=0, timeout=1.0), nvml=nvml) as app:
        name = host_port(full_server.base_url)
        assert not pick(scrape(app.url), "llamatelemetry_target_energy_joules_total")  # not probed yet: unknown
        assert probe(app, name).status_code == 200
        scrape(app.url)  # first reading after the probe: the baseline
        nvml.gpus[0].energy_mj += 3_000
        series = scrape(app.url)
    assert one(series, "llamatelemetry_target_energy_joules_total", target=name) == 3.0
    assert one(series, "llamatelemetry_gpu_target_memory_used_bytes", target=name) == 2 << 30


def test_cli_probe_flags_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from llamatelemetry.exporter import cli

    def config(*argv: str):  # noqa: ANN202
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.build_config(parser.parse_args(list(argv)))

    monkeypatch.delenv("LLAMATELEMETRY_EXPORTER_TARGETS", raising=False)
    monkeypatch.setenv("LLAMATELEMETRY_EXPORTER_PROBE_ALLOW", "10.0.*:8080, gpu-*:*")
    probe_only = config("--probe-only")
    assert probe_only.targets == [] and probe_only.probe_allow == ["10.0.*:8080", "gpu-*:*"]
    assert config("--probe-allow", "a:1", "--probe-allow", "b:2").probe_allow == ["a:1", "b:2"]  # flags replace the variable
    assert config().targets  # without --probe-only the usual default target stays
