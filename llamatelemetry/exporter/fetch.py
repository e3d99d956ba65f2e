"""Fetch llama-server endpoints for many targets concurrently with one shared ``httpx.AsyncClient``.

Everything runs on one long-lived asyncio loop in a background thread (:class:`AsyncRunner`).
The HTTP server's request threads hand a scrape to that loop (``AsyncRunner.run``) and wait
for it, so all targets of a scrape are read concurrently by one client, whatever thread asked.

Why no keep-alive: llama-server serves HTTP from a small fixed thread pool (``n_parallel + 4``
threads in the pinned build) and an idle keep-alive connection pins one of those threads until
it times out. The exporter talks to a target once per scrape (every 10-15 s), so a pooled idle
connection would buy nothing and take capacity away from the clients doing real work.

Example::

    runner = AsyncRunner().start()
    fetcher = Fetcher(timeout=2.0)
    snaps = runner.run(fetcher.fetch_all([parse_target("http://127.0.0.1:8080")]), timeout=3.0)
    runner.run(fetcher.aclose()); runner.stop()
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Coroutine, TypeVar

import httpx

from .targets import Target

T = TypeVar("T")


#: Default cap on the bytes read from one endpoint of one target (a llama-server /props with a
#: long chat template is ~50 kB; /slots is ~2 kB per slot).
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

#: Sent with every request; the exporter's own server answers a request carrying its own
#: instance id with 508, so an exporter pointed at itself fails fast instead of recursing.
LOOP_HEADER = "X-Llamatelemetry-Exporter"


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
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class _TooLarge(Exception):
    pass


class Fetcher:
    """Reads a target's llama-server endpoints concurrently (see :meth:`fetch_target`).

    ``timeout`` is the per-target deadline in seconds (a target's endpoints are fetched in
    parallel, so it bounds the whole target); ``max_bytes`` caps each response body;
    ``api_key`` is sent as ``Authorization: Bearer`` and never logged. ``transport`` replaces
    httpx's (tests inject faults a real server cannot produce). Use one Fetcher from one event
    loop (the exporter's fetch loop): the client's connections belong to it.
    """

    def __init__(self, *, timeout: float = 2.0, max_bytes: int = DEFAULT_MAX_BYTES, api_key: str | None = None,
                 instance_id: str = "", transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.api_key = api_key  # also given to a router target's event-stream watcher; never logged
        headers = {"Accept": "application/json, text/plain;q=0.9", "User-Agent": "llamatelemetry-exporter"}
        if instance_id:
            headers[LOOP_HEADER] = instance_id
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # No idle connection is kept (see the module docstring); max_connections=None because the
        # per-target deadline, not a pool queue, must bound a scrape.
        self.client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout), follow_redirects=False, transport=transport,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _get_once(self, url: str) -> Fetched:
        async with self.client.stream("GET", url) as resp:
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise _TooLarge(f"response is {length} bytes, over the {self.max_bytes}-byte cap (--max-response-bytes)")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise _TooLarge(f"response exceeded the {self.max_bytes}-byte cap (--max-response-bytes)")
                chunks.append(chunk)
            return Fetched(status=resp.status_code, body=b"".join(chunks))

    async def get(self, url: str) -> Fetched:
        """GET ``url``; transport problems become ``Fetched(error=...)``, never exceptions."""
        try:
            try:
                return await self._get_once(url)
            except httpx.RemoteProtocolError:
                # Seen with llama-server: a fresh connection closed before any response byte. A GET is
                # safe to repeat, so one retry (within the same deadline) hides it.
                return await self._get_once(url)
        except _TooLarge as exc:
            return Fetched(error=str(exc))
        except httpx.TimeoutException:
            return Fetched(error=f"timed out after {self.timeout:g}s")
        except httpx.ConnectError as exc:
            text = str(exc)
            if "refused" in text.lower():
                return Fetched(error="connection refused (is llama-server running on that port?)")
            return Fetched(error=f"connection failed: {text or type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Fetched(error=f"{type(exc).__name__}: {exc}")

    async def fetch_target(self, target: Target, with_props: bool = True) -> TargetSnapshot:
        """Fetch ``/metrics`` and ``/slots`` (and ``/props`` when asked) concurrently.

        ``/health`` is only asked when those answers do not already tell the server state:
        any 200 means ready and llama-server answers 503 on every endpoint while loading, so a
        healthy target costs two requests per scrape (each request in flight holds one of
        llama-server's few HTTP threads, so fewer is kinder to real clients).
        """
        start = time.perf_counter()
        endpoints = ("metrics", "slots", "props") if with_props else ("metrics", "slots")
        results: dict[str, Fetched] = {}

        async def read(endpoint: str) -> None:
            results[endpoint] = await self.get(target.url("/" + endpoint))

        async def read_all() -> None:
            await asyncio.gather(*(read(ep) for ep in endpoints))
            answers = list(results.values())
            decided = any(a.status in (200, 503) for a in answers) or all(a.status is None for a in answers)
            if not decided:  # e.g. /metrics and /slots both 501 (started without --metrics, with --no-slots)
                await read("health")

        try:  # answers that came in time are kept when another endpoint of the target is too slow
            await asyncio.wait_for(read_all(), self.timeout)
        except asyncio.TimeoutError:
            for ep in endpoints:
                results.setdefault(ep, Fetched(error=f"timed out after {self.timeout:g}s"))
        return TargetSnapshot(target, results, time.perf_counter() - start)

    async def fetch_all(self, targets: list[Target], with_props: dict[str, bool] | None = None) -> list[TargetSnapshot]:
        """Fetch every target concurrently; a slow or dead target only costs its own deadline."""
        wanted = with_props or {}
        return list(await asyncio.gather(*(self.fetch_target(t, wanted.get(t.name, True)) for t in targets)))
