"""llama-server router mode: the ONE place in llamatelemetry that knows how a router looks.

A llama-server started without ``-m`` but with ``--models-dir`` / ``--models-preset`` is a *router*:
one port, many models, each model a child llama-server process started on demand (``--models-max``
LRU eviction, ``--sleep-idle-seconds``). The exporter, the gateway and ``top`` all read model state
through this module:

* :func:`is_router` tells a router from a single-model server by its ``GET /props``;
* :func:`parse_models` / :func:`fetch_models` / :func:`afetch_models` read ``GET /models``;
* :class:`ModelWatcher` follows ``GET /models/sse`` so that transitions between two polls (a whole
  swap under ``--models-max 1`` takes tens of milliseconds) are still seen and counted.

Nothing here ever loads, wakes or keeps alive a model: ``/props``, ``/models`` and ``/models/sse``
of the router are answered by the router itself (checked in the b11434 source,
``tools/server/server-models.cpp``), and per-model URLs built by :func:`model_url` always carry
``autoload=false``.

Example::

    from llamatelemetry.router import ModelWatcher, fetch_models
    for info in fetch_models("http://127.0.0.1:8080"):
        print(info.id, info.state)
    with ModelWatcher("http://127.0.0.1:8080") as watcher:   # a daemon thread
        watcher.wait_synced(5.0)
        print({m: s.status for m, s in watcher.snapshot().items()})
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence
from urllib.parse import urlencode

import httpx

#: Every status string the b11434 router reports in ``/models`` (``server_model_status_to_string``).
ROUTER_STATUSES: tuple[str, ...] = ("downloading", "downloaded", "unloaded", "loading", "loaded", "sleeping")
#: The states llamatelemetry reports: the router's statuses plus ``failed`` (the router says
#: ``unloaded`` with ``failed: true`` and the child's exit code after a load or a run that ended badly).
STATES: tuple[str, ...] = ROUTER_STATUSES + ("failed",)
#: States in which the model's child process exists (the router proxies ``?autoload=false`` to it).
RUNNING_STATES: frozenset[str] = frozenset({"loading", "loaded", "sleeping"})
#: The state given to listeners when a model disappears from the router's list.
REMOVED = "removed"


class RouterError(RuntimeError):
    """The router could not be read (connection, HTTP status, or a body that is not a model list)."""


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the router's ``GET /models``.

    ``status`` is the router's word (``loaded``, ``loading``, ``unloaded``, ``sleeping``,
    ``downloading``, ``downloaded`` …); ``failed`` and ``exit_code`` are set when the child
    exited with a non-zero code (then ``status`` is ``unloaded``); :attr:`state` folds the two.

    Example::

        info = parse_models({"data": [{"id": "a", "status": {"value": "loaded"}}]})[0]
        assert info.state == "loaded" and info.running
    """

    id: str
    status: str
    failed: bool = False
    exit_code: int | None = None
    aliases: tuple[str, ...] = ()
    source: str | None = None
    args: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """``failed`` for a failed model, else :attr:`status`."""
        return "failed" if self.failed else self.status

    @property
    def running(self) -> bool:
        """True when a child process exists (loading, loaded or sleeping)."""
        return self.status in RUNNING_STATES

    @property
    def sleep_idle_seconds(self) -> float | None:
        """The child's ``--sleep-idle-seconds`` as rendered by the router (None: sleeping disabled/unknown).

        Matters to scrapers: a child's ``/slots`` is a task that resets its idle timer and wakes it
        from sleep, so a scraper must not read ``/slots`` of a model that can sleep.
        """
        for i, arg in enumerate(self.args[:-1]):
            if arg == "--sleep-idle-seconds":
                try:
                    value = float(self.args[i + 1])
                except ValueError:
                    return None
                return value if value >= 0 else None
        return None


def is_router(props: Mapping[str, object]) -> bool:
    """True when a llama-server ``GET /props`` body comes from a router (``"role": "router"``).

    Example::

        assert is_router({"role": "router", "max_instances": 4})
        assert not is_router({"total_slots": 1, "model_path": "/m.gguf"})
    """
    return props.get("role") == "router"


