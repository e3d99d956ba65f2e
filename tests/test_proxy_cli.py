"""`llamatelemetry proxy` as a user runs it: a subprocess, real llama-servers, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx

from llamatelemetry.provision.server import free_port

PROXY = [sys.executable, "-m", "llamatelemetry.cli", "proxy"]


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*PROXY, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def test_routes_admin_and_clean_exit(full_server, bare_server):
    port, second, admin = free_port(), free_port(), free_port()
    proc = _start("--upstream", full_server.base_url, "--port", str(port), "--admin-port", str(admin),
                  "--route", f"{second}={bare_server.base_url}")
    try:
        _wait_up(f"http://127.0.0.1:{admin}/health", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/slots").status_code == 200      # full_server has /slots
        assert httpx.get(f"http://127.0.0.1:{second}/slots").status_code == 501    # bare_server: --no-slots
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64})
        assert chat.status_code == 200
        time.sleep(0.2)
        recent = httpx.get(f"http://127.0.0.1:{admin}/api/recent").json()["requests"]
        assert recent[0]["endpoint"] == "/v1/chat/completions" and recent[0]["output_tokens"] == chat.json()["usage"]["completion_tokens"]
        assert {r["upstream"] for r in recent} == {full_server.base_url, bare_server.base_url}
        assert "gen_ai_server_request_duration_seconds_bucket" in httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        out = proc.stdout.read()
        assert f"http://127.0.0.1:{port} -> {full_server.base_url}" in out and f"http://127.0.0.1:{admin}/metrics" in out
        assert "other machines" not in out  # loopback by default: nothing to warn about
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_fails_clearly(full_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run([*PROXY, "--upstream", full_server.base_url, "--port", str(port), "--admin-port", "0"],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in proc.stderr and "pick another port" in proc.stderr


def test_listening_beyond_loopback_is_announced():
    port, admin = free_port(), free_port()
    proc = _start("--upstream", f"http://127.0.0.1:{free_port()}", "--listen", "0.0.0.0", "--port", str(port),
                  "--admin-port", str(admin))
    try:
        _wait_up(f"http://127.0.0.1:{admin}/health", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "listening on 0.0.0.0: other machines can use llama-server through it" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_route_is_rejected():
    proc = subprocess.run([*PROXY, "--route", "http://127.0.0.1:8080"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "PORT=URL" in proc.stderr


def test_exports_over_otlp_with_the_standard_variables(full_server):
    """OTEL_EXPORTER_OTLP_ENDPOINT set: spans and metrics also go to the collector (flushed at exit)."""
    from test_otlp import OtlpReceiver

    receiver = OtlpReceiver()
    port, admin = free_port(), free_port()
    proc = _start("--upstream", full_server.base_url, "--port", str(port), "--admin-port", str(admin),
                  env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "gateway-under-test"})
    try:
        _wait_up(f"http://127.0.0.1:{admin}/health", proc)
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"user-agent": "curl/8.5.0"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64})
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        spans = receiver.spans()
        assert [s.name for s in spans] == ["chat"]  # the request named no model
        assert spans[0].kind == 2  # SPAN_KIND_SERVER in OTLP
        assert {"gen_ai.server.request.duration", "llamatelemetry.proxy.requests"} <= receiver.metric_names()
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.close()
