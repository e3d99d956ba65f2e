"""Fetch llama-server endpoints for many targets concurrently, each under a deadline and a size cap.

Everything runs on one long-lived asyncio loop in a background thread (:class:`AsyncRunner`):
the exporter's HTTP server and the fetching, which uses the small HTTP client in
:mod:`._http` (one short-lived connection per request, see there why; each GET is started
at once and awaited later, so a target's endpoints are read in parallel without a task per GET).

Example::

    runner = AsyncRunner().start()
    fetcher = Fetcher(timeout=2.0)
    snaps = runner.run(fetcher.fetch_all([parse_target("http://127.0.0.1:8080")]), timeout=3.0)
    runner.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Coroutine, TypeVar

from ._http import HTTPFailure, PendingGet, ResponseTooLarge, start_get
from .targets import Target

T = TypeVar("T")


#: Default cap on the bytes read from one endpoint of one target (a llama-server /props with a
#: long chat template is ~50 kB; /slots is ~2 kB per slot).
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


@dataclass
class Fetched:
    """One HTTP GET: ``status`` is ``None`` when no HTTP answer came (``error`` says why)."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None


@dataclass
class TargetSnapshot:
    """Raw answers of one target's endpoints, fetched concurrently."""

    target: Target
    results: dict[str, Fetched] = field(default_factory=dict)
    duration: float = 0.0


class AsyncRunner:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine on it from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llamatelemetry-fetch", daemon=True)

    def start(self) -> "AsyncRunner":
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class Fetcher:
    """Reads a target's llama-server endpoints concurrently (see :meth:`fetch_target`).

    ``timeout`` is the per-target deadline in seconds (a target's endpoints are fetched in
    parallel, so it bounds the whole target); ``max_bytes`` caps each response body;
    ``api_key`` is sent as ``Authorization: Bearer`` and never logged.
    """

    def __init__(self, *, timeout: float = 2.0, max_bytes: int = DEFAULT_MAX_BYTES, api_key: str | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._headers = {"Accept": "application/json, text/plain;q=0.9", "User-Agent": "llamatelemetry-exporter"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    async def aclose(self) -> None:
        """Nothing to release: every request uses its own connection."""

    def _start(self, url: str) -> PendingGet:
        deadline = asyncio.get_running_loop().time() + self.timeout
        return start_get(url, self._headers, max_bytes=self.max_bytes, deadline=deadline)

    async def _answer(self, url: str, pending: PendingGet) -> tuple[Fetched, float]:
        """Await a started GET: the answer and when it came. Problems become ``Fetched(error=...)``."""
        try:
            try:
                status, body = await pending
            except (HTTPFailure, ConnectionResetError) as exc:
                # Seen with llama-server: a fresh connection closed before any response byte. Nothing
                # was answered, so one retry (within the same deadline) is safe; anything else is
                # reported as is.
                if isinstance(exc, HTTPFailure) and "without answering" not in str(exc):
                    raise
                pending = start_get(url, self._headers, max_bytes=self.max_bytes, deadline=pending.deadline)
                status, body = await pending
            fetched = Fetched(status=status, body=body)
        except asyncio.TimeoutError:
            fetched = Fetched(error=f"timed out after {self.timeout:g}s")
        except (ResponseTooLarge, HTTPFailure) as exc:
            fetched = Fetched(error=str(exc))
        except ConnectionRefusedError:
            fetched = Fetched(error="connection refused (is llama-server running on that port?)")
        except OSError as exc:
            fetched = Fetched(error=f"connection failed: {exc.strerror or exc}")
        return fetched, pending.finished_at()

    async def get(self, url: str) -> Fetched:
        """GET ``url``; transport problems become ``Fetched(error=...)``, never exceptions."""
        return (await self._answer(url, self._start(url)))[0]

    async def fetch_target(self, target: Target, with_props: bool = True) -> TargetSnapshot:
        """Fetch ``/metrics`` and ``/slots`` (and ``/props`` when asked) concurrently.

        Every GET is started before the first one is awaited, so they run in parallel without a
        task each. ``/health`` is only asked when those answers do not already tell the server
        state: any 200 means ready and llama-server answers 503 on every endpoint while
        loading, so a healthy target costs two requests per scrape. (Each request in flight
        holds one of llama-server's few HTTP threads, so fewer is kinder to real clients.)
        """
        start = time.perf_counter()
        endpoints = ("metrics", "slots", "props") if with_props else ("metrics", "slots")
        urls = [target.url("/" + ep) for ep in endpoints]
        started = [(url, self._start(url)) for url in urls]
        results: dict[str, Fetched] = {}
        finished = start
        try:
            for ep, (url, pending) in zip(endpoints, started):
                results[ep], done = await self._answer(url, pending)
                finished = max(finished, done)
        finally:  # only does something when this scrape was cancelled half-way
            for _, pending in started:
                pending.discard()
        answers = list(results.values())
        decided = any(a.status in (200, 503) for a in answers) or all(a.status is None for a in answers)
        if not decided:  # e.g. /metrics and /slots both 501 (started without --metrics, with --no-slots)
            url = target.url("/health")
            results["health"], finished = await self._answer(url, self._start(url))
        return TargetSnapshot(target, results, finished - start)

    async def fetch_all(self, targets: list[Target], with_props: dict[str, bool] | None = None) -> list[TargetSnapshot]:
        """Fetch every target concurrently; a slow or dead target only costs its own deadline."""
        wanted = with_props or {}
        if len(targets) == 1:  # no task needed to run one target
            return [await self.fetch_target(targets[0], wanted.get(targets[0].name, True))]
        return list(await asyncio.gather(*(self.fetch_target(t, wanted.get(t.name, True)) for t in targets)))
