"""Fetch llama-server endpoints for many targets concurrently, each under a deadline and a size cap.

Everything runs on one long-lived asyncio loop in a background thread (:class:`AsyncRunner`):
the exporter's HTTP server and the fetching, which uses the small HTTP client in
:mod:`._http` (one short-lived connection per request, see there why).

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

from ._http import HTTPFailure, ResponseTooLarge, http_get
from .targets import Target

T = TypeVar("T")
_timeout = getattr(asyncio, "timeout", None)


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

    async def _get_with_retry(self, url: str) -> tuple[int, bytes]:
        try:
            return await http_get(url, self._headers, max_bytes=self.max_bytes)
        except (HTTPFailure, ConnectionResetError) as exc:
            # Seen with llama-server: a fresh connection closed before any response byte. Nothing
            # was answered, so one retry is safe; anything else is reported as is.
            if isinstance(exc, HTTPFailure) and "without answering" not in str(exc):
                raise
            return await http_get(url, self._headers, max_bytes=self.max_bytes)

    async def get(self, url: str) -> Fetched:
        """GET ``url``; transport problems become ``Fetched(error=...)``, never exceptions."""
        try:
            if _timeout is not None:  # Python 3.11+: a deadline without an extra task per request
                async with _timeout(self.timeout):
                    status, body = await self._get_with_retry(url)
            else:  # pragma: no cover - Python 3.10
                status, body = await asyncio.wait_for(self._get_with_retry(url), self.timeout)
            return Fetched(status=status, body=body)
        except asyncio.TimeoutError:
            return Fetched(error=f"timed out after {self.timeout:g}s")
        except (ResponseTooLarge, HTTPFailure) as exc:
            return Fetched(error=str(exc))
        except ConnectionRefusedError:
            return Fetched(error="connection refused (is llama-server running on that port?)")
        except OSError as exc:
            return Fetched(error=f"connection failed: {exc.strerror or exc}")

    async def fetch_target(self, target: Target, with_props: bool = True) -> TargetSnapshot:
        """Fetch ``/metrics`` and ``/slots`` (and ``/props`` when asked) concurrently.

        ``/health`` is only asked when those answers do not already tell the server state: any
        200 means ready and llama-server answers 503 on every endpoint while loading, so a
        healthy target costs two requests per scrape. (Each request in flight holds one of
        llama-server's few HTTP threads, so fewer is kinder to real clients.)
        """
        start = time.perf_counter()
        endpoints = ("metrics", "slots", "props") if with_props else ("metrics", "slots")
        answers = await asyncio.gather(*(self.get(target.url("/" + ep)) for ep in endpoints))
        results = dict(zip(endpoints, answers))
        decided = any(a.status in (200, 503) for a in answers) or all(a.status is None for a in answers)
        if not decided:  # e.g. /metrics and /slots both 501 (started without --metrics, with --no-slots)
            results["health"] = await self.get(target.url("/health"))
        return TargetSnapshot(target, results, time.perf_counter() - start)

    async def fetch_all(self, targets: list[Target], with_props: dict[str, bool] | None = None) -> list[TargetSnapshot]:
        """Fetch every target concurrently; a slow or dead target only costs its own deadline."""
        wanted = with_props or {}
        return list(await asyncio.gather(*(self.fetch_target(t, wanted.get(t.name, True)) for t in targets)))
