"""``llamatelemetry top`` in a real terminal: tmux runs it, ``send-keys`` presses keys, ``capture-pane``
reads what a person would see. Real llama-server, real exporter (fake NVML: no GPU here), the real
gateway (``llamatelemetry proxy``) under traffic from the official openai SDK, empty answers included.

Set ``LLAMATELEMETRY_TOP_SCREENSHOT=path`` to keep the captured 80x24 screen (the README's screenshot).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest
from fake_nvml import FakeNVML, FakeProcess
from gateway_process import GatewayProcess
from tmux_helpers import TmuxSession

from llamatelemetry.exporter import ExporterApp, ExporterConfig
from llamatelemetry.provision.server import LlamaServer, free_port



def top_command(*args: str) -> list[str]:
    """``llamatelemetry top ...`` as a user runs it (the console script when installed, else ``python -m``)."""
    script = shutil.which("llamatelemetry")
    in_this_tree = script is not None and Path(script).parent == Path(sys.executable).parent
    return ([script, "top"] if in_this_tree else [sys.executable, "-m", "llamatelemetry.cli", "top"]) + list(args)  # type: ignore[list-item]


@pytest.fixture(scope="module")
def server(llama_server_factory) -> LlamaServer:  # noqa: ANN001
    return llama_server_factory("--metrics", parallel=2)


@pytest.fixture
def nvml(server: LlamaServer) -> FakeNVML:
    fake = FakeNVML()
    fake.gpus[0].processes.append(FakeProcess(server.pid, 3 * 1024**3))
    return fake


@pytest.fixture
def exporter(server: LlamaServer, nvml: FakeNVML) -> Iterator[ExporterApp]:
    with ExporterApp(ExporterConfig(targets=[f"demo={server.base_url}"], port=0, timeout=1.0), nvml=nvml) as running:
        yield running


@pytest.fixture
def gateway(server: LlamaServer) -> Iterator[GatewayProcess]:
    running = GatewayProcess(server.base_url)
    yield running
    running.stop()


@pytest.fixture
def traffic(gateway: GatewayProcess, nvml: FakeNVML) -> Iterator[None]:
    """An agent-like client through the gateway: answers, a stream, and every 5th request an empty answer.
    The fake GPU spends 4 J per request, so joules per token have something to show."""
    stop = threading.Event()

    def loop() -> None:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused") as client:
            i = 0
            while not stop.is_set():
                i += 1
                hi = [{"role": "user", "content": "hi"}]
                if i % 3 == 0:
                    list(client.chat.completions.create(model="scripted", messages=hi, max_tokens=64, stream=True))  # type: ignore[arg-type]
                else:  # max_tokens 5 stops inside the reasoning: an empty answer
                    client.chat.completions.create(model="scripted", messages=hi, max_tokens=5 if i % 5 == 0 else 64)  # type: ignore[arg-type]
                nvml.gpus[0].energy_mj += 4_000
                stop.wait(0.15)

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


def test_what_a_person_sees_at_80x24(exporter: ExporterApp, gateway: GatewayProcess, traffic: None) -> None:
    command = top_command("--exporter", exporter.url, "--gateway", gateway.admin_url, "--interval", "0.5")
    with TmuxSession(command, env=_env()) as term:
        def ready(s: str) -> bool:
            client = _row(s, "openai-python")
            # an empty answer counted in the window (one sent before top's first read is not in it)
            return (re.search(r"demo\s+ok\s+\S+\s+\d", s) is not None and float(_row(s, "demo")[3]) > 0
                    and len(client) == 9 and client[6].isdigit() and int(client[6]) >= 1 and "EMPTY" in s)

        screen = term.wait_for(ready, what="server, client and an empty answer on screen")
        lines = screen.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        # Every panel's header row is on the one screen.
        for title in ("SERVERS", "SLOTS", "CLIENTS", "GPUS", "RECENT"):
            assert any(line.lstrip().startswith(title) for line in lines), f"{title} missing:\n{screen}"
        assert _row(screen, "demo#0")[1:3] in (["·", "idle"], ["▶", "busy"])
        assert "NVIDIA Fake A100" in screen and "3.0G" in screen
        assert "exporter up  gateway up" in screen
        client = _row(screen, "openai-python")
        assert float(client[1]) > 0 and int(client[6]) >= 1 and client[7] == "0"  # req/min, empty answers, no errors
        empty = [line.split() for line in lines if line.split()[:1] == ["EMPTY"]]
        assert empty and all(cells[2:4] == ["openai-python", "chat/completions"] and cells[5] == "5" for cells in empty)
        # Streamed rows (a TTFT) carry token counts too: the gateway fills them from llama-server's timings.
        header = next(line for line in lines if line.lstrip().startswith("RECENT")).split()
        col = {name: header.index(name) - 1 for name in ("in", "out", "think", "TTFT")}  # rows have no "RECENT" cell
        recent = [line.split() for line in lines if line.split()[:1] != ["EMPTY"] and len(line.split()) >= 8
                  and line.split()[1:2] == ["openai-python"]]
        streamed = [cells for cells in recent if cells[col["TTFT"]] != "–"]
        assert streamed and all(cells[col[c]].isdigit() for cells in streamed for c in ("in", "out", "think")), screen
        if os.environ.get("LLAMATELEMETRY_TOP_SCREENSHOT"):  # a few more seconds of history for the picture
            time.sleep(6)
            Path(os.environ["LLAMATELEMETRY_TOP_SCREENSHOT"]).write_text(term.screen())

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
