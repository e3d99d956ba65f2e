"""`llamatelemetry demo` end to end, as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import httpx

from llamatelemetry.provision.model import REASONING_TOKENS
from llamatelemetry.provision.server import free_port

from test_otlp import OtlpReceiver

DEMO = [sys.executable, "-m", "llamatelemetry.cli", "demo"]


def _servers_running() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "scripted-reasoner.gguf"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _sections(out: str) -> dict[str, list[str]]:
    """The demo's output per request: each two-space heading with the lines indented under it."""
    sections: dict[str, list[str]] = {}
    rows: list[str] = []
    for line in out.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            rows = sections.setdefault(line.strip(), [])
        elif line.startswith("    "):
            rows.append(line.strip())
    return sections


def _finish(row: str) -> str:
    return re.search(r"finish=(\S+)", row).group(1)  # type: ignore[union-attr]


def _check_each_section_shows_its_own_request(out: str) -> None:
    """Each heading shows the span of the request sent under it — not the previous request's, late."""
    lines = _sections(out)
    s = {title: [row for row in rows if "finish=" in row] for title, rows in lines.items()}  # the span rows
    assert [r.split()[0:2] for r in s["plain chat (thinking off)"]] == [["chat", "scripted"]]
    assert _finish(s["plain chat (thinking off)"][0]) == "stop" and "reasoning=  -" in s["plain chat (thinking off)"][0]
    assert len(s["streaming chat"]) == 1 and _finish(s["streaming chat"][0]) == "stop"
    assert "ttft=       -" not in s["streaming chat"][0], "a stream has a time to first chunk"
    assert f"reasoning={REASONING_TOKENS:>3}" in s["reasoning chat"][0] and _finish(s["reasoning chat"][0]) == "stop"
    assert [_finish(r) for r in s["reasoning runs out of max_tokens"]] == ["length"]
    assert any("reasoning used up max_tokens" in row for row in lines["reasoning runs out of max_tokens"])
    assert [_finish(r) for r in s["4 concurrent chats across the slots"]] == ["stop"] * 4
    assert [_finish(r) for r in s["Anthropic-style /v1/messages"]] == ["end_turn"]
    assert [r.split()[0] for r in s["embedding"]] == ["embeddings"]
    assert s["tokenize (no span: not an inference call)"] == []
    for title, finish, client in (("openai SDK (OPENAI_BASE_URL=<proxy>/v1)", "stop", "openai-python"),
                                  ("anthropic SDK (ANTHROPIC_BASE_URL=<proxy>)", "end_turn", "anthropic-python")):
        assert [_finish(r) for r in s[title]] == [finish], title
        assert f"client={client} kind=SERVER (the gateway's span)" in lines[title], title


def test_demo_runs_everything_and_cleans_up(llama_server_binary):
    before = _servers_running()
    proc = subprocess.run(DEMO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "streaming chat" in out and f"reasoning={REASONING_TOKENS:>3}" in out and "ttft=" in out
    assert "reasoning used up max_tokens" in out
    assert "spent 8 reasoning tokens" in proc.stderr  # the one clear warning
    assert out.count("chat scripted") >= 8
    assert "llamacpp_tokens_predicted_total" in out and 'llamatelemetry_target_up{target="demo"} 1' in out
    assert "everything the demo started is stopped" in out
    assert "client=openai-python kind=SERVER" in out and "client=anthropic-python kind=SERVER" in out
    _check_each_section_shows_its_own_request(out)
    assert _servers_running() == before


def test_demo_against_own_target_exports_otlp(full_server):
    receiver = OtlpReceiver()
    try:
        proc = subprocess.run(DEMO + ["--target", full_server.base_url, "--otlp-endpoint", receiver.url],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"llama-server {full_server.base_url} is ready" in proc.stdout
        names = [s.name for s in receiver.spans()]
        assert names.count("chat scripted") >= 8 and "embeddings scripted" in names
        assert "gen_ai.client.operation.duration" in receiver.metric_names()
    finally:
        receiver.close()


def test_demo_unreachable_target_fails_clearly():
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(DEMO + ["--target", url], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2
    assert "not reachable" in proc.stderr and url in proc.stderr and "start llama-server" in proc.stderr


def test_demo_ctrl_c_stops_everything(llama_server_binary):
    before = _servers_running()
    proc = subprocess.Popen(DEMO + ["--serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Serving:"):
                break
            assert time.monotonic() < deadline
        assert _servers_running() - before, "the embedded llama-server should be running while serving"
        # The demo says how to watch it live, and the command it prints works against what it serves:
        # the server through the exporter, a request through the gateway it keeps running.
        hint = proc.stdout.readline()
        assert hint.startswith("Live view: run `llamatelemetry top --exporter "), hint
        command = shlex.split(hint.split("`")[1])
        gateway = re.search(r"gateway (http://\S+) ", line)
        assert gateway and "--gateway" in command, line
        httpx.post(gateway.group(1) + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64},
                   headers={"X-Client-Name": "demo-test"}, timeout=30).raise_for_status()
        top = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", *command[1:], "--json", "--interval", "0.2"],
                             capture_output=True, text=True, timeout=60)
        view = json.loads(top.stdout)
        assert [(s["target"], s["state"]) for s in view["servers"]] == [("demo", "ok")], top.stdout + top.stderr
        assert view["gateway"]["up"] and [r["client"] for r in view["recent"]][:1] == ["demo-test"], top.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _servers_running() == before


def test_demo_without_toolchain_fails_clearly(tmp_path):
    """A machine without cmake and a compiler: exit 2 with what to install, before any download."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "LLAMATELEMETRY_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(DEMO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cmake" in proc.stderr and "apt-get install cmake g++" in proc.stderr
    assert "LLAMATELEMETRY_LLAMA_SERVER" in proc.stderr
    assert not any((tmp_path / "cache").rglob("*.tar.gz")), "nothing should be downloaded"
