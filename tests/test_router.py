"""llamatelemetry.router against the b11434 router's real JSON and a real router (llama-server --models-dir)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Callable

import httpx
import pytest

from llamatelemetry.router import (
    ModelInfo, ModelWatcher, RouterError, afetch_models, fetch_models, is_router, model_url, parse_models,
)
from llamatelemetry.provision.router import RouterServer

# The exact shape of b11434's GET /models (server-models.cpp, get_router_models), one failed entry.
MODELS_BODY = {
    "object": "list",
    "data": [
        {"id": "alpha", "aliases": ["a"], "tags": [], "object": "model", "owned_by": "llamacpp", "created": 1,
         "status": {"value": "loaded", "args": ["llama-server", "--port", "41234", "--sleep-idle-seconds", "3"]},
         "architecture": {}, "source": "models_dir", "can_remove": False},
        {"id": "bad", "aliases": [], "tags": [], "object": "model", "owned_by": "llamacpp", "created": 1,
         "status": {"value": "unloaded", "args": [], "exit_code": 1, "failed": True},
         "architecture": {}, "source": "models_dir", "can_remove": False},
    ],
}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def chat(router: RouterServer, model: str, timeout: float = 60.0) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(router.base_url + "/v1/chat/completions", json=body, timeout=timeout)


# --- parsing -------------------------------------------------------------------------------------
def test_parse_models_reads_the_b11434_shape() -> None:
    alpha, bad = parse_models(MODELS_BODY)
    assert alpha == ModelInfo(id="alpha", status="loaded", failed=False, exit_code=None, aliases=("a",),
                              source="models_dir", args=("llama-server", "--port", "41234", "--sleep-idle-seconds", "3"))
    assert alpha.state == "loaded" and alpha.running and alpha.sleep_idle_seconds == 3.0
    assert bad.status == "unloaded" and bad.failed and bad.exit_code == 1 and bad.state == "failed" and not bad.running
    assert bad.sleep_idle_seconds is None
    assert parse_models(b'{"data": []}') == []


@pytest.mark.parametrize("payload, message", [
    (b"not json", "not JSON"),
    ([], "expected an object"),
    ({"models": []}, "no 'data' list"),
    ({"data": [1]}, "data[0] is int"),
    ({"data": [{"status": {"value": "loaded"}}]}, "no string 'id'"),
    ({"data": [{"id": "m"}]}, "'status.value'"),
    ({"data": [{"id": "m", "status": {"value": "unloaded", "exit_code": "1"}}]}, "non-integer exit_code"),
    ({"data": [{"id": "m", "status": {"value": "loaded"}, "aliases": "x"}]}, "'aliases'"),
])
def test_parse_models_names_what_is_wrong(payload: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_models(payload)


def test_is_router_and_model_url() -> None:
    assert is_router({"role": "router", "max_instances": 4, "model_path": "none"})
    assert not is_router({"total_slots": 1, "model_path": "/m.gguf"})
    assert model_url("http://h:1/", "/metrics", "a/b c") == "http://h:1/metrics?model=a%2Fb+c&autoload=false"


# --- the state machine, fed the events the b11434 source emits -----------------------------------
def test_watcher_counts_loads_failures_unloads_from_events() -> None:
    watcher = ModelWatcher("http://127.0.0.1:1")
    seen: list[tuple[str, str | None, str, int | None]] = []
    watcher.add_listener(lambda m, old, new, at, code: seen.append((m, old, new, code)))
    events = [  # (event, model, data, at)
        ("model_status", "a", {"status": "loading"}, 10.0),            # spawn
        ("status_change", "a", {"status": "loading", "progress": {}}, 10.1),  # progress: no new load
        ("status_change", "a", {"status": "loaded", "info": {}}, 10.5),
        ("status_change", "a", {"status": "sleeping"}, 20.0),
        ("status_change", "a", {"status": "loaded"}, 21.0),           # wake-up: not a load
        ("status_change", "a", {"status": "unloaded", "exit_code": 0}, 30.0),  # eviction
        ("model_status", "bad", {"status": "loading"}, 31.0),
        ("status_change", "bad", {"status": "unloaded", "exit_code": 1}, 31.2),  # failed load
        ("download_progress", "x", {}, 32.0),                           # ignored
    ]
    for name, model, data, at in events:
        assert watcher.handle_event({"event": name, "model": model, "data": data}, at) is False
    assert watcher.handle_event({"event": "models_reload", "model": "*"}) is True
    a, bad = watcher.snapshot()["a"], watcher.snapshot()["bad"]
    assert (a.status, a.since, a.loads, a.unloads, a.load_failures, a.last_exit_code) == ("unloaded", 30.0, 1, 1, 0, 0)
    assert a.last_load_seconds == pytest.approx(0.5)
    assert (bad.status, bad.loads, bad.load_failures, bad.last_exit_code, bad.unloads) == ("failed", 1, 1, 1, 0)
    assert seen == [("a", None, "loading", None), ("a", "loading", "loaded", None), ("a", "loaded", "sleeping", None),
                    ("a", "sleeping", "loaded", None), ("a", "loaded", "unloaded", 0),
                    ("bad", None, "loading", None), ("bad", "loading", "failed", 1)]


def test_a_failing_listener_does_not_stop_the_watcher() -> None:
    watcher = ModelWatcher("http://127.0.0.1:1")
    watcher.add_listener(lambda *args: 1 / 0)
    watcher.handle_event({"event": "model_status", "model": "a", "data": {"status": "loading"}}, 1.0)
    assert watcher.snapshot()["a"].status == "loading" and watcher.listener_errors == 1


def test_watcher_reports_an_unreachable_router_and_keeps_trying() -> None:
    watcher = ModelWatcher("http://127.0.0.1:9", backoff=0.05, max_backoff=0.1).start()
    try:
        wait_for(lambda: watcher.last_error is not None, 10, "a connection error")
        assert not watcher.connected and not watcher.synced
        assert "ConnectError" in (watcher.last_error or "")
    finally:
        watcher.stop()
    with pytest.raises(RouterError, match="ConnectError"):
        fetch_models("http://127.0.0.1:9", timeout=2)


# --- against a real router -----------------------------------------------------------------------
def test_fetch_models_from_a_real_router_with_a_model_that_fails(router_factory: Callable[..., RouterServer]) -> None:
    router = router_factory(["alpha", "beta"], broken=["bad"])
    props = httpx.get(router.base_url + "/props", timeout=10).json()
    assert is_router(props)
    models = {m.id: m for m in fetch_models(router.base_url)}
    assert set(models) == {"alpha", "beta", "bad"}
    assert all(m.state == "unloaded" and m.source == "models_dir" for m in models.values())
    with ModelWatcher(router.base_url) as watcher:
        assert watcher.wait_synced(20)
        assert httpx.post(router.base_url + "/models/load", json={"model": "bad"}, timeout=10).json() == {"success": True}
        wait_for(lambda: watcher.snapshot()["bad"].status == "failed", 30, "bad to fail")
        bad = watcher.snapshot()["bad"]
        assert bad.loads == 1 and bad.load_failures == 1 and bad.last_exit_code not in (None, 0)
    after = {m.id: m for m in asyncio.run(afetch_models(router.base_url))}
    assert after["bad"].failed and after["bad"].exit_code == bad.last_exit_code
    # the watcher only read /models and /models/sse: nothing else got loaded
    assert after["alpha"].state == "unloaded" and after["beta"].state == "unloaded"


def test_watcher_counts_a_swap_that_polling_misses(router_factory: Callable[..., RouterServer]) -> None:
    router = router_factory(["alpha", "beta"], models_max=1)
    with ModelWatcher(router.base_url) as watcher:
        assert watcher.wait_synced(20)
        assert chat(router, "alpha").status_code == 200
        wait_for(lambda: watcher.snapshot()["alpha"].status == "loaded", 30, "alpha loaded")
        before = {m.id: m.state for m in fetch_models(router.base_url)}
        # two swaps between two polls: beta in (alpha evicted), then alpha back (beta evicted)
        assert chat(router, "beta").status_code == 200
        assert chat(router, "alpha").status_code == 200
        wait_for(lambda: watcher.snapshot()["beta"].status == "unloaded", 30, "beta evicted")
        after = {m.id: m.state for m in fetch_models(router.base_url)}
        assert before == after == {"alpha": "loaded", "beta": "unloaded"}  # a poller saw nothing happen
        alpha, beta = watcher.snapshot()["alpha"], watcher.snapshot()["beta"]
        assert (alpha.loads, alpha.unloads) == (2, 1)
        assert (beta.loads, beta.unloads) == (1, 1)
        assert alpha.last_load_seconds is not None and 0 < alpha.last_load_seconds < 30


def test_watcher_reconnects_and_resyncs_after_a_router_restart(router_factory: Callable[..., RouterServer]) -> None:
    router = router_factory(["alpha", "beta"])
    changes: list[tuple[str, str | None, str]] = []
    lock = threading.Lock()

    def listener(model: str, old: str | None, new: str, at: float, code: int | None) -> None:
        with lock:
            changes.append((model, old, new))

    watcher = ModelWatcher(router.base_url, backoff=0.1, max_backoff=0.5)
    watcher.add_listener(listener)
    with watcher:
        assert watcher.wait_synced(20)
        assert chat(router, "alpha").status_code == 200
        wait_for(lambda: watcher.snapshot()["alpha"].status == "loaded", 30, "alpha loaded")
        syncs = watcher.syncs
        router.stop()
        wait_for(lambda: not watcher.connected, 30, "the watcher to notice the router went away")
        assert watcher.last_error
        router.start()
        wait_for(lambda: watcher.connected and watcher.syncs > syncs, 30, "reconnect + resync")
        assert watcher.snapshot()["alpha"].status == "unloaded"  # the restarted router has nothing loaded
        assert watcher.snapshot()["alpha"].unloads == 1
        assert chat(router, "beta").status_code == 200  # events flow on the new stream
        wait_for(lambda: watcher.snapshot()["beta"].status == "loaded", 30, "beta loaded after restart")
        assert watcher.snapshot()["beta"].loads == 1
    with lock:
        assert ("alpha", "loading", "loaded") in changes and ("beta", "loading", "loaded") in changes


def test_watcher_runs_inside_an_asyncio_app(router_factory: Callable[..., RouterServer]) -> None:
    router = router_factory(["alpha"])

    async def main() -> tuple[str, int]:
        watcher = ModelWatcher(router.base_url)
        task = asyncio.create_task(watcher.run())
        for _ in range(400):
            if watcher.connected:
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert (await client.post(router.base_url + "/v1/chat/completions", json=body)).status_code == 200
        for _ in range(400):
            if watcher.snapshot()["alpha"].status == "loaded":
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = watcher.snapshot()["alpha"]
        return state.status, state.loads

    assert asyncio.run(main()) == ("loaded", 1)
