"""The real exporter over HTTP against real llama-servers (one with --metrics, one bare, one down,
one slow), fake GPUs at the pynvml boundary, the CLI as a subprocess, and a real Prometheus."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from loopback import LoopbackHTTPServer
from prom_helpers import one, pick, prometheus_binary, scrape, start_prometheus

from llamatelemetry.provision.server import free_port
from llamatelemetry.exporter import ExporterApp, ExporterConfig
from fake_nvml import FakeNVML, FakeProcess

TIMEOUT = 0.5  # below the 1 s Prometheus scrape_timeout: a scrape waits for its slowest target
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
FULL_GPU_BYTES = 3 * 1024**3


class SlowServer:
    """Accepts connections and answers every GET only after ``delay`` seconds (past the timeout)."""

    def __init__(self, delay: float) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                time.sleep(delay)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass

        self.server = LoopbackHTTPServer(Handler)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    server = SlowServer(delay=TIMEOUT * 3)
    yield server.url
    server.close()


@pytest.fixture(scope="module")
def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def nvml(full_server) -> FakeNVML:  # noqa: ANN001
    fake = FakeNVML()
    fake.gpus[0].processes.append(FakeProcess(full_server.pid, FULL_GPU_BYTES))
    return fake


@pytest.fixture(scope="module")
def targets(full_server, bare_server, down_url: str, slow_url: str) -> dict[str, str]:  # noqa: ANN001
    return {"full": full_server.base_url, "bare": bare_server.base_url, "down": down_url, "slow": slow_url}


@pytest.fixture(scope="module")
def app(targets: dict[str, str], nvml: FakeNVML) -> Iterator[ExporterApp]:
    config = ExporterConfig(targets=[f"{k}={v}" for k, v in targets.items()], port=0, timeout=TIMEOUT)
    with ExporterApp(config, nvml=nvml) as running:
        yield running


def chat(base_url: str) -> dict[str, Any]:
    resp = httpx.post(base_url + "/v1/chat/completions", json=CHAT, timeout=30)
    resp.raise_for_status()
    return resp.json()


def test_full_server_is_exported_with_real_values(app: ExporterApp, full_server) -> None:  # noqa: ANN001
    s = scrape(app.url)
    props = httpx.get(full_server.base_url + "/props").json()
    slots = httpx.get(full_server.base_url + "/slots").json()
    assert one(s, "llamatelemetry_target_up", target="full") == 1
    assert one(s, "llamatelemetry_server_state", target="full", state="ok") == 1
    for ep in ("metrics", "slots", "props"):
        assert one(s, "llamatelemetry_endpoint_available", target="full", endpoint=ep) == 1
    assert one(s, "llamatelemetry_server_info", target="full", model=props["model_alias"], n_ctx=str(props["default_generation_settings"]["n_ctx"]),
               total_slots=str(props["total_slots"]), build=props["build_info"]) == 1
    assert len(pick(s, "llamatelemetry_slot_context_size_tokens", target="full")) == props["total_slots"] == 2
    for slot in slots:
        assert one(s, "llamatelemetry_slot_context_size_tokens", target="full", slot=str(slot["id"])) == slot["n_ctx"]
    # Re-exported with Prometheus naming and the upstream types (counters keep _total).
    assert pick(s, "llamacpp_prompt_tokens_total", target="full")
    assert pick(s, "llamacpp_requests_processing", target="full")
    assert not any(":" in name for name, _ in s)


def test_token_counters_move_by_exactly_the_generated_tokens(app: ExporterApp, full_server) -> None:  # noqa: ANN001
    before = scrape(app.url)
    usages = [chat(full_server.base_url)["usage"] for _ in range(3)]
    after = scrape(app.url)

    def delta(name: str) -> float:
        return one(after, name, target="full") - one(before, name, target="full")

    assert delta("llamacpp_tokens_predicted_total") == sum(u["completion_tokens"] for u in usages)
    cached = sum(u.get("prompt_tokens_details", {}).get("cached_tokens", 0) for u in usages)
    assert delta("llamacpp_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages) - cached
    assert delta("llamacpp_prompt_tokens_cached_total") == cached
    # The slot that served the requests now holds prompt + generated tokens in its context.
    slots = httpx.get(full_server.base_url + "/slots").json()
    for slot in slots:
        got = one(after, "llamatelemetry_slot_context_tokens", target="full", slot=str(slot["id"]))
        assert got == slot.get("n_prompt_tokens", 0)
        ratio = one(after, "llamatelemetry_slot_context_utilization_ratio", target="full", slot=str(slot["id"]))
        assert ratio == pytest.approx(got / slot["n_ctx"])
    last = usages[-1]
    # (The last sampled token is never decoded back into the cache, hence the upper bound.) Another slot may
    # still hold an earlier test's longer context: look for the one that served these requests, not the fullest.
    held = pick(after, "llamatelemetry_slot_context_tokens", target="full").values()
    assert any(last["prompt_tokens"] < tokens <= last["prompt_tokens"] + last["completion_tokens"] for tokens in held), held


def test_slot_processing_is_seen_during_a_request(full_server) -> None:  # noqa: ANN001
    # A long generation (the scripted model loops its chain) keeps one slot busy while we scrape. An
    # exporter of this one target only: scrapes take milliseconds, not the slow target's timeout, so
    # several land inside the generation even on a loaded machine.
    config = ExporterConfig(targets=[f"full={full_server.base_url}"], port=0, timeout=5.0, gpu=False)
    done = threading.Event()

    def generate() -> None:
        httpx.post(full_server.base_url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500, "ignore_eos": True})
        done.set()

    with ExporterApp(config) as app:
        threading.Thread(target=generate, daemon=True).start()
        seen = generating = 0.0
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline and not (seen and generating):
            s = scrape(app.url)
            busy = sum(pick(s, "llamatelemetry_slot_processing", target="full").values())
            seen = max(seen, busy)
            if busy:
                generating = max(generating, sum(pick(s, "llamatelemetry_slot_generated_tokens", target="full").values()))
        done.wait(60)
        assert seen == 1
        assert generating > 0  # tokens of the running request
        after = scrape(app.url)
    assert sum(pick(after, "llamatelemetry_slot_processing", target="full").values()) == 0
    # llama-server resets n_decoded when a request ends: idle slots read 0, not the last request's count.
    assert set(pick(after, "llamatelemetry_slot_generated_tokens", target="full").values()) == {0.0}


def test_bare_server_reports_disabled_endpoints(app: ExporterApp) -> None:
    s = scrape(app.url)
    assert one(s, "llamatelemetry_server_state", target="bare", state="ok") == 1
    assert one(s, "llamatelemetry_target_up", target="bare") == 1  # 501 is configuration, not failure
    assert one(s, "llamatelemetry_endpoint_available", target="bare", endpoint="metrics") == 0
    assert one(s, "llamatelemetry_endpoint_available", target="bare", endpoint="slots") == 0
    assert one(s, "llamatelemetry_endpoint_available", target="bare", endpoint="props") == 1
    assert not any(dict(labels).get("target") == "bare" for (name, labels) in s if name.startswith(("llamacpp_", "llamatelemetry_slot_")))
    assert one(s, "llamatelemetry_server_info", target="bare", model="scripted") == 1


def test_down_and_slow_targets_do_not_hurt_the_others(app: ExporterApp) -> None:
    start = time.perf_counter()
    first = scrape(app.url)
    elapsed = time.perf_counter() - start
    second = scrape(app.url)
    assert elapsed < TIMEOUT + 1.0, f"scrape took {elapsed:.2f}s with a per-target timeout of {TIMEOUT}s"
    for name in ("down", "slow"):
        assert one(second, "llamatelemetry_server_state", target=name, state="unreachable") == 1
        assert one(second, "llamatelemetry_target_up", target=name) == 0
        errors = ("llamatelemetry_scrape_errors_total",)
        assert one(second, *errors, collector="llama_server", target=name) == one(first, *errors, collector="llama_server", target=name) + 1
    assert one(second, "llamatelemetry_scrape_duration_seconds", collector="llama_server", target="slow") >= TIMEOUT * 0.9
    assert one(second, "llamatelemetry_scrape_duration_seconds", collector="llama_server", target="full") < TIMEOUT
    assert one(second, "llamatelemetry_target_up", target="full") == 1
    assert one(second, "llamatelemetry_scrape_errors_total", collector="llama_server", target="full") == 0


def test_gpu_series_and_memory_of_the_llama_server_target(app: ExporterApp, nvml: FakeNVML) -> None:
    s = scrape(app.url)
    assert one(s, "llamatelemetry_collector_up", collector="gpu") == 1
    assert len(pick(s, "llamatelemetry_gpu_info")) == len(nvml.gpus)
    assert one(s, "llamatelemetry_gpu_target_memory_used_bytes", target="full", gpu="0") == FULL_GPU_BYTES
    assert not pick(s, "llamatelemetry_gpu_target_memory_used_bytes", target="bare")
    assert one(s, "llamatelemetry_gpu_process_memory_used_bytes", process="llama-server") == FULL_GPU_BYTES
    # NVML breaks mid-run: GPU reported down for that scrape, targets unaffected, then re-initialised.
    errors_before = one(s, "llamatelemetry_scrape_errors_total", collector="gpu")
    nvml.fail_next(1, nvml.NVML_ERROR_GPU_IS_LOST)
    broken = scrape(app.url)
    assert one(broken, "llamatelemetry_collector_up", collector="gpu") == 0
    assert not pick(broken, "llamatelemetry_gpu_info")
    assert one(broken, "llamatelemetry_scrape_errors_total", collector="gpu") == errors_before + 1
    assert one(broken, "llamatelemetry_target_up", target="full") == 1
    healed = scrape(app.url)
    assert one(healed, "llamatelemetry_collector_up", collector="gpu") == 1
    assert len(pick(healed, "llamatelemetry_gpu_info")) == len(nvml.gpus)


def test_openmetrics_health_and_index(app: ExporterApp) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    resp = httpx.get(app.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.endswith("# EOF\n")
    names = {f.name for f in text_string_to_metric_families(resp.text)}
    assert {"llamacpp_tokens_predicted", "llamatelemetry_target_up", "llamatelemetry_gpu_energy_joules"} <= names
    assert httpx.get(app.url + "/health").text == "ok\n"
    index = httpx.get(app.url + "/")
    assert index.status_code == 200 and "/metrics" in index.text and "full" in index.text
    assert httpx.get(app.url + "/nope").status_code == 404


def test_501_is_logged_once_naming_the_flag(bare_server, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    with caplog.at_level(logging.INFO, logger="llamatelemetry.exporter"):
        with ExporterApp(ExporterConfig(targets=[f"bare={bare_server.base_url}"], port=0, gpu=False)) as fresh:
            for _ in range(3):
                scrape(fresh.url)
    metrics_lines = [r.getMessage() for r in caplog.records if "/metrics answered 501" in r.getMessage()]
    slots_lines = [r.getMessage() for r in caplog.records if "/slots answered 501" in r.getMessage()]
    assert len(metrics_lines) == 1 and "--metrics" in metrics_lines[0]
    assert len(slots_lines) == 1 and "--no-slots" in slots_lines[0]


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exporter exited early:\n{proc.communicate()[1]}"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} not up after {timeout}s")


def test_cli_subprocess_env_vars_real_nvml_and_clean_ctrl_c(full_server, bare_server) -> None:  # noqa: ANN001
    port = free_port()
    env = dict(os.environ, LLAMATELEMETRY_EXPORTER_TARGETS=f"full={full_server.base_url},bare={bare_server.base_url}",
               LLAMATELEMETRY_EXPORTER_PORT=str(port), LLAMA_API_KEY="sk-cli-secret", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from llamatelemetry.cli import exporter_main; sys.exit(exporter_main())"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        s = scrape(f"http://127.0.0.1:{port}")
        assert one(s, "llamatelemetry_target_up", target="full") == 1
        assert one(s, "llamatelemetry_endpoint_available", target="bare", endpoint="metrics") == 0
        # The real pynvml on a machine without a GPU driver: GPU collection is down, no GPU is made up,
        # and the index page says so (it used to say "on").
        assert one(s, "llamatelemetry_collector_up", collector="gpu") == 0 and not pick(s, "llamatelemetry_gpu_info")
        index = httpx.get(f"http://127.0.0.1:{port}/").text
        assert "GPU collection: down" in index and "GPU collection: on" not in index
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert f"127.0.0.1:{port}/metrics" in err and "--no-gpu" in err  # the NVML warning names the way out
    assert "sk-cli-secret" not in err + out


def test_cli_help_and_bad_target() -> None:
    from llamatelemetry.cli import main

    help_text = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "exporter", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--target", "--listen", "--port", "--api-key", "--timeout", "--no-gpu", "--no-gpu-processes", "--log-level", "LLAMA_API_KEY", "9183"):
        assert flag in help_text
    assert "--fake-gpu" not in help_text and "--probe-allow" in help_text
    assert main(["exporter", "--target", "ftp://nope", "--no-gpu", "--port", "0"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--port", "99999"], "99999 is not a TCP port: use 1-65535"),
    (["--port", "http"], "'http' is not a port number"),
    (["--timeout", "0"], "must be > 0"),
])
def test_cli_bad_numbers_are_clear_usage_errors(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "exporter", "--no-gpu", *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_cli_bad_port_from_the_environment_is_a_clear_error() -> None:
    env = dict(os.environ, LLAMATELEMETRY_EXPORTER_PORT="99999")
    proc = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "exporter", "--no-gpu"], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2 and "not a TCP port" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_target_without_url_is_rejected_with_the_expected_form() -> None:
    proc = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "exporter", "--no-gpu", "--port", "0", "--target", "coder"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "'coder' is not a URL: write http://HOST:PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(prometheus_binary() is None, reason="needs the Debian package 'prometheus' (apt-get install prometheus)")
def test_real_prometheus_scrapes_series_and_rate(app: ExporterApp, full_server) -> None:  # noqa: ANN001
    host_port = app.url.removeprefix("http://")
    with start_prometheus({"llamatelemetry": [host_port]}) as prom:
        prom.wait_for('llamatelemetry_target_up{target="full"} == 1')
        assert prom.value('llamatelemetry_server_state{target="bare",state="ok"}') == 1
        assert prom.value('llamatelemetry_server_state{target="down",state="unreachable"}') == 1
        assert prom.value('llamatelemetry_endpoint_available{target="bare",endpoint="metrics"}') == 0
        assert prom.value('llamatelemetry_gpu_target_memory_used_bytes{target="full"}') == FULL_GPU_BYTES
        assert len(prom.query("llamatelemetry_gpu_info")) == 2
        # Scraped counter values must equal what llama-server itself reports.
        query = 'llamacpp_tokens_predicted_total{target="full"}'
        start_value = prom.value(query)
        generated = sum(chat(full_server.base_url)["usage"]["completion_tokens"] for _ in range(4))
        expected = start_value + generated
        prom.wait_for(query, lambda r: bool(r) and float(r[0]["value"][1]) == expected)
        time.sleep(1.5)  # at least one more scrape, so the window holds samples after the increase
        at = time.time()
        window = 60
        raw = prom.query(f"{query}[{window}s]", at)[0]["values"]
        (t_first, v_first), (t_last, v_last) = raw[0], raw[-1]
        delta = float(v_last) - float(v_first)
        assert delta >= generated and len(raw) >= 3
        rate = prom.value(f"rate({query}[{window}s])", at)
        # rate() extrapolates the sampled increase towards the window edges, never beyond it:
        assert delta / window - 1e-9 <= rate <= delta / (float(t_last) - float(t_first)) + 1e-9
        assert prom.value(f"rate(llamatelemetry_scrape_errors_total{{target=\"down\"}}[{window}s])", at) > 0


METRICS_MD = Path(__file__).resolve().parent.parent / "llamatelemetry" / "exporter" / "METRICS.md"
#: Documented names a scrape here cannot produce, and why.
CONDITIONAL = {
    "llamacpp_spec_decode_num_accepted_tokens_per_pos_total": "only after speculative decoding ran (needs a draft model)",
}
#: The router section's table needs a router target: tests/test_exporter_router.py checks it against one.
CONDITIONAL.update({name: "router mode" for name in re.findall(
    r"^\| `(llamatelemetry_[a-z0-9_]+)`", METRICS_MD.read_text().split("## Router (multi-model) llama-server", 1)[1].split("\n## ", 1)[0],
    flags=re.M)})


def _documented() -> dict[str, str]:
    """``{metric name: type}`` from the first two columns of METRICS.md's tables."""
    out: dict[str, str] = {}
    for line in METRICS_MD.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        mtype = cells[1].strip("*")
        for name in re.findall(r"`((?:llamatelemetry|llamacpp)_[a-z0-9_]+)`", cells[0]):
            out[name] = mtype
    return out


