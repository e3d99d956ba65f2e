"""The first hour, walked through: the README followed the way a new user follows it.

``llamatelemetry demo --serve`` is started as the README says (with ``--server-args`` for flags of one's
own), the ``export ...`` lines it prints are read back exactly as a user pastes them into another shell,
and then, against that running stack and with that environment only: every Python snippet of the README
runs as written; the client's Prometheus example keeps serving and a real Prometheus scrapes it with the
README's scrape job; ``top`` answers with the exported URLs and its keys work in a real terminal (tmux);
the gateway tells the truth about a dead upstream; the demo's exporter (no GPU on this machine) shows no
error rate to a real Prometheus; the fleet's Prometheus commands run as written on loopback ports with
their data where ``.gitignore`` keeps it out of the clone; the Kubernetes manifests render offline.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import yaml
from prom_helpers import agent_mode_flags, prometheus_binary, run_prometheus, start_prometheus
from tmux_helpers import TmuxSession

from llamatelemetry.provision.server import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
#: The snippet that serves until Ctrl-C (the client's Prometheus endpoint): run by its own test below.
SERVING_BLOCKS = [code for code in PYTHON_BLOCKS if "except KeyboardInterrupt" in code]
ONE_SHOT_BLOCKS = [code for code in PYTHON_BLOCKS if code not in SERVING_BLOCKS]
CLI = [sys.executable, "-m", "llamatelemetry.cli"]
HI = [{"role": "user", "content": "Say hello."}]
#: The flags the README's --server-args example passes (4 slots).
SERVER_ARGS = re.search(r'llamatelemetry demo --serve --server-args="([^"]+)"', README)


def _base_env() -> dict[str, str]:
    """The user's shell before pasting anything: no URLs of ours set."""
    drop = ("LLAMA_SERVER_URL", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "LLAMATELEMETRY_TOP_EXPORTER",
            "LLAMATELEMETRY_TOP_GATEWAY", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def parse_exports(text: str) -> dict[str, str]:
    """What ``export A=1 B=2`` lines set, as a shell would (values are single words)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export "):
            for word in shlex.split(line)[1:]:
                name, _, value = word.partition("=")
                found[name] = value
    return found


class DemoStack:
    def __init__(self, process: subprocess.Popen[str], output: str) -> None:
        self.process = process
        self.output = output
        self.exports = parse_exports(output)

    @property
    def env(self) -> dict[str, str]:
        """A new shell with the printed lines pasted in."""
        return {**_base_env(), **self.exports}


@pytest.fixture(scope="module")
def demo(llama_server_binary: Path) -> Iterator[DemoStack]:
    assert SERVER_ARGS, "the README no longer shows the --server-args example"
    argv = [*CLI, "demo", "--serve", f"--server-args={SERVER_ARGS.group(1)}"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**_base_env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    assert proc.stdout is not None
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("export LLAMATELEMETRY_TOP_GATEWAY="):
                break
        output = "".join(lines)
        assert "export LLAMATELEMETRY_TOP_GATEWAY=" in output, f"demo --serve printed no way in:\n{output[-3000:]}"
        # keep draining its output so the demo never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield DemoStack(proc, output)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- 1. demo --serve prints the way in ------------------------------------------------------------

def test_serve_prints_an_export_line_for_every_service(demo: DemoStack) -> None:
    env = demo.exports
    assert set(env) >= {"LLAMA_SERVER_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL",
                        "ANTHROPIC_AUTH_TOKEN", "LLAMATELEMETRY_TOP_EXPORTER", "LLAMATELEMETRY_TOP_GATEWAY"}
    assert httpx.get(env["LLAMA_SERVER_URL"] + "/health", timeout=10).json()["status"] == "ok"
    assert "llamatelemetry_target_up" in httpx.get(env["LLAMATELEMETRY_TOP_EXPORTER"] + "/metrics", timeout=10).text
    assert httpx.get(env["LLAMATELEMETRY_TOP_GATEWAY"] + "/health", timeout=10).text == "ok"
    assert httpx.get(env["OPENAI_BASE_URL"] + "/models", timeout=10).status_code == 200  # through the gateway
    # --server-args reached llama-server: the README's example asks for 4 slots (the demo's own default is 2)
    assert httpx.get(env["LLAMA_SERVER_URL"] + "/props", timeout=10).json()["total_slots"] == 4
    # the README shows the same lines (with other ports)
    shown = parse_exports(next(code for lang, code in BLOCKS if lang == "text" and "export LLAMA_SERVER_URL=" in code))
    assert set(shown) == set(env)


@pytest.mark.parametrize("index", range(len(ONE_SHOT_BLOCKS)))
def test_readme_python_snippet_runs_against_the_demo(demo: DemoStack, index: int, tmp_path: Path) -> None:
    """Each snippet as written, in a shell that only has the demo's exported lines (no port of our own)."""
    code = ONE_SHOT_BLOCKS[index]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=demo.env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"README python block failed against the demo:\n{code}\n{proc.stderr[-3000:]}"
    if "client.slots.save(" in code:  # "every endpoint" needs --slot-save-path: the demo has it
        assert "NotSupportedError" not in proc.stderr
    if "stream=True" in code and "answering" in code:  # the streaming snippet: thinking, then the answer apart
        thinking, _, answer = proc.stdout.partition("\nanswer: ")
        assert thinking.strip() and answer.strip(), proc.stdout
        assert "</think>" not in answer and answer.splitlines()[0].strip(), proc.stdout
    if 'endpoint="http://127.0.0.1:4318"' in code:  # configure() with no collector running (nothing on 4318 here)
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 4318)) == 0:
                pytest.skip("something listens on 127.0.0.1:4318 on this machine")
        warnings = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(warnings) == 1 and warnings[0].startswith("cannot export telemetry over OTLP to http://127.0.0.1:4318"), proc.stderr
        assert "Transient error" not in proc.stderr
        print(f"configure() snippet with no collector: {elapsed:.2f}s in all")


