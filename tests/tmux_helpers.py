"""Drive a real terminal for tests: a private tmux server (``tmux -L <socket>``) running one command.

Example::

    with TmuxSession(["llamatelemetry", "top"], width=80, height=24) as term:
        term.wait_for(lambda screen: "SERVERS" in screen)
        term.send_keys("q")
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from typing import Callable, Sequence


def tmux_binary() -> str:
    found = shutil.which("tmux")
    if found is None:
        raise RuntimeError("tmux is not installed: apt-get install -y tmux (scripts/test.sh installs it)")
    return found


class TmuxSession:
    """One detached tmux session of ``width`` x ``height`` running ``command``, on a socket of its own."""

    def __init__(self, command: Sequence[str], *, width: int = 80, height: int = 24, env: dict[str, str] | None = None) -> None:
        self.socket = f"lt-test-{uuid.uuid4().hex[:8]}"
        self.name = "top"
        self.command = command
        self.width, self.height = width, height
        self.env = env or {}

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tmux_binary(), "-L", self.socket, *args], capture_output=True, text=True, timeout=10, check=check)

    def __enter__(self) -> "TmuxSession":
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        shell = f"{exports} exec {shlex.join(self.command)}" if exports else f"exec {shlex.join(self.command)}"
        # remain-on-exit keeps the pane after the program ends, so a crash's last screen can be read.
        self._tmux("-f", os.devnull, "new-session", "-d", "-s", self.name, "-x", str(self.width), "-y", str(self.height),
                   "env", "TERM=xterm-256color", "sh", "-c", shell)
        self._tmux("set-option", "-t", self.name, "remain-on-exit", "on")
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmux("kill-server", check=False)

    def screen(self, *, escapes: bool = False) -> str:
        """What a person sees now (with ``escapes``, the SGR colour/attribute codes too)."""
        return self._tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", self.name).stdout

    def send_keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))

    def exited(self) -> bool:
        """The program in the pane has ended."""
        return self._tmux("display-message", "-p", "-t", self.name, "#{pane_dead}").stdout.strip() == "1"

    def pid(self) -> int:
        return int(self._tmux("display-message", "-p", "-t", self.name, "#{pane_pid}").stdout.strip())

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0, what: str = "the screen") -> str:
        """Poll the screen until ``predicate(screen)``; fails with the last screen shown."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")
            time.sleep(0.1)
