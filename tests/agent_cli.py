"""Claude Code (npm ``@anthropic-ai/claude-code``), installed once into the cache dir, run offline.

Pinned to the last release that is plain JavaScript for Node >= 18 (later ones need Node 22 or ship a
native binary). Installed with ``npm --prefix`` into ``<cache>/claude-code-<version>`` on first use,
under a lock, and renamed into place only when complete, so concurrent or interrupted runs never see
half an install.

Example::

    claude = ensure_claude_code()
    subprocess.run([str(claude), "-p", "hello"], env=claude_code_env("http://127.0.0.1:8089", "qwen35-agent", home))
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from llamatelemetry.provision.build import cache_dir

CLAUDE_CODE_VERSION = "2.0.77"


def ensure_claude_code(version: str = CLAUDE_CODE_VERSION) -> Path:
    """Return the ``claude`` executable, installing the pinned release with npm the first time."""
    root = cache_dir() / f"claude-code-{version}"
    claude = root / "node_modules" / ".bin" / "claude"
    if claude.is_file():
        return claude
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: install Node.js >= 18 with npm (Debian: apt-get install nodejs npm)")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"claude-code-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be installing it right now
        if claude.is_file():
            return claude
        staging = root.with_name(root.name + f".{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        done = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(staging),
                               f"@anthropic-ai/claude-code@{version}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not (staging / "node_modules" / ".bin" / "claude").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"npm could not install @anthropic-ai/claude-code@{version} (is the npm registry "
                               f"reachable?):\n{done.stderr[-2000:]}")
        os.replace(staging, root)
    return claude


def claude_code_env(base_url: str, model: str, home: Path) -> dict[str, str]:
    """The environment that points Claude Code at a local server and switches off all other traffic.

    ``home`` is an empty directory: no user settings, credentials or history leak into the run.
    """
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    return {
        **keep,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": "local-test-token",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,  # its side requests (titles, topic checks) name this one
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
