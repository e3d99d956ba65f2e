#!/usr/bin/env python3
"""Build (or reuse) the Go-built parts of the monitoring stack: our OpenTelemetry Collector and Jaeger v2.

Standard library only, so ``scripts/build-stack.sh`` runs it with any Python 3.10+.

* The collector is built by the official OpenTelemetry Collector Builder (``go.opentelemetry.io/collector/
  cmd/builder``, at the same release as the components) from ``stack/otelcol-builder.yaml``: a generated
  ``main.go`` listing exactly the factories our configs use.
* Jaeger v2 is built from its Go module (``github.com/jaegertracing/jaeger/cmd/jaeger``) at the approved
  release.
* Versions come from ``stack/versions.env`` (the one place that pins them).
* Each binary lives in the project cache dir (``$LLAMATELEMETRY_CACHE_DIR`` or ``~/.cache/llamatelemetry``)
  under a directory named by the hash of its inputs (manifest, versions, Go version), so it is rebuilt
  only when one of them changes. ``GOMODCACHE``/``GOCACHE`` live there too, so a second machine run reuses
  downloads and compiled packages.

Example::

    $ python3 stack/build.py            # progress on stderr, then the two absolute paths on stdout
    /root/.cache/llamatelemetry/otelcol-0.161.0-1a2b3c4d5e6f/otelcol-llamatelemetry
    /root/.cache/llamatelemetry/jaeger-1.75.0-6f5e4d3c2b1a/jaeger
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STACK_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = STACK_DIR / "versions.env"
MANIFEST_FILE = STACK_DIR / "otelcol-builder.yaml"
COLLECTOR_BINARY = "otelcol-llamatelemetry"
JAEGER_PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"
JAEGER_VERSION_PACKAGE = "github.com/jaegertracing/jaeger/internal/version"
# The collector builder v0.161.0 declares `go 1.26.0` in its go.mod (Jaeger v1.75.0 needs 1.24.6).
MIN_GO = (1, 26)
GO_HELP = (
    "scripts/build-stack.sh needs a Go toolchain (Go {min} or newer) to build the OpenTelemetry Collector and "
    "Jaeger from their Go modules.\n"
    "  Get one: `apt-get install golang-go` where Debian ships Go >= {min}, or install the official release "
    "and put its bin/ on PATH;\n"
    "  or point GO=/path/to/go at an existing toolchain. Modules come from the Go module proxy "
    "(GOPROXY, default proxy.golang.org)."
)


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to fix it."""


def log(message: str) -> None:
    """Progress goes to stderr so stdout carries only the binaries' paths."""
    print(f"[build-stack] {message}", file=sys.stderr, flush=True)


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines of versions.env (comments and blank lines ignored).

    >>> read_versions()["OTELCOL_VERSION"]  # doctest: +SKIP
    '0.161.0'
    """
    versions: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BuildError(f"{path}: line {raw!r} is not KEY=VALUE")
        versions[key.strip()] = value.strip()
    return versions


def render_manifest(versions: dict[str, str], output_path: Path | None = None) -> str:
    """The builder manifest with the pinned versions filled in (and, for a build, its output path)."""
    text = MANIFEST_FILE.read_text(encoding="utf-8")
    for key, value in versions.items():
        text = text.replace("{" + key + "}", value)
    if "{" in text.replace("${", ""):
        raise BuildError(f"{MANIFEST_FILE}: a placeholder has no value in {VERSIONS_FILE}")
    if output_path is not None:
        text = text.replace("dist:\n", f"dist:\n  output_path: {output_path}\n", 1)
    return text


def cache_dir() -> Path:
    """Same rule as ``llamatelemetry.provision.build.cache_dir`` (kept in step by tests/test_stack_config.py)."""
    explicit = os.environ.get("LLAMATELEMETRY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "llamatelemetry"


def find_go() -> str:
    """The ``go`` command to use, checked to be new enough; raises BuildError saying how to get one."""
    help_text = GO_HELP.format(min=".".join(map(str, MIN_GO)))
    go = os.environ.get("GO") or shutil.which("go")
    if not go:
        raise BuildError("no Go toolchain found (`go` is not on PATH and GO is unset).\n" + help_text)
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"{go} does not run ({exc}).\n" + help_text) from exc
    digits = out.removeprefix("go").split(".")
    try:
        have = (int(digits[0]), int(digits[1]))
    except (IndexError, ValueError) as exc:
        raise BuildError(f"cannot read the Go version from {out!r}.\n" + help_text) from exc
    if have < MIN_GO:
        raise BuildError(f"{go} is {out}, too old.\n" + help_text)
    return go


def go_env(go: str) -> dict[str, str]:
    """Environment for every go command: module and build caches inside the project cache dir."""
    root = cache_dir() / "go"
    env = dict(os.environ)
    env.setdefault("GOMODCACHE", str(root / "mod"))
    env.setdefault("GOCACHE", str(root / "build"))
    env.setdefault("GOFLAGS", "-buildvcs=false")
    # Static binaries: no C toolchain needed and they run on any Linux of the same architecture.
    env.setdefault("CGO_ENABLED", "0")
    env["PATH"] = os.path.dirname(go) + os.pathsep + env.get("PATH", "")
    return env


def _go_version(go: str, env: dict[str, str]) -> str:
    """The toolchain ``go`` runs with ``env`` (``go env GOVERSION``): part of each build's cache key."""
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, env=env, check=True).stdout.strip()


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def _meaningful(manifest: str) -> str:
    """The manifest without comments and blank lines: rewording a comment must not cost a rebuild."""
    lines = (line.split(" #", 1)[0].rstrip() for line in manifest.splitlines() if not line.lstrip().startswith("#"))
    return "\n".join(line for line in lines if line)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per cache entry at a time, across processes (parallel test sessions share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    """Run one build step, streaming its output to stderr with a heartbeat (Go builds are long and quiet)."""
    log(f"{what}: {' '.join(cmd)}")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            log(f"{what}: still running ({time.monotonic() - start:.0f} s)")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    finally:
        done.set()
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}) after {time.monotonic() - start:.0f} s; see above")
    log(f"{what}: done in {time.monotonic() - start:.0f} s")


