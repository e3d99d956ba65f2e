"""Shared fixtures: a real llama-server (built once and cached) serving the scripted model."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from llamatelemetry.provision.build import ensure_llama_server
from llamatelemetry.provision.model import THINKING_SCRIPTS, ThinkingScript, cached_thinking_models, write_scripted_model
from llamatelemetry.provision.sdist import sdist_asset
from llamatelemetry.provision.server import LlamaServer

ServerFactory = Callable[..., LlamaServer]


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The cached llama-server build (built on first use, ~7 minutes)."""
    return ensure_llama_server()


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic reasoning model, written by the test suite itself."""
    return write_scripted_model(tmp_path_factory.mktemp("models") / "scripted.gguf")


@pytest.fixture(scope="session")
def llama_server_factory(llama_server_binary: Path, scripted_model: Path) -> Iterator[ServerFactory]:
    """Start llama-servers on free loopback ports; all are stopped at the end of the session.

    Example: ``llama_server_factory("--metrics", parallel=2)``.
    """
    started: list[LlamaServer] = []

    def start(*extra_args: str, parallel: int = 1, model: Path | None = None, wait: bool = True, **kw: object) -> LlamaServer:
        server = LlamaServer(model or scripted_model, extra_args=list(extra_args), binary=llama_server_binary, parallel=parallel, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def full_server(llama_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> LlamaServer:
    """A llama-server with every optional endpoint on: metrics, embeddings, slot save/restore, 2 slots."""
    slot_dir = tmp_path_factory.mktemp("slots")
    return llama_server_factory("--metrics", "--embeddings", "--pooling", "mean", "--slot-save-path", str(slot_dir), parallel=2)


@pytest.fixture(scope="session")
def bare_server(llama_server_factory: ServerFactory) -> LlamaServer:
    """A llama-server started without optional flags (and with ``--no-slots``): those endpoints answer 501."""
    return llama_server_factory("--no-slots")


@pytest.fixture(scope="session")
def thinking_servers(llama_server_binary: Path) -> Iterator[dict[str, tuple[LlamaServer, ThinkingScript]]]:
    """One llama-server per real-vocabulary thinking model (Gemma 4, Qwen3.5), each with its real template.

    Started together (they load in parallel) and stopped at the end of the session.
    """
    started: dict[str, tuple[LlamaServer, ThinkingScript]] = {}
    models = cached_thinking_models()  # written once into the cache (about a minute on 2 cores), then instant
    try:
        for family, script in THINKING_SCRIPTS.items():
            template = sdist_asset(script.template)
            server = LlamaServer(models[family], binary=llama_server_binary, ctx_size=512, alias=family,
                                 extra_args=["--chat-template-file", str(template)])
            started[family] = (server, script)
            server.start(wait=False)
        for server, _ in started.values():
            server.wait_ready()
        yield started
    finally:
        for server, _ in started.values():
            server.stop()


# --- router mode (issue 16) ---------------------------------------------------------------------
from llamatelemetry.provision.router import RouterServer, write_models_dir  # noqa: E402

RouterFactory = Callable[..., RouterServer]


@pytest.fixture(scope="session")
def router_factory(llama_server_binary: Path, scripted_model: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterFactory]:
    """Start llama-servers in router mode on free loopback ports; all are stopped at session end.

    ``router_factory(["a", "b", "c"], broken=["bad"], models_max=1, sleep_idle_seconds=3,
    extra_args=["--metrics"])`` writes a fresh ``--models-dir`` of scripted models named by file
    (``broken`` ones are corrupt files whose child exits non-zero) and returns the running
    :class:`RouterServer`.
    """
    started: list[RouterServer] = []

    def start(names: tuple[str, ...] | list[str] = ("alpha", "beta", "gamma"), *, broken: tuple[str, ...] | list[str] = (),
              wait: bool = True, **kw: object) -> RouterServer:
        models = write_models_dir(tmp_path_factory.mktemp("router-models"), list(names), source=scripted_model,
                                  broken=list(broken))
        router = RouterServer(models, binary=llama_server_binary, **kw)  # type: ignore[arg-type]
        started.append(router)
        return router.start(wait=wait)

    yield start
    for router in started:
        router.close()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``takes_down_shared_stack`` run after the rest of their module.

    The suite runs shuffled (pytest-randomly, which reorders first); a test that kills the collector or a
    backend of a module-scoped stack would otherwise take it away from the tests that run after it. Moving it
    to the end of its own module keeps the module's tests together (the stack starts once) and shuffled.
    """
    last = [item for item in items if item.get_closest_marker("takes_down_shared_stack")]
    for item in last:
        items.remove(item)
        module = getattr(item, "module", None)
        end = max((i for i, other in enumerate(items) if getattr(other, "module", None) is module), default=len(items) - 1)
        items.insert(end + 1, item)
