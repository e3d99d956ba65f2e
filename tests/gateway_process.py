"""``llamatelemetry proxy`` as a user runs it (a subprocess), for tests that read its admin port.

Example::

    gateway = GatewayProcess("http://127.0.0.1:8080")
    openai.OpenAI(base_url=gateway.url + "/v1", api_key="x").chat.completions.create(...)
    gateway.wait_recorded(1)
    gateway.stop()
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx

from llamatelemetry.provision.server import free_port, stop_process


class GatewayProcess:
    """``llamatelemetry proxy`` as a user runs it (a subprocess), in front of one llama-server."""

    def __init__(self, upstream: str, *extra_args: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llamatelemetry.cli", "proxy", "--upstream", upstream, "--port", str(self.port),
             "--admin-port", str(self.admin_port), *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.admin_url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start: {self.process.stderr.read() if self.process.stderr else ''}")
            time.sleep(0.1)

    def recent(self) -> list[dict[str, Any]]:
        return httpx.get(self.admin_url + "/api/recent", timeout=5).json()["requests"]

    def wait_recorded(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Telemetry is recorded after the answer went out: wait until ``count`` requests are in /api/recent."""
        deadline = time.monotonic() + timeout
        while len(items := self.recent()) < count:
            assert time.monotonic() < deadline, f"only {len(items)} of {count} requests recorded"
            time.sleep(0.05)
        return items

    def memory_kib(self) -> tuple[int, int]:
        """(resident now, peak resident since start) of the gateway process, in KiB (Linux /proc)."""
        fields = dict(line.split(":", 1) for line in open(f"/proc/{self.process.pid}/status").read().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stderr:
            self.process.stderr.close()