def build_collector(go: str, versions: dict[str, str], *, force: bool = False) -> Path:
    """Build the collector with the official builder, or return the cached binary."""
    version = versions["OTELCOL_VERSION"]
    env = go_env(go)
    go_version = _go_version(go, env)
    key = _digest(_meaningful(render_manifest(versions)), go_version)
    target_dir = cache_dir() / f"otelcol-{version}-{key}"
    binary = target_dir / COLLECTOR_BINARY
    with _locked(cache_dir() / f"otelcol-{version}-{key}.lock"):
        if binary.is_file() and not force:
            log(f"collector {version}: cached {binary}")
            return binary
        log(f"collector {version}: building (component list or version changed, or first run)")
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"otelcol-{version}-", dir=cache_dir()))
        try:
            manifest = work / "manifest.yaml"
            manifest.write_text(render_manifest(versions, output_path=work / "src"), encoding="utf-8")
            _run(
                [go, "run", f"go.opentelemetry.io/collector/cmd/builder@v{version}", f"--config={manifest}"],
                env,
                work,
                "collector",
            )
            built = work / "src" / COLLECTOR_BINARY
            if not built.is_file():
                raise BuildError(f"the builder finished but {built} is missing")
            if target_dir.exists():
                shutil.rmtree(target_dir)
            target_dir.mkdir(parents=True)
            # Keep the generated sources beside the binary: they show exactly what was compiled.
            for name in ("main.go", "components.go", "go.mod"):
                if (work / "src" / name).is_file():
                    shutil.copy2(work / "src" / name, target_dir / name)
            shutil.copy2(manifest, target_dir / "manifest.yaml")
            os.replace(built, binary)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"collector {version}: built in {time.monotonic() - start:.0f} s -> {binary}")
        return binary


def build_jaeger(go: str, versions: dict[str, str], *, force: bool = False) -> Path:
    """Build Jaeger v2 from its Go module at the approved release, or return the cached binary."""
    module_version = versions["JAEGER_MODULE_VERSION"]
    release = versions["JAEGER_VERSION"]
    env = go_env(go)
    go_version = _go_version(go, env)
    key = _digest(module_version, release, go_version)
    target_dir = cache_dir() / f"jaeger-{module_version}-{key}"
    binary = target_dir / "jaeger"
    with _locked(cache_dir() / f"jaeger-{module_version}-{key}.lock"):
        if binary.is_file() and not force:
            log(f"jaeger {module_version}: cached {binary}")
            return binary
        log(f"jaeger {module_version} (v{release}): building")
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"jaeger-{module_version}-", dir=cache_dir()))
        try:
            (work / "go.mod").write_text("module llamatelemetry.local/jaeger-build\n\ngo 1.25\n", encoding="utf-8")
            _run([go, "get", "-tool", f"{JAEGER_PACKAGE}@v{module_version}"], env, work, "jaeger: go get")
            # Upstream's Makefile stamps the release into the binary the same way; without it
            # `jaeger version` would print an empty version.
            ldflags = f"-s -w -X {JAEGER_VERSION_PACKAGE}.latestVersion=v{release}"
            _run(
                [go, "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(work / "jaeger"), JAEGER_PACKAGE],
                env,
                work,
                "jaeger: go build",
            )
            if target_dir.exists():
                shutil.rmtree(target_dir)
            target_dir.mkdir(parents=True)
            shutil.copy2(work / "go.mod", target_dir / "go.mod")
            os.replace(work / "jaeger", binary)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"jaeger {module_version}: built in {time.monotonic() - start:.0f} s -> {binary}")
        return binary


def main(argv: list[str]) -> int:
    """Build or reuse both binaries and print their absolute paths, one a line."""
    force = "--force" in argv
    try:
        versions = read_versions()
        go = find_go()
        collector = build_collector(go, versions, force=force)
        jaeger = build_jaeger(go, versions, force=force)
    except BuildError as exc:
        print(f"build-stack: error: {exc}", file=sys.stderr)
        return 2
    print(collector.resolve())
    print(jaeger.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
