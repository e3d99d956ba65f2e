"""What the gateway knows about an upstream that is a llama-server *router* (many models, one port).

A router (``llama-server --models-dir``/``--models-preset``) starts each model as a child process on
first use: a request for a model that is not loaded waits for the whole load — the slowest thing
that happens on a shared box. The gateway marks such a request on its span (*cold start*, how long
it waited) and counts the wait in a histogram per model and client; the router's own errors about
the model (``model '<x>' not found``, ``model is not loaded``, a failed load) get a distinct
``error.type`` and reach an Anthropic client in its own error shape.

Model state comes from :class:`llamatelemetry.router.ModelWatcher` (the one reader of ``/models``
and ``/models/sse`` the exporter and ``top`` use too): one watcher per router upstream, started the
first time a request goes there and ``GET /props`` says ``"role": "router"``. Nothing here loads or
wakes a model: ``/props``, ``/models`` and ``/models/sse`` are answered by the router itself.

Example::

    routers = Routers(http)
    await routers.prepare("http://127.0.0.1:8080", None)   # detects the router, syncs its models
    view = routers.view("http://127.0.0.1:8080")
    view.state_of("coder")                                 # ModelState(status="unloaded", ...) or None
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import httpx

from ..errors import RouterModelError, classify_router_error
from ..router import ModelState, ModelWatcher, is_router
from .dialect import Dialect, dialect_of

log = logging.getLogger("llamatelemetry.proxy")

#: The first request to an upstream waits at most this long for router detection and the model list.
PREPARE_TIMEOUT = 2.0
#: How long an answer "not a router" (or "unreachable") holds before ``/props`` is asked again:
#: a single-model llama-server may be restarted as a router behind the same address.
RECHECK_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ColdStart:
    """A request that found its model not loaded: which model (canonical id), its state, when it arrived."""

    model: str
    state_before: str
    arrived: float  # time.time(), the clock the watcher's events carry


class RouterView:
    """One router upstream: its watcher and when each model last became ``loaded``."""

    def __init__(self, watcher: ModelWatcher) -> None:
        self.watcher = watcher
        #: model id -> time.time() it last became loaded (from the event stream, so a load between
        #: two looks is still seen).
        self._loaded_at: dict[str, float] = {}
        watcher.add_listener(self._on_change)

    def _on_change(self, model_id: str, old_status: str | None, new_status: str, at: float, exit_code: int | None) -> None:
        if new_status == "loaded":
            self._loaded_at[model_id] = at

    def state_of(self, model: str) -> ModelState | None:
        """The model's state, by id or alias (None: the router does not know it, or no sync yet)."""
        states = self.watcher.snapshot()
        found = states.get(model)
        if found is None:
            found = next((s for s in states.values() if model in s.aliases), None)
        return found

    def cold_start(self, model: str | None) -> ColdStart | None:
        """A :class:`ColdStart` when ``model`` is known and not loaded right now, else None."""
        if not model or not self.watcher.synced:
            return None
        state = self.state_of(model)
        if state is None or state.status == "loaded":
            return None
        return ColdStart(state.id, state.status, time.time())

    def load_wait(self, cold: ColdStart, now: float | None = None) -> float:
        """Seconds from the request's arrival to its model becoming loaded.

        The router reports ``loaded`` before it forwards the waiting request, so the event is
        normally in; if it is not (yet), the time until the answer came is the honest upper bound.
        """
        loaded = self._loaded_at.get(cold.model)
        end = loaded if loaded is not None and loaded >= cold.arrived else (now if now is not None else time.time())
        return max(0.0, end - cold.arrived)


class Routers:
    """Per upstream: is it a router, and if so its :class:`RouterView` (see module docs)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._views: dict[str, RouterView] = {}
        self._checked_at: dict[str, float] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def view(self, upstream: str) -> RouterView | None:
        """The upstream's router view (None: not a router, or not known yet)."""
        return self._views.get(upstream)

    def settled(self, upstream: str) -> bool:
        """True when nothing is to be checked or awaited for ``upstream`` now (the per-request fast path)."""
        return upstream in self._views or (
            upstream not in self._pending
            and time.monotonic() - self._checked_at.get(upstream, -RECHECK_SECONDS) < RECHECK_SECONDS)

    async def prepare(self, upstream: str, authorization: str | None) -> None:
        """Make sure the upstream was checked (bounded wait; the first request to it pays it once)."""
        if upstream in self._views:
            return
        pending = self._pending.get(upstream)
        if pending is None:
            if time.monotonic() - self._checked_at.get(upstream, -RECHECK_SECONDS) < RECHECK_SECONDS:
                return
            self._checked_at[upstream] = time.monotonic()
            pending = asyncio.get_running_loop().create_task(self._detect(upstream, authorization))
            self._pending[upstream] = pending
            pending.add_done_callback(lambda _: self._pending.pop(upstream, None))
        try:
            await asyncio.wait_for(asyncio.shield(pending), PREPARE_TIMEOUT)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the request goes on regardless
            log.debug("router detection of %s not finished", upstream, exc_info=True)

    async def _detect(self, upstream: str, authorization: str | None) -> None:
        headers = {"authorization": authorization} if authorization else {}
        try:
            response = await self.http.get(upstream + "/props", headers=headers, timeout=PREPARE_TIMEOUT)
            if response.status_code in (401, 403):
                # --api-key and this client's key is wrong (or missing): the next request, with the right key, asks again.
                self._checked_at.pop(upstream, None)
                return
            props = response.json() if response.status_code == 200 else {}
        except Exception:  # noqa: BLE001 - down or not llama-server: checked again later
            log.debug("could not read /props of %s", upstream, exc_info=True)
            return
        if not isinstance(props, dict) or not is_router(props):
            return
        api_key = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
        watcher = ModelWatcher(upstream, api_key=api_key)
        self._views[upstream] = RouterView(watcher)
        self._tasks.append(asyncio.get_running_loop().create_task(watcher.run()))
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while not watcher.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        """Stop every watcher (the gateway is shutting down)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks.clear()


def router_error(status: int, body: bytes) -> tuple[type[RouterModelError], str | None] | None:
    """Which of the router's model errors an error answer is (None: another error, or not JSON)."""
    if status < 400 or not body or len(body) > 4096:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return classify_router_error(status, message)


#: Anthropic's error types for the statuses a router answers with (Messages API "errors" page).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 404: "not_found_error", 500: "api_error", 503: "overloaded_error"}


def in_client_dialect(path: str, status: int, body: bytes) -> bytes | None:
    """A router error re-shaped for the client's dialect, or None to forward the body unchanged.

    The router answers every error in the OpenAI shape (``{"error": {"code", "message", "type"}}``),
    also on ``/v1/messages``; the Anthropic SDK (Claude Code) reads ``{"type": "error", "error":
    {"type", "message"}}``. The message is kept word for word; OpenAI-dialect errors pass untouched.

    Example::

        >>> in_client_dialect("/v1/messages", 400, b'{"error":{"code":400,"message":"model \\'x\\' not found","type":"invalid_request_error"}}')
        b'{"type":"error","error":{"type":"invalid_request_error","message":"model \\'x\\' not found"}}'
    """
    if dialect_of(path) is not Dialect.ANTHROPIC or router_error(status, body) is None:
        return None
    message = json.loads(body)["error"]["message"]
    shaped = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
                                         "message": message}}
    return json.dumps(shaped, separators=(",", ":"), ensure_ascii=False).encode()
