"""Every command and code example in the README is exercised, so the README cannot rot.

Python blocks run as written against a real llama-server (via ``$LLAMA_SERVER_URL``). Each bash
command is either run here or mapped below to the test that covers it; a new command that is
neither makes this test fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llamatelemetry.provision.server import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
# The snippet that serves until Ctrl-C (the client's Prometheus endpoint) is run by
# tests/test_walkthrough.py, which scrapes it with a real Prometheus and then presses Ctrl-C.
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python" and "except KeyboardInterrupt" not in code]


def _bash_commands() -> list[str]:
    commands = []
    for lang, code in BLOCKS:
        if lang != "bash":
            continue
        for line in code.splitlines():
            line = line.split(" #")[0].strip() if not line.strip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


# Commands covered elsewhere (the test named) or that only prepare the user's machine.
COVERED_ELSEWHERE = {
    "scripts/test.sh": "this very test run (.ci/run executes it; checked below)",
    "scripts/build-stack.sh": "tests/stack_helpers.py stack_binaries() runs it for every test that needs the collector or Jaeger",
    "docker compose up -d --build": "tests/test_stack_config.py validates docker-compose.yml offline",
    "docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d --build": "tests/test_stack_config.py validates both files",
    "pip install -e '.[bench]'": "installation step",
    "docker build -t llamatelemetry-exporter .": "tests/test_stack_config.py checks the Dockerfile (no Docker engine here)",
    "docker run --rm -p 127.0.0.1:9183:9183 --add-host=host.docker.internal:host-gateway llamatelemetry-exporter --target http://host.docker.internal:8080":
        "tests/test_stack_config.py::test_exporter_image_listens_on_all_interfaces_with_only_a_target parses these arguments with the image's environment",
    "prometheus --config.file=deploy/prometheus-central.yml --web.enable-remote-write-receiver --web.listen-address=127.0.0.1:9090 --storage.tsdb.path=data/central":
        "tests/test_walkthrough.py::test_fleet_commands_bind_loopback_and_keep_data_out_of_the_clone runs it as written "
        "(on a free port); tests/test_fleet.py runs a fleet with this config and flag",
    "prometheus --enable-feature=agent,expand-external-labels --config.file=deploy/prometheus-agent.yml --web.listen-address=127.0.0.1:9091 --storage.agent.path=data/agent":
        "tests/test_walkthrough.py runs it as written beside the central one (free ports); tests/test_fleet.py "
        "starts two agents with this config and these flags (test_readme_commands_are_the_ones_tested)",
    "kubectl kustomize deploy/kubernetes": "tests/test_walkthrough.py::test_kubernetes_manifests_render_offline runs it",
    "docker build -t registry.example.com/llamatelemetry:0.1.0 .": "tests/test_stack_config.py checks the Dockerfile (no Docker engine here)",
    "docker push registry.example.com/llamatelemetry:0.1.0": "needs a registry of the user's (no Docker engine here)",
    "LLAMATELEMETRY_HOST=gpu-01 OTEL_GATEWAY_DNS=otel-gateway.internal otelcol-contrib --config=deploy/otel-agent.yaml":
        "tests/test_fleet.py runs this config with our collector build (same release) and these variables; "
        "tests/test_deploy_collector.py runs `otelcol validate` on it",
    "JAEGER_OTLP_ENDPOINT=jaeger.internal:4317 otelcol-contrib --config=deploy/otel-gateway.yaml":
        "tests/test_fleet.py runs two gateways on this config with our collector build (same release)",
    "kubectl apply -k deploy/kubernetes": "tests/test_kubernetes.py validates every manifest (no cluster here)",
    "pip install -e '.[exporter]'": "installation step (the test environment has the exporter extra installed)",
    'claude -p "Say hello."': "tests/test_agent_cli.py runs this command line (and the exports above it) with Claude Code "
                              "through a real gateway in front of a real llama-server, offline",
    "aider --model openai/my-model": "tests/test_proxy.py drives the gateway with the openai SDK, which aider uses through LiteLLM",
    "llamatelemetry top": "tests/test_top_terminal.py runs it in tmux (80x24, --exporter/--gateway at the test's ports)",
    "llama-server --models-dir ~/models --models-max 1 --sleep-idle-seconds 300 --port 8080":
        "tests/test_proxy_router.py runs a router with --models-dir, --models-max 1 and --sleep-idle-seconds (shorter) behind the gateway",
    "llamatelemetry top --router http://127.0.0.1:8080": "tests/test_top_router.py runs top --router (--json, --once) against a real router",
}
SETUP_PREFIXES = ("export ", "mkdir -p models")


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_example_runs(index, full_server, tmp_path):
    code = PYTHON_BLOCKS[index]
    env = {**os.environ, "LLAMA_SERVER_URL": full_server.base_url, "OTEL_METRIC_EXPORT_INTERVAL": "100000",
           # the Prometheus example's port (9464 by default) may be taken on a shared machine
           "OTEL_EXPORTER_PROMETHEUS_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"README python block {index} failed:\n{code}\n{proc.stderr}"


def test_every_bash_command_is_exercised():
    for command in _bash_commands():
        if command in COVERED_ELSEWHERE or command.startswith(SETUP_PREFIXES):
            continue
        assert command in RUN_HERE, f"README command not exercised by any test: {command!r}"


def test_ci_runs_the_readme_test_command():
    assert "scripts/test.sh" in _bash_commands()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def _run_demo_script() -> None:
    """scripts/demo.sh as a user runs it, with its virtual environment in a temporary directory (not the
    clone's .venv): it must not touch the Python it was started with."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="demo-venv-") as venv:
        env = {**os.environ, "LLAMATELEMETRY_VENV": venv}
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"installed into {venv}" in proc.stdout
        assert Path(venv, "bin", "llamatelemetry").exists()
    assert "reasoning used up max_tokens" in proc.stdout and "everything the demo started is stopped" in proc.stdout


def _run_exporter_command() -> None:
    port = free_port()
    argv = "llamatelemetry exporter --target http://127.0.0.1:8080 --target big=http://127.0.0.1:7109".split()
    env = {**os.environ, "LLAMATELEMETRY_EXPORTER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "llamatelemetry.cli", *argv[1:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "exporter did not start"
                time.sleep(0.2)
        assert 'llamatelemetry_target_up{target="big"}' in text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run_proxy_command() -> None:
    """The README's command as written; ports from the environment. Whatever runs on :8080 (usually
    nothing here), the gateway must start, and its admin /health and its answers must agree: ok and
    forwarded, or 503 naming the upstream and 502."""
    port, admin = free_port(), free_port()
    argv = "llamatelemetry proxy --upstream http://127.0.0.1:8080".split()
    env = {**os.environ, "LLAMATELEMETRY_PROXY_PORT": str(port), "LLAMATELEMETRY_PROXY_ADMIN_PORT": str(admin)}
    proc = subprocess.Popen([sys.executable, "-m", "llamatelemetry.cli", *argv[1:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{admin}/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None, "proxy did not start"
                time.sleep(0.2)
        resp = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert resp.status_code == 200 or (resp.status_code == 502 and "http://127.0.0.1:8080" in resp.text)
        time.sleep(0.5)  # the gateway's own check of its upstream runs at start
        health = httpx.get(f"http://127.0.0.1:{admin}/health", timeout=5)
        if resp.status_code == 502:
            assert health.status_code == 503 and "http://127.0.0.1:8080" in health.text
        else:
            assert health.text == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run_bench(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x" in proc.stdout


RUN_HERE = {
    "scripts/demo.sh": _run_demo_script,
    "llamatelemetry exporter --target http://127.0.0.1:8080 --target big=http://127.0.0.1:7109": _run_exporter_command,
    "python benchmarks/bench_client.py": lambda: _run_bench("benchmarks/bench_client.py", "--calls", "3", "--rounds", "1"),
    "python benchmarks/bench_exporter.py": lambda: _run_bench("benchmarks/bench_exporter.py", "--requests", "2", "--scrapes", "3"),
    "llamatelemetry proxy --upstream http://127.0.0.1:8080": _run_proxy_command,
    "python benchmarks/bench_proxy.py": lambda: _run_bench("benchmarks/bench_proxy.py", "--short", "5", "--long", "1"),
    "python benchmarks/bench_top.py": lambda: _run_bench("benchmarks/bench_top.py", "--seconds", "4"),
}


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_bash_command_runs(command, llama_server_binary):
    assert command in _bash_commands(), f"{command!r} is no longer in the README; drop it here"
    RUN_HERE[command]()