def _parse_one(entry: object, index: int) -> ModelInfo:
    if not isinstance(entry, dict):
        raise ValueError(f"/models: data[{index}] is {type(entry).__name__}, expected an object")
    model_id = entry.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"/models: data[{index}] has no string 'id'")
    status = entry.get("status")
    # Older routers and OpenAI-shaped lists may give the status as a bare string.
    if isinstance(status, str):
        status = {"value": status}
    if not isinstance(status, dict) or not isinstance(status.get("value"), str):
        raise ValueError(f"/models: model {model_id!r} has no 'status.value' string")
    exit_code = status.get("exit_code")
    if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
        raise ValueError(f"/models: model {model_id!r} has a non-integer exit_code {exit_code!r}")
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"/models: model {model_id!r} has 'aliases' that is not a list of strings")
    source = entry.get("source")
    args = status.get("args") or []
    return ModelInfo(
        id=model_id,
        status=str(status["value"]),
        failed=bool(status.get("failed", False)) or (exit_code not in (None, 0) and status["value"] == "unloaded"),
        exit_code=exit_code,
        aliases=tuple(aliases),
        source=source if isinstance(source, str) else None,
        args=tuple(str(a) for a in args) if isinstance(args, list) else (),
    )


def parse_models(payload: object) -> list[ModelInfo]:
    """Parse a router's ``GET /models`` body (a dict, or its JSON text/bytes) into :class:`ModelInfo`.

    Raises ``ValueError`` naming the first thing that is wrong when the body is not a model list.

    Example::

        models = parse_models(b'{"data":[{"id":"m","status":{"value":"unloaded","failed":true,"exit_code":1}}]}')
        assert models[0].state == "failed" and models[0].exit_code == 1
    """
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"/models: body is not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"/models: body is {type(payload).__name__}, expected an object with 'data'")
    data = payload.get("data")
    if not isinstance(data, list):
        raise ValueError("/models: body has no 'data' list (is this a llama-server router?)")
    return [_parse_one(entry, i) for i, entry in enumerate(data)]


def model_url(base_url: str, path: str, model: str) -> str:
    """A per-model URL on a router that can never load or wake the model (``autoload=false``).

    Example::

        assert model_url("http://h:1", "/metrics", "a b") == "http://h:1/metrics?model=a+b&autoload=false"
    """
    return f"{base_url.rstrip('/')}{path}?{urlencode({'model': model, 'autoload': 'false'})}"


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "llamatelemetry-router"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _models_from_response(resp: httpx.Response) -> list[ModelInfo]:
    if resp.status_code != 200:
        raise RouterError(f"GET {resp.request.url} answered {resp.status_code}: {resp.text[:200]}")
    try:
        return parse_models(resp.content)
    except ValueError as exc:
        raise RouterError(str(exc)) from None


def fetch_models(base_url: str, *, api_key: str | None = None, timeout: float = 5.0,
                 client: httpx.Client | None = None) -> list[ModelInfo]:
    """``GET {base_url}/models`` (sync). Raises :class:`RouterError` on any failure.

    Example::

        loaded = [m.id for m in fetch_models("http://127.0.0.1:8080") if m.state == "loaded"]
    """
    url = base_url.rstrip("/") + "/models"
    try:
        if client is not None:
            return _models_from_response(client.get(url, headers=_headers(api_key), timeout=timeout))
        with httpx.Client(timeout=timeout) as own:
            return _models_from_response(own.get(url, headers=_headers(api_key)))
    except httpx.HTTPError as exc:
        raise RouterError(f"GET {url}: {type(exc).__name__}: {exc}") from None


