"""CPU of ``llamatelemetry top`` itself at a 1 s refresh (target: under 3 % of one core).

Starts a real llama-server (scripted test model, 2 slots, ``--metrics``), the exporter
(``llamatelemetry exporter --no-gpu``) and the gateway (``llamatelemetry proxy``), and sends
openai-SDK traffic through the gateway (a request every ~0.2 s, every 5th an empty answer) so
every panel changes at every refresh. Then, one after the other, for ``--seconds`` each:

* ``tui 80x24``   — ``llamatelemetry top --interval 1`` in a real terminal (tmux), 80x24;
* ``tui 200x50``  — the same on a large terminal (more rows drawn per refresh);
* ``tui idle``    — 80x24 with the traffic paused (only the header and ages change);
* ``reads only``  — the same reads and model at 1 s without any UI (``Sources`` + ``Model`` in a
  loop), to show what the drawing costs on top of fetching and parsing.

CPU is user + system time of the process from ``/proc/<pid>/stat``, measured after start-up
(the first full screen), divided by wall time. Each variant must have refreshed about once a
second (checked from the screen, or from the reads-only loop's own count).

Run: ``python benchmarks/bench_top.py [--seconds 15]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from llamatelemetry.provision.build import ensure_llama_server  # noqa: E402
from llamatelemetry.provision.model import write_scripted_model  # noqa: E402
from llamatelemetry.provision.server import LlamaServer, free_port  # noqa: E402
from tmux_helpers import TmuxSession  # noqa: E402

TARGET_PERCENT = 3.0
CLI = [sys.executable, "-m", "llamatelemetry.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

READS_ONLY = """
import asyncio, sys, time
from llamatelemetry.top.model import Model
from llamatelemetry.top.sources import Sources
async def main():
    model = Model()
    async with Sources(sys.argv[1], sys.argv[2]) as sources:
        while True:
            started = time.monotonic()
            view = model.update(await sources.read())
            print(len(view.servers), len(view.clients), len(view.recent), flush=True)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.1)


class Traffic:
    """openai SDK requests through the gateway in a thread; ``paused`` stops them for the idle variant."""

    def __init__(self, gateway_url: str) -> None:
        self.client = openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused")
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.paused.is_set():
                self.sent += 1
                max_tokens = 5 if self.sent % 5 == 0 else 64
                self.client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=max_tokens)
            self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        self.client.close()


def measure_tui(exporter: str, gateway: str, seconds: float, width: int, height: int) -> tuple[float, int]:
    """CPU % of one core of the TUI, and how many distinct screens it showed (one per refresh)."""
    command = CLI + ["top", "--exporter", exporter, "--gateway", gateway, "--interval", "1"]
    with TmuxSession(command, width=width, height=height, env={"PYTHONPATH": ENV["PYTHONPATH"]}) as term:
        term.wait_for(lambda s: "exporter up  gateway up" in s and "openai-python" in s, what="a full first screen")
        pid = term.pid()  # the pane runs `sh -c "exec ..."`: the pane's pid is top's pid
        screens: set[str] = set()
        start_cpu, start = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - start < seconds:
            screens.add(term.screen())
            time.sleep(0.25)
        used = cpu_seconds(pid) - start_cpu
        wall = time.monotonic() - start
        term.send_keys("q")
    return 100 * used / wall, len(screens)


def measure_reads_only(exporter: str, gateway: str, seconds: float) -> tuple[float, int]:
    proc = subprocess.Popen([sys.executable, "-c", READS_ONLY, exporter, gateway], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # started, first read done
    start_cpu, start = cpu_seconds(proc.pid), time.monotonic()
    reads = 0
    while time.monotonic() - start < seconds:
        line = proc.stdout.readline()
        assert line.split()[0] == "1", f"the reads-only loop saw no server: {line!r}"
        reads += 1
    used = cpu_seconds(proc.pid) - start_cpu
    wall = time.monotonic() - start
    proc.terminate()
    proc.wait()
    return 100 * used / wall, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring time per variant (default %(default)s)")
    args = parser.parse_args()

    binary = ensure_llama_server()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_scripted_model(Path(tmp) / "scripted.gguf")
        with LlamaServer(model, binary=binary, parallel=2, extra_args=["--metrics"]) as server:
            exporter_port, gateway_port, admin_port = free_port(), free_port(), free_port()
            exporter = subprocess.Popen(CLI + ["exporter", "--target", f"demo={server.base_url}", "--port", str(exporter_port), "--no-gpu",
                                               "--log-level", "warning"], env=ENV)
            gateway = subprocess.Popen(CLI + ["proxy", "--upstream", server.base_url, "--port", str(gateway_port),
                                              "--admin-port", str(admin_port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            traffic: Traffic | None = None
            try:
                exporter_url, admin_url = f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{admin_port}"
                wait_http(exporter_url + "/health", exporter, "the exporter")
                wait_http(admin_url + "/health", gateway, "the gateway")
                traffic = Traffic(f"http://127.0.0.1:{gateway_port}")
                results: dict[str, tuple[float, int]] = {}
                results["tui 80x24"] = measure_tui(exporter_url, admin_url, args.seconds, 80, 24)
                results["tui 200x50"] = measure_tui(exporter_url, admin_url, args.seconds, 200, 50)
                results["reads only"] = measure_reads_only(exporter_url, admin_url, args.seconds)
                traffic.paused.set()
                time.sleep(1.5)
                results["tui idle"] = measure_tui(exporter_url, admin_url, args.seconds, 80, 24)
                sent = traffic.sent
            finally:
                if traffic is not None:
                    traffic.close()
                for proc in (exporter, gateway):
                    proc.terminate()
                    proc.wait(timeout=15)

    print(f"\nllamatelemetry top at a 1 s refresh, {args.seconds:.0f} s per variant, {sent} requests sent through the gateway")
    print(f"{'variant':<12} {'CPU % of one core':>18} {'refreshes seen':>15} {'vs target':>10}")
    base = results["reads only"][0]
    for name, (percent, refreshes) in results.items():
        verdict = "ok" if percent < TARGET_PERCENT else "OVER"
        print(f"{name:<12} {percent:>17.2f}% {refreshes:>15} {verdict:>10}")
        # Every variant did its work: about one new screen (or read) per second.
        assert refreshes >= 0.6 * args.seconds, f"{name}: only {refreshes} refreshes in {args.seconds} s"
    print(f"(target: under {TARGET_PERCENT:g} % of one core; the UI costs {results['tui 80x24'][0] / base:.1f}x the reads alone)"
          if base > 0 else "")


if __name__ == "__main__":
    main()
