"""``llamatelemetry top`` in a real terminal: tmux runs it, ``send-keys`` presses keys, ``capture-pane``
reads what a person would see. Real llama-server, real exporter (fake NVML: no GPU here).

Set ``LLAMATELEMETRY_TOP_SCREENSHOT=path`` to keep the captured 80x24 screen (the README's screenshot).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from tmux_helpers import TmuxSession

from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.provision.server import LlamaServer, free_port

try:  # the fake NVML moves from the package to tests/ (branch exporter); work with either place
    from fake_nvml import FakeNVML, FakeProcess  # type: ignore[import-not-found]
except ImportError:
    from llamatelemetry.exporter.fake_nvml import FakeNVML, FakeProcess


def top_command(*args: str) -> list[str]:
    """``llamatelemetry top ...`` as a user runs it (the console script when installed, else ``python -m``)."""
    script = shutil.which("llamatelemetry")
    in_this_tree = script is not None and Path(script).parent == Path(sys.executable).parent
    return ([script, "top"] if in_this_tree else [sys.executable, "-m", "llamatelemetry.cli", "top"]) + list(args)  # type: ignore[list-item]


@pytest.fixture(scope="module")
def server(llama_server_factory) -> LlamaServer:  # noqa: ANN001
    return llama_server_factory("--metrics", parallel=2)


@pytest.fixture
def exporter(server: LlamaServer) -> Iterator[ExporterApp]:
    nvml = FakeNVML()
    nvml.gpus[0].processes.append(FakeProcess(server.pid, 3 * 1024**3))
    with ExporterApp(ExporterConfig(targets=[f"demo={server.base_url}"], port=0, timeout=1.0), nvml=nvml) as running:
        yield running


@pytest.fixture
def traffic(server: LlamaServer) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                client.post(server.base_url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30})
                stop.wait(0.2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=30)


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "PATH": os.environ.get("PATH", "")}


def _row(screen: str, first: str) -> list[str]:
    for line in screen.splitlines():
        if line.split()[:1] == [first]:
            return line.split()
    return []


def test_what_a_person_sees_at_80x24(exporter: ExporterApp, traffic: None) -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    with TmuxSession(top_command("--exporter", exporter.url, "--gateway", gateway, "--interval", "0.5"), env=_env()) as term:
        screen = term.wait_for(lambda s: _row(s, "demo")[1:2] == ["ok"] and re.search(r"demo\s+ok\s+\S+\s+\d", s) is not None,
                               what="the demo server's row with a token rate")
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        # Every panel's header row is on the one screen.
        for title in ("SERVERS", "SLOTS", "CLIENTS", "GPUS", "RECENT"):
            assert any(line.lstrip().startswith(title) for line in lines), f"{title} missing:\n{screen}"
        assert float(_row(screen, "demo")[3]) > 0  # generated tokens per second
        assert _row(screen, "demo#0")[1:3] in (["·", "idle"], ["▶", "busy"])
        assert "NVIDIA Fake A100" in screen and "3.0G" in screen
        assert f"gateway DOWN (connection refused)" in screen
        if os.environ.get("LLAMATELEMETRY_TOP_SCREENSHOT"):
            Path(os.environ["LLAMATELEMETRY_TOP_SCREENSHOT"]).write_text(screen)

        term.send_keys("p")
        term.wait_for(lambda s: "PAUSED" in s, what="PAUSED")
        term.send_keys("p")
        term.wait_for(lambda s: "PAUSED" not in s, what="PAUSED to go")
        term.resize(100, 30)
        term.wait_for(lambda s: len(s.splitlines()) == 30 and "SERVERS" in s and "RECENT" in s, what="the resized screen")
        term.send_keys("q")
        term.wait_for(lambda s: term.exited(), timeout=10, what="top to quit on q")


def test_monochrome_terminal_gets_no_colours_but_keeps_the_marks(exporter: ExporterApp) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # a gateway that is not running: the header says DOWN
    with TmuxSession(top_command("--exporter", exporter.url, "--gateway", gone), env={**_env(), "NO_COLOR": "1"}) as term:
        term.wait_for(lambda s: _row(s, "demo")[1:2] == ["ok"], what="the demo row")
        raw = term.screen(escapes=True)
        colours = [int(n) for n in re.findall(r"\x1b\[[0-9;]*?[34]8;5;(\d+)", raw)]
        assert colours, "expected some SGR codes"
        # Only the grey ramp (and black/white): no hue anywhere.
        assert all(n >= 232 or n in (0, 7, 8, 15, 16, 231) for n in colours), sorted(set(colours))
        assert re.search(r"\x1b\[[0-9;]*7m[^\x1b]*DOWN", raw)  # the alert is reverse video, readable without colour
        term.send_keys("q")
        term.wait_for(lambda s: term.exited(), timeout=10, what="top to quit")