def test_shutdown_skips_the_flush_when_no_collector_listens() -> None:
    """The README's configure() snippet with nothing on the endpoint: it spent 1.8-2.0 s in the SDK's retries."""
    import llamatelemetry

    providers = llamatelemetry.configure(service_name="my-agent", endpoint=f"http://127.0.0.1:{free_port()}", set_global=False)
    providers.tracer_provider.get_tracer("walkthrough").start_span("call").end()
    providers.meter_provider.get_meter("walkthrough").create_counter("calls").add(1)
    started = time.monotonic()
    providers.shutdown()
    elapsed = time.monotonic() - started
    print(f"shutdown with a refusing endpoint: {elapsed:.3f}s")
    assert elapsed < 1.0, elapsed  # the flush bound is 2 s; the retries used all of it


# --- 3. the client's Prometheus example, scraped by a real Prometheus -----------------------------

def test_client_prometheus_example_keeps_serving_for_a_real_prometheus(demo: DemoStack, tmp_path: Path) -> None:
    assert len(SERVING_BLOCKS) == 1
    port = free_port()
    env = {**demo.env, "OTEL_EXPORTER_PROMETHEUS_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVING_BLOCKS[0]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"http://127.0.0.1:{port}/metrics"
        # the scrape job exactly as the README shows it beside the snippet, pointed at the snippet's port
        job = next(yaml.safe_load(code) for lang, code in BLOCKS
                   if lang == "yaml" and "job_name: my-agent" in code)["scrape_configs"][0]
        targets = [t.replace(":9464", f":{port}") for t in job["static_configs"][0]["targets"]]
        with start_prometheus({job["job_name"]: targets}) as prom:
            prom.wait_for('up{job="my-agent"} == 1', timeout=30)
            found = prom.wait_for('gen_ai_client_operation_duration_seconds_count{job="my-agent"} > 0', timeout=30)
            assert found[0]["metric"]["gen_ai_operation_name"] == "chat"
            time.sleep(6)  # a second call later, the process still serves
            assert proc.poll() is None
            assert prom.value('up{job="my-agent"}') == 1
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the snippet says
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- top with the exported URLs, and its keys in a real terminal ---------------------------------

def _traffic(demo: DemoStack, n: int) -> None:
    with openai.OpenAI() as client:  # OPENAI_BASE_URL / OPENAI_API_KEY from the pasted lines
        for i in range(n):
            client.chat.completions.create(model="scripted", messages=HI, max_tokens=8 if i % 4 == 0 else 64)  # type: ignore[arg-type]


def test_top_once_with_the_exported_urls(demo: DemoStack, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.setenv(key, demo.exports[key])
    _traffic(demo, 3)
    proc = subprocess.run([*CLI, "top", "--once"], env=demo.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "exporter up" in first and "gateway up" in first
    assert re.search(r"rates over \d+\.\ds", first) and "window" not in first  # --once says what its numbers cover


def test_top_keys_in_a_real_terminal(demo: DemoStack, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.setenv(key, demo.exports[key])
    _traffic(demo, 30)  # more recent requests than the RECENT panel has rows: it scrolls
    env = {k: demo.env[k] for k in ("LLAMATELEMETRY_TOP_EXPORTER", "LLAMATELEMETRY_TOP_GATEWAY")}
    env.update({"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    with TmuxSession([*CLI, "top", "--interval", "0.5"], width=80, height=24, env=env) as term:
        def last_line(s: str) -> str:
            return (s.rstrip().splitlines() or [""])[-1]

        # A capture can fall between two of Textual's partial repaints: wait for a whole frame,
        # footer included, and fail with the last screen if it never comes.
        screen = term.wait_for(lambda s: "RECENT" in s and "openai-python" in s and "exporter up" in s
                               and "Quit" in last_line(s), timeout=60)
        footer = last_line(screen)
        for key in ("q Quit", "p Pause", "z Zoom", "r Refresh"):
            assert key in footer, footer
        recent = screen.split(" RECENT", 1)[1].splitlines()[1:-1]
        assert len(recent) >= 5
        for line in recent:  # no scrollbar thumb (a block glyph) at the row's edge
            assert not re.search(r"[▁▂▃▄▅▆▇█]\s*$", line), screen
        # z zooms the focused panel (SERVERS, focused at start): it fills the screen under the status line,
        # without Textual's hatch around a centred panel; the footer stays
        term.send_keys("z")
        zoomed = term.wait_for(lambda s: "SERVERS" in s and "RECENT" not in s, what="the zoomed panel")
        lines = zoomed.splitlines()
        assert "exporter up" in lines[0] and lines[1].lstrip().startswith("SERVERS"), zoomed  # top-aligned, status kept
        assert not any(ch in zoomed for ch in "╲╱╳"), zoomed
        assert "r Refresh" in zoomed.rstrip().splitlines()[-1]
        term.send_keys("z")
        term.wait_for(lambda s: "SERVERS" in s and "RECENT" in s, what="the panels back")
        # r refreshes now: with a 1-hour interval, only r can bring a new request on screen
    with TmuxSession([*CLI, "top", "--interval", "3600"], width=80, height=24, env=env) as term:
        term.wait_for(lambda s: "RECENT" in s and "openai-python" in s, timeout=60)
        before = term.screen()
        httpx.post(demo.exports["OPENAI_BASE_URL"] + "/chat/completions", headers={"X-Client-Name": "refresh-check"},
                   json={"model": "scripted", "messages": HI, "max_tokens": 16}, timeout=30)
        time.sleep(1.5)
        assert "refresh-check" not in term.screen() and "refresh-check" not in before
        term.send_keys("r")
        term.wait_for(lambda s: "refresh-check" in s, timeout=15, what="the refresh that r asked for")


# --- 2 and 6. the gateway tells the truth ----------------------------------------------------------

def _start_proxy(*args: str) -> tuple[subprocess.Popen[str], int, int]:
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([*CLI, "proxy", *args, "--port", str(port), "--admin-port", str(admin)],
                            env={**_base_env(), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{admin}/health", timeout=2)
            return proc, port, admin
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_gateway_with_a_dead_upstream_says_so() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc, port, admin = _start_proxy("--upstream", dead)
    try:
        health = httpx.get(f"http://127.0.0.1:{admin}/health", timeout=10)
        for _ in range(50):  # the first check runs right after start
            if health.status_code == 503:
                break
            time.sleep(0.1)
            health = httpx.get(f"http://127.0.0.1:{admin}/health", timeout=10)
        assert health.status_code == 503 and dead in health.text and "unreachable" in health.text
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
        assert f'llamatelemetry_proxy_upstream_up{{upstream="{dead}"}} 0.0' in metrics
        for _ in range(5):
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": HI},
                                headers={"user-agent": "curl/8.5.0", "x-client-name": "my tool"}, timeout=10)
            assert answer.status_code == 502
        time.sleep(0.5)
        recent = httpx.get(f"http://127.0.0.1:{admin}/api/recent", timeout=10).json()["requests"]
        assert [r["status"] for r in recent] == [502] * 5  # what the client received, not null
        assert {r["client"] for r in recent} == {"curl"}
        top = subprocess.run([*CLI, "top", "--once", "--gateway", f"http://127.0.0.1:{admin}", "--exporter", dead],
                             env=_base_env(), capture_output=True, text=True, timeout=60)
        assert "gateway up upstream DOWN" in top.stdout.splitlines()[0], top.stdout
        assert f"the gateway cannot reach {dead}" in top.stdout
    finally:
        out = _stop(proc)
    # a warning at start, one line for the failed requests (rate-limited: 5 in a row give one), one for "my tool"
    assert re.search(rf"upstream {re.escape(dead)} unreachable .*requests to it are answered 502", out), out
    per_request = [line for line in out.splitlines() if "answered 502;" in line]
    assert len(per_request) <= 1, out
    assert sum("X-Client-Name 'my tool' ignored" in line for line in out.splitlines()) == 1, out
    assert "recorded as 'curl'" in out


def test_gateway_names_the_client_of_an_empty_answer_and_shows_raised_budgets(demo: DemoStack) -> None:
    upstream = demo.exports["LLAMA_SERVER_URL"]
    proc, port, admin = _start_proxy("--upstream", upstream, "--min-max-tokens", "8")
    try:
        assert httpx.get(f"http://127.0.0.1:{admin}/health", timeout=10).text == "ok"
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        raised = httpx.post(url, json={"messages": HI, "max_tokens": 2}, headers={"x-client-name": "my-tool"}, timeout=30)
        assert raised.status_code == 200
        time.sleep(1.0)
        newest = httpx.get(f"http://127.0.0.1:{admin}/api/recent", timeout=10).json()["requests"][0]
        assert newest["max_tokens_raised_from"] == 2 and newest["client"] == "my-tool"
        assert newest["budget_exhausted"]  # 8 tokens are still inside the scripted model's thinking
    finally:
        out = _stop(proc)
    assert "returned an empty answer to client 'my-tool'" in out, out


# --- 10. no GPU: no error rate -----------------------------------------------------------------------

def test_no_gpu_exporter_shows_no_error_rate(demo: DemoStack) -> None:
    exporter = demo.exports["LLAMATELEMETRY_TOP_EXPORTER"]
    text = httpx.get(exporter + "/metrics", timeout=10).text
    assert 'llamatelemetry_collector_up{collector="gpu"} 0.0' in text, "this machine has a GPU: the test needs none"
    with start_prometheus({"llamatelemetry-exporter": [exporter.removeprefix("http://")]}) as prom:
        prom.wait_for('up{job="llamatelemetry-exporter"} == 1')
        time.sleep(6)  # several scrapes
        errors = prom.value('increase(llamatelemetry_scrape_errors_total{collector="gpu"}[1m])')
        assert errors == 0, errors
        # the dashboard's own "errors/s" query shows nothing for the GPU
        rate = prom.query('sum by (collector) (rate(llamatelemetry_scrape_errors_total{collector="gpu"}[1m]))')
        assert all(float(r["value"][1]) == 0 for r in rate)
        assert prom.value('llamatelemetry_collector_up{collector="gpu"}') == 0


# --- 7. the fleet's commands, as written, on loopback, data ignored by git -------------------------

def _bash_line(prefix: str) -> str:
    return next(line.strip() for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()
                if line.strip().startswith(prefix))


def _listeners(pid: int) -> set[str]:
    """host:port this process listens on (from /proc: the sockets of the pid, matched in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                addr, port = cols[1].split(":")
                ip = socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr
                found.add(f"{ip}:{int(port, 16)}")
    return found


def test_fleet_commands_bind_loopback_and_keep_data_out_of_the_clone(tmp_path: Path) -> None:
    binary = prometheus_binary()
    assert binary
    central_cmd = _bash_line("prometheus --config.file=deploy/prometheus-central.yml")
    agent_cmd = _bash_line(f"prometheus {' '.join(agent_mode_flags(binary))}")
    assert "--web.listen-address=127.0.0.1:9090" in central_cmd and "--web.listen-address=127.0.0.1:9091" in agent_cmd
    # A copy of the clone's layout (rule paths are relative to the configs), on free ports: the machine is shared.
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy", ignore=shutil.ignore_patterns("kubernetes"))
    shutil.copytree(ROOT / "collector", tmp_path / "collector")
    central_port, agent_port = free_port(), free_port()
    agent_config = tmp_path / "deploy" / "prometheus-agent.yml"
    agent_config.write_text(agent_config.read_text().replace(
        "http://prometheus-central:9090/api/v1/write", f"http://127.0.0.1:{central_port}/api/v1/write"))
    env = {**_base_env(), "LLAMATELEMETRY_HOST": "gpu-01", "LLAMATELEMETRY_CLUSTER": "lab"}
    procs = []
    try:
        for cmd, port, default in ((central_cmd, central_port, 9090), (agent_cmd, agent_port, 9091)):
            argv = shlex.split(cmd.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}"))
            argv[0] = binary
            procs.append(subprocess.Popen([*argv, "--log.level=warn"], cwd=tmp_path, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for proc, port in zip(procs, (central_port, agent_port)):
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, f"prometheus on {port} did not start"
                time.sleep(0.2)
            assert _listeners(proc.pid) == {f"127.0.0.1:{port}"}  # loopback only, not 0.0.0.0:9090
        # the agent's samples reach the central one with the host label
        deadline = time.monotonic() + 60
        while True:
            body = httpx.get(f"http://127.0.0.1:{central_port}/api/v1/query", params={"query": 'up{host="gpu-01"}'}, timeout=5).json()
            if body["data"]["result"]:
                break
            assert time.monotonic() < deadline, body
            time.sleep(1)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # an agent may linger flushing remote write to a stopped central
                proc.kill()
                proc.wait()
    assert (tmp_path / "data" / "central").is_dir() and (tmp_path / "data" / "agent").is_dir()
    for path in ("data/central/wal", "data/agent/wal"):  # where the commands write, run from the clone
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"


def test_kubernetes_manifests_render_offline() -> None:
    command = _bash_line("kubectl kustomize")
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: scripts/test.sh installs it (Debian: apt-get install kubernetes-client)"
    proc = subprocess.run([kubectl, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(proc.stdout) if doc}
    assert {"DaemonSet", "Deployment", "PrometheusRule", "ServiceMonitor"} <= kinds
    assert "image: llamatelemetry:0.1.0" in proc.stdout  # what the README says to replace with a pushed image


def test_build_rules_help_does_not_rewrite_the_file() -> None:
    target = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
    before = (target.read_bytes(), target.stat().st_mtime_ns)
    proc = subprocess.run([sys.executable, "deploy/kubernetes/build_rules.py", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--check" in proc.stdout
    assert (target.read_bytes(), target.stat().st_mtime_ns) == before
    check = subprocess.run([sys.executable, "deploy/kubernetes/build_rules.py", "--check"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and "up to date" in check.stdout


# --- 11. wording ---------------------------------------------------------------------------------------

def test_a_bad_binary_path_is_not_called_a_build_failure(tmp_path: Path) -> None:
    env = {**_base_env(), "LLAMATELEMETRY_LLAMA_SERVER": str(tmp_path / "no-such-llama-server")}
    proc = subprocess.run([*CLI, "demo"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "could not build" not in proc.stderr
    assert f"LLAMATELEMETRY_LLAMA_SERVER={tmp_path / 'no-such-llama-server'} is not an executable file" in proc.stderr


def test_a_bad_probe_target_is_explained_in_probe_terms(demo: DemoStack) -> None:
    answer = httpx.get(demo.exports["LLAMATELEMETRY_TOP_EXPORTER"] + "/probe", params={"target": "coder"}, timeout=10)
    assert answer.status_code == 400
    assert "--target" not in answer.text and "/probe?target=http://127.0.0.1:8080" in answer.text


def test_a_501_names_the_flag_once(llama_server_factory) -> None:  # noqa: ANN001
    from llamatelemetry import LlamaCppClient
    from llamatelemetry.errors import NotSupportedError

    server = llama_server_factory()  # no --slot-save-path
    with LlamaCppClient(server.base_url, telemetry=False) as client, pytest.raises(NotSupportedError) as caught:
        client.slots.save(0, "slot0.bin")
    assert caught.value.flag == "--slot-save-path"
    assert str(caught.value).count("--slot-save-path") == 1, str(caught.value)
