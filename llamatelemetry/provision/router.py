"""Start a real llama-server in router mode over a directory of scripted models (tests and the demo).

Router mode is llama-server without ``-m`` but with ``--models-dir``: every ``NAME.gguf`` in the
directory is a model called ``NAME``, started as a child llama-server on first use. This module
writes such a directory (copies of the scripted model, plus optionally a corrupt file whose child
exits with an error, for failure tests) and runs the router on a free loopback port.

Example::

    from llamatelemetry.provision.model import write_scripted_model
    from llamatelemetry.provision.router import RouterServer, write_models_dir
    source = write_scripted_model("/tmp/scripted.gguf")
    models = write_models_dir("/tmp/models", ["coder", "agent", "embed"], source=source, broken=["bad"])
    with RouterServer(models, models_max=1, sleep_idle_seconds=5, extra_args=["--metrics"]) as router:
        print(router.base_url)   # GET /models lists coder, agent, embed, bad
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from .build import ensure_llama_server
from .server import LlamaServerStartError, free_port, stop_process

#: What a corrupt model file starts with: the GGUF magic and a version the loader rejects, so the
#: child fails while loading (the router then reports the model ``failed`` with its exit code).
BROKEN_MODEL_BYTES = b"GGUF" + (999).to_bytes(4, "little") + b"\0" * 64


def write_broken_model(path: str | os.PathLike[str]) -> Path:
    """Write a ``.gguf`` file that llama-server cannot load (its child exits non-zero).

    Example::

        write_broken_model("/tmp/models/bad.gguf")
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(BROKEN_MODEL_BYTES)
    return dest


def write_models_dir(directory: str | os.PathLike[str], names: Sequence[str], *,
                     source: str | os.PathLike[str], broken: Sequence[str] = ()) -> Path:
    """Fill ``directory`` with ``NAME.gguf`` copies of ``source`` (and corrupt ``broken`` ones).

    Copies, not symlinks: the router reads regular files, and a copy keeps each model's file
    independent of the source's lifetime (the scripted model is ~6 MB).

    Example::

        write_models_dir("/tmp/models", ["a", "b"], source="/tmp/scripted.gguf")
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source, root / f"{name}.gguf")
    for name in broken:
        write_broken_model(root / f"{name}.gguf")
    return root


class RouterServer:
    """A llama-server in router mode bound to loopback on a free port.

    ``models_max`` is ``--models-max`` (LRU eviction; 0 = no limit), ``sleep_idle_seconds`` is
    passed to every child (None: never sleep), ``autoload`` is ``--models-autoload`` and
    ``extra_args`` go verbatim to the router, which passes them on to its children (e.g.
    ``["--metrics"]``). :meth:`restart` stops and starts it again on the same port.
    """

    def __init__(self, models_dir: str | os.PathLike[str], *, models_max: int = 4,
                 sleep_idle_seconds: float | None = None, autoload: bool = True, extra_args: Sequence[str] = (),
                 port: int | None = None, host: str = "127.0.0.1", binary: str | os.PathLike[str] | None = None,
                 ctx_size: int = 512, parallel: int = 1) -> None:
        self.models_dir = Path(models_dir)
        self.models_max = models_max
        self.sleep_idle_seconds = sleep_idle_seconds
        self.autoload = autoload
        self.extra_args = list(extra_args)
        self.host = host
        self.port = port or free_port(host)
        self.binary = Path(binary) if binary else None
        self.ctx_size = ctx_size
        self.parallel = parallel
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="llama-router-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "router not started"
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def command(self) -> list[str]:
        binary = self.binary or ensure_llama_server()
        cmd = [
            str(binary), "--models-dir", str(self.models_dir), "--models-max", str(self.models_max),
            "--host", self.host, "--port", str(self.port), "--jinja", "-c", str(self.ctx_size * self.parallel),
            "-np", str(self.parallel), "-t", "1", "--no-webui",
        ]
        if self.sleep_idle_seconds is not None:
            cmd += ["--sleep-idle-seconds", f"{self.sleep_idle_seconds:g}"]
        if not self.autoload:
            cmd.append("--no-models-autoload")
        return cmd + self.extra_args

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> "RouterServer":
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the router answers ``GET /models`` (its model list is read by then; a 401 of a
        router started with ``--api-key`` counts as an answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LlamaServerStartError(f"router exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise LlamaServerStartError(f"router not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the router (it stops its children first)."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def restart(self, *, timeout: float = 60.0) -> "RouterServer":
        """Stop and start again on the same port (every model comes back unloaded)."""
        self.stop()
        return self.start(timeout=timeout)

    def close(self) -> None:
        self.stop()
        self._log.close()

    def __enter__(self) -> "RouterServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
