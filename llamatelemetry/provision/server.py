"""Start and stop a local ``llama-server`` process (for tests and the demo).

Example::

    from llamatelemetry.provision.server import LlamaServer
    with LlamaServer(model_path, extra_args=["--metrics"]) as server:
        print(server.base_url)            # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from .build import ensure_llama_server


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(process: "subprocess.Popen[Any]", timeout: float = 10.0) -> None:
    """Terminate a child process, then kill it if it has not exited within ``timeout`` seconds.

    Example::

        stop_process(subprocess.Popen(["sleep", "60"]))
    """
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LlamaServerStartError(RuntimeError):
    """llama-server exited or never became ready; the message carries the tail of its log."""


class LlamaServer:
    """A llama-server child process bound to loopback on a free port.

    ``extra_args`` are passed through verbatim (e.g. ``["--metrics", "--embeddings"]``).
    The process is stopped by :meth:`stop` or on leaving the ``with`` block.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | os.PathLike[str] | None = None,
        parallel: int = 1,
        ctx_size: int = 2048,
        alias: str | None = "scripted",
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port or free_port(host)
        self.binary = Path(binary) if binary else None
        self.extra_args = list(extra_args)
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.alias = alias
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def command(self) -> list[str]:
        binary = self.binary or ensure_llama_server()
        cmd = [
            str(binary), "-m", str(self.model_path), "--host", self.host, "--port", str(self.port),
            "--jinja", "-c", str(self.ctx_size * self.parallel), "-np", str(self.parallel),
            "-t", "1", "--no-webui",
        ]
        if self.alias:
            cmd += ["--alias", self.alias]
        return cmd + self.extra_args

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> "LlamaServer":
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LlamaServerStartError(f"llama-server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise LlamaServerStartError(f"llama-server not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self._log.close()

    def __enter__(self) -> "LlamaServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