def test_metrics_md_lists_exactly_what_the_exporter_emits(full_server) -> None:  # noqa: ANN001
    from prometheus_client.parser import text_string_to_metric_families

    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(full_server.pid, FULL_GPU_BYTES))
    config = ExporterConfig(targets=[f"full={full_server.base_url}"], port=0, gpu_pcie=True)
    with ExporterApp(config, nvml=nvml) as exporter:
        chat(full_server.base_url)  # so every slot series exists
        text = httpx.get(exporter.url + "/metrics", timeout=30).text
    emitted: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            emitted[sample.name] = fam.type
    documented = _documented()
    assert set(emitted) - set(documented) == set(), "emitted but not in METRICS.md"
    assert set(documented) - set(emitted) - set(CONDITIONAL) == set(), "in METRICS.md but not emitted"
    wrong = {n: (documented[n], t) for n, t in emitted.items() if documented[n] != t}
    assert not wrong, f"type in METRICS.md vs emitted: {wrong}"
    # ... and the real promtool finds nothing to complain about (names, suffixes, HELP, duplicates)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_readme_scrape_snippet_is_a_valid_prometheus_config_matching_the_alerts(tmp_path: Path) -> None:
    import shutil

    import yaml

    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("## The sidecar exporter", 1)[1]
    snippet = re.search(r"```yaml\n(.*?)```", section, flags=re.S)
    assert snippet is not None
    (tmp_path / "prometheus.yml").write_text(snippet.group(1))
    for rules in ("alerts.yml", "recording_rules.yml"):
        shutil.copy(root / "collector" / rules, tmp_path / rules)
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    job = yaml.safe_load(snippet.group(1))["scrape_configs"][0]["job_name"]
    # The exporter-down alert (`up{job...} == 0`) must select this job, whether it names it or matches a pattern.
    selectors = re.findall(r'up\{job(=~?)"([^"]+)"\}', (root / "collector" / "alerts.yml").read_text())
    assert any(job == value if op == "=" else re.fullmatch(value, job) for op, value in selectors), selectors