async def afetch_models(base_url: str, *, api_key: str | None = None, timeout: float = 5.0,
                        client: httpx.AsyncClient | None = None) -> list[ModelInfo]:
    """``GET {base_url}/models`` (async). Raises :class:`RouterError` on any failure.

    Example::

        models = await afetch_models("http://127.0.0.1:8080")
    """
    url = base_url.rstrip("/") + "/models"
    try:
        if client is not None:
            return _models_from_response(await client.get(url, headers=_headers(api_key), timeout=timeout))
        async with httpx.AsyncClient(timeout=timeout) as own:
            return _models_from_response(await own.get(url, headers=_headers(api_key)))
    except httpx.HTTPError as exc:
        raise RouterError(f"GET {url}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class ModelState:
    """What a :class:`ModelWatcher` knows about one model (counters count since the watcher started).

    ``since`` is the ``time.time()`` of the last state change seen (or of the first sync);
    ``loads`` counts load attempts (entering ``loading``, or a model found running after a gap
    in the event stream); ``load_failures`` loads that ended with the child exiting;
    ``unloads`` a running child that stopped (explicit unload, LRU eviction or a crash: the
    router does not say which; ``last_exit_code`` tells a crash); ``last_load_seconds`` the
    last ``loading`` → ``loaded`` time.
    """

    id: str
    status: str
    since: float
    loads: int = 0
    load_failures: int = 0
    unloads: int = 0
    last_exit_code: int | None = None
    last_load_seconds: float | None = None
    loading_since: float | None = None
    aliases: tuple[str, ...] = ()
    source: str | None = None
    args: tuple[str, ...] = ()


#: ``callback(model_id, old_status, new_status, at, exit_code)``: ``old_status`` is None for a model
#: seen for the first time, ``new_status`` is :data:`REMOVED` for one that left the router's list,
#: ``at`` is ``time.time()``, ``exit_code`` is the child's when it exited.
TransitionListener = Callable[[str, "str | None", str, float, "int | None"], None]


def _state_of(status: str, exit_code: int | None) -> str:
    return "failed" if status == "unloaded" and exit_code not in (None, 0) else status


class ModelWatcher:
    """Follow a router's ``/models/sse`` and keep per-model :class:`ModelState` (never loads a model).

    On every (re)connect it resyncs from ``GET /models`` (the stream has no initial state); when the
    router goes away it reconnects with exponential backoff (``backoff`` … ``max_backoff`` seconds).
    Both event names the b11434 source emits are handled: ``model_status`` (at spawn) and
    ``status_change`` (every update, with ``exit_code`` when a child exits); ``models_reload`` and
    ``model_remove`` trigger a resync.

    Two ways to run it:

    * from threads (the exporter): :meth:`start` runs it on its own asyncio loop in a daemon thread,
      :meth:`stop` ends it; :meth:`snapshot` is thread-safe;
    * inside an asyncio app (the gateway): ``task = asyncio.create_task(watcher.run())`` and
      ``task.cancel()`` to stop.

    Listeners (:meth:`add_listener`) are called on the watcher's loop for every state change, in
    order; keep them quick and non-blocking (an exception in one is swallowed and counted in
    :attr:`listener_errors`).

    Example::

        watcher = ModelWatcher("http://127.0.0.1:8080").start()
        watcher.add_listener(lambda m, old, new, at, code: print(m, old, "->", new))
        ...
        watcher.stop()
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 5.0,
                 backoff: float = 0.2, max_backoff: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._transport = transport
        self._lock = threading.Lock()
        self._states: dict[str, ModelState] = {}
        self._listeners: list[TransitionListener] = []
        self._synced = threading.Event()
        self._stop_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        #: True while the event stream is open and the state was resynced after opening it.
        self.connected = False
        #: Why the last connection attempt or stream ended (None while healthy); never holds the API key.
        self.last_error: str | None = None
        #: Completed (re)syncs from ``GET /models``; the first one is the initial sync.
        self.syncs = 0
        #: Events received on the stream.
        self.events = 0
        self.listener_errors = 0
        self._was_up = False

    # --- reading ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, ModelState]:
        """A copy of every known model's state (thread-safe)."""
        with self._lock:
            return dict(self._states)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the first sync from ``GET /models`` is done (True) or ``timeout`` passes (False)."""
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        """True once the model list has been read at least once."""
        return self._synced.is_set()

    def add_listener(self, callback: TransitionListener) -> None:
        """Call ``callback(model_id, old_status, new_status, at, exit_code)`` on every state change."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: TransitionListener) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    # --- state machine ----------------------------------------------------------------------
    def _notify(self, changes: Sequence[tuple[str, str | None, str, float, int | None]]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for change in changes:
            for listener in listeners:
                try:
                    listener(*change)
                except Exception:  # a listener must never stop the watcher
                    self.listener_errors += 1

    def _apply(self, model_id: str, new: str, at: float, exit_code: int | None,
               inferred: bool = False) -> tuple[str, str | None, str, float, int | None] | None:
        """Move one model to ``new`` (lock held); returns the change to announce, if any."""
        old_state = self._states.get(model_id)
        if old_state is None:
            state = ModelState(id=model_id, status=new, since=at,
                               loads=1 if new == "loading" else 0,
                               loading_since=at if new == "loading" else None,
                               last_exit_code=exit_code if new == "failed" else None)
            self._states[model_id] = state
            return (model_id, None, new, at, exit_code)
        old = old_state.status
        if old == new:
            return None  # e.g. repeated "loading" progress updates
        loads, failures, unloads = old_state.loads, old_state.load_failures, old_state.unloads
        last_code, last_load, loading_since = old_state.last_exit_code, old_state.last_load_seconds, old_state.loading_since
        if new == "loading":
            loads += 1
            loading_since = at
        elif new in ("loaded", "sleeping") and old == "loading":
            if loading_since is not None and not inferred:
                last_load = max(0.0, at - loading_since)
            loading_since = None
        elif new in ("loaded", "sleeping") and old not in RUNNING_STATES:
            loads += 1  # the whole load happened while we were not listening (resync)
        elif new in ("unloaded", "failed"):
            if old == "loading":
                if new == "failed":
                    failures += 1
                loading_since = None
            elif old in ("loaded", "sleeping"):
                unloads += 1
            if exit_code is not None:
                last_code = exit_code
        self._states[model_id] = replace(old_state, status=new, since=at, loads=loads, load_failures=failures,
                                         unloads=unloads, last_exit_code=last_code, last_load_seconds=last_load,
                                         loading_since=loading_since)
        return (model_id, old, new, at, exit_code)

    def _resync(self, models: list[ModelInfo], at: float) -> None:
        changes = []
        with self._lock:
            seen = set()
            for info in models:
                seen.add(info.id)
                change = self._apply(info.id, info.state, at, info.exit_code, inferred=True)
                current = self._states[info.id]
                self._states[info.id] = replace(current, aliases=info.aliases, source=info.source, args=info.args)
                if change is not None:
                    changes.append(change)
            for gone in [m for m in self._states if m not in seen]:
                old = self._states.pop(gone).status
                changes.append((gone, old, REMOVED, at, None))
            self.syncs += 1
        self._synced.set()
        self._notify(changes)

    def handle_event(self, event: Mapping[str, object], at: float | None = None) -> bool:
        """Apply one decoded ``/models/sse`` event; returns True when a resync is needed.

        Public so tests and other transports can feed events; the watcher calls it itself.
        """
        at = time.time() if at is None else at
        name = event.get("event")
        model_id = event.get("model")
        data = event.get("data")
        if name in ("models_reload", "model_remove"):
            return True
        if name not in ("model_status", "status_change") or not isinstance(model_id, str):
            return False  # download progress and events of later builds: nothing to count
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            return False
        code = data.get("exit_code")
        exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        with self._lock:
            change = self._apply(model_id, _state_of(str(data["status"]), exit_code), at, exit_code)
        if change is not None:
            self._notify([change])
        return False

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the router until cancelled (or :meth:`stop`); reconnects forever with backoff."""
        delay = self.backoff
        async with httpx.AsyncClient(headers=_headers(self.api_key), transport=self._transport,
                                     timeout=httpx.Timeout(self.timeout, read=None)) as client:
            while not self._stop_requested.is_set():
                try:
                    await self._follow(client)
                    self.last_error = "event stream ended (router stopped?)"
                except asyncio.CancelledError:
                    self.connected = False
                    raise
                except (httpx.HTTPError, RouterError, ValueError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                self.connected = False
                await asyncio.sleep(delay)
                # a stream that was up resets the backoff; repeated failures double it
                delay = self.backoff if self._was_up else min(self.max_backoff, delay * 2)

    async def _follow(self, client: httpx.AsyncClient) -> None:
        self._was_up = False
        async with client.stream("GET", self.base_url + "/models/sse",
                                 headers={"Accept": "text/event-stream"}) as resp:
            if resp.status_code != 200:
                body = (await resp.aread())[:200].decode(errors="replace")
                raise RouterError(f"GET /models/sse answered {resp.status_code}: {body}")
            # The stream is open: events from now on are queued for us, so a resync now cannot
            # miss a transition that happens after it.
            self._resync(await afetch_models(self.base_url, client=client, timeout=self.timeout), time.time())
            self.connected = True
            self.last_error = None
            self._was_up = True
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                try:
                    event = json.loads(line[5:].strip())
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                self.events += 1
                if self.handle_event(event):
                    self._resync(await afetch_models(self.base_url, client=client, timeout=self.timeout), time.time())

    # --- thread shell -----------------------------------------------------------------------
    def start(self) -> "ModelWatcher":
        """Run the watcher in a daemon thread with its own event loop; returns self."""
        if self._thread is not None:
            return self
        self._stop_requested.clear()
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            started.set()
            try:
                await self.run()
            except asyncio.CancelledError:
                pass

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="llamatelemetry-router-watch", daemon=True)
        self._thread.start()
        started.wait(5.0)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the daemon thread started by :meth:`start` (closes the event stream)."""
        self._stop_requested.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self.connected = False

    def __enter__(self) -> "ModelWatcher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "REMOVED", "ROUTER_STATUSES", "RUNNING_STATES", "STATES", "ModelInfo", "ModelState", "ModelWatcher",
    "RouterError", "TransitionListener", "afetch_models", "fetch_models", "is_router", "model_url", "parse_models",
]
