"""Fetch llama-server endpoints for many targets concurrently, each under a deadline and a size cap.

The exporter's scrape handler runs in an HTTP server thread; the fetching runs on one
long-lived asyncio loop in a background thread (:class:`AsyncRunner`) with one pooled
``httpx.AsyncClient``, so connections to llama-server are reused between scrapes.

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

import httpx

from .targets import Target

T = TypeVar("T")

#: Endpoints read on every scrape, in this order.
ENDPOINTS = ("health", "metrics", "props", "slots")

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


class ResponseTooLarge(Exception):
    """The endpoint sent more than the byte cap."""


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
    """Reads ``/health``, ``/metrics``, ``/props`` and ``/slots`` of every target concurrently.

    ``timeout`` is the per-target deadline in seconds (all of a target's endpoints are fetched
    in parallel, so it bounds the whole target); ``max_bytes`` caps each response body;
    ``api_key`` is sent as ``Authorization: Bearer`` and never logged. ``transport`` lets
    tests plug in ``httpx.MockTransport``. The client is created lazily on the loop that
    first uses it.
    """

    def __init__(self, *, timeout: float = 2.0, max_bytes: int = DEFAULT_MAX_BYTES, api_key: str | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._headers = {"Accept": "application/json, text/plain;q=0.9", "User-Agent": "llamatelemetry-exporter"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=4.0),
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,  # never route loopback llama-servers through an HTTP proxy
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _get_once(self, url: str) -> Fetched:
        client = self._get_client()
        async with client.stream("GET", url) as resp:
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ResponseTooLarge(f"response is {declared} bytes, over the {self.max_bytes}-byte cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ResponseTooLarge(f"response exceeded the {self.max_bytes}-byte cap")
                chunks.append(chunk)
            return Fetched(status=resp.status_code, body=b"".join(chunks))

    async def get(self, url: str) -> Fetched:
        """GET ``url``; transport problems become ``Fetched(error=...)``, never exceptions."""
        try:
            for attempt in (1, 2):
                try:
                    return await asyncio.wait_for(self._get_once(url), self.timeout)
                except httpx.RemoteProtocolError:
                    # A pooled keep-alive connection the server had already closed: no response byte
                    # was received, so one retry on a fresh connection is safe.
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return Fetched(error=f"timed out after {self.timeout:g}s")
        except ResponseTooLarge as exc:
            return Fetched(error=str(exc))
        except httpx.ConnectError as exc:
            return Fetched(error=f"connection failed: {exc or type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Fetched(error=f"{type(exc).__name__}: {exc}")

    async def fetch_target(self, target: Target, endpoints: tuple[str, ...] = ENDPOINTS) -> TargetSnapshot:
        start = time.perf_counter()
        answers = await asyncio.gather(*(self.get(target.url("/" + ep)) for ep in endpoints))
        return TargetSnapshot(target, dict(zip(endpoints, answers)), time.perf_counter() - start)

    async def fetch_all(self, targets: list[Target]) -> list[TargetSnapshot]:
        """Fetch every target concurrently; a slow or dead target only costs its own deadline."""
        return list(await asyncio.gather(*(self.fetch_target(t) for t in targets)))
