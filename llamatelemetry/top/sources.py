"""Where ``llamatelemetry top`` gets its numbers: the exporter's and the gateway's HTTP endpoints.

Each read returns a :class:`Reading` — the parsed page, or the reason the source is down — and
never raises: a source that is down is a state to show, not an error. llama-server itself is
never read here (its ``/metrics`` resets two throughput gauges on every read, which would
corrupt the exporter's numbers); everything about the servers comes through the exporter.

Example::

    sources = Sources("http://127.0.0.1:9183", "http://127.0.0.1:9184")
    snapshot = asyncio.run(sources.read_once())
    snapshot.exporter.metrics.total("llamacpp_tokens_predicted_total", target="demo")
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable

import httpx

from .._defaults import API_KEY_ENV
from ..promtext import PromTextParseError, Sample, parse_prometheus_text
from .routersource import RouterReading, RouterSource

__all__ = ["Metrics", "Reading", "RecentRequest", "Snapshot", "Sources", "parse_recent"]

#: The gateway series the view uses (sample-name prefixes); see ``model.Model._fill_clients``.
GATEWAY_SERIES = (
    "llamatelemetry_proxy_requests_total",
    "gen_ai_client_token_usage_sum",
    "llamatelemetry_reasoning_budget_exhausted_total",
    "gen_ai_server_time_to_first_token_seconds_bucket",
    "gen_ai_server_request_duration_seconds_count",
    "llamatelemetry_model_load_wait_seconds_count",  # cold starts per model (router upstreams)
    "llamatelemetry_proxy_upstream_up",  # the gateway reaches its llama-server(s), or not
    "llamatelemetry_prompt_tokens_total",  # with the next: the prompt-cache hit ratio per client
    "llamatelemetry_prompt_cached_tokens_total",
)

#: Largest page read from one endpoint: a misconfigured URL pointing at something huge must not eat memory.
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Metrics:
    """The samples of one Prometheus page, indexed by sample name.

    Example::

        >>> m = Metrics.parse('x_total{target="a"} 3\\nx_total{target="b"} 4\\n')
        >>> m.total("x_total"), m.total("x_total", target="a"), m.total("missing")
        (7.0, 3.0, None)
    """

    by_name: dict[str, list[Sample]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, only: tuple[str, ...] | None = None) -> "Metrics":
        """Parse Prometheus text (raises :class:`~llamatelemetry.promtext.PromTextParseError`).

        ``only``: keep just the sample lines whose name starts with one of these (comment lines
        go too, so those samples read as untyped). The gateway's page is mostly histogram buckets
        the view never shows; skipping them before parsing halves the cost of a read.
        """
        if only is not None:
            text = "\n".join(line for line in text.split("\n") if line.startswith(only))
        by_name: dict[str, list[Sample]] = {}
        for family in parse_prometheus_text(text):
            for sample in family.samples:
                by_name.setdefault(sample.name, []).append(sample)
        return cls(by_name)

    def series(self, name: str, **labels: str) -> list[Sample]:
        """Samples of ``name`` whose labels include ``labels``."""
        samples = self.by_name.get(name, [])
        if not labels:
            return samples
        return [s for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the matching samples, or ``None`` when there is none (absent is not zero)."""
        found = self.series(name, **labels)
        return math.fsum(s.value for s in found) if found else None

    def label_values(self, name: str, label: str) -> list[str]:
        """Distinct values of ``label`` on ``name``, in order of appearance."""
        seen: dict[str, None] = {}
        for sample in self.by_name.get(name, []):
            if label in sample.labels:
                seen.setdefault(sample.labels[label], None)
        return list(seen)


@dataclass(frozen=True)
class RecentRequest:
    """One request the gateway forwarded (an item of its ``/api/recent``)."""

    time: float
    client: str
    method: str
    endpoint: str
    upstream: str
    model: str | None
    status: int | None
    stream: bool
    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cached_tokens: int | None
    ttft_s: float | None
    duration_s: float | None
    budget_exhausted: bool
    error_type: str | None

    @property
    def failed(self) -> bool:
        """The request ended in an error (HTTP status >= 400, or no answer at all)."""
        return self.error_type is not None or (self.status is not None and self.status >= 400)


def _opt_int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _opt_float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_recent(body: object) -> list[RecentRequest]:
    """The items of a gateway ``/api/recent`` answer (``{"requests": [...]}``), newest first.

    Fields of the wrong type read as unknown (``None``) rather than failing the whole list;
    an answer without a ``requests`` list raises :class:`ValueError`.
    """
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise ValueError('expected a JSON object {"requests": [...]}')
    out: list[RecentRequest] = []
    for item in body["requests"]:
        if not isinstance(item, dict):
            continue
        out.append(RecentRequest(
            time=_opt_float(item.get("time")) or 0.0,
            client=_opt_str(item.get("client")) or "other",
            method=_opt_str(item.get("method")) or "",
            endpoint=_opt_str(item.get("endpoint")) or "",
            upstream=_opt_str(item.get("upstream")) or "",
            model=_opt_str(item.get("model")),
            status=_opt_int(item.get("status")),
            stream=item.get("stream") is True,
            input_tokens=_opt_int(item.get("input_tokens")),
            output_tokens=_opt_int(item.get("output_tokens")),
            reasoning_tokens=_opt_int(item.get("reasoning_tokens")),
            cached_tokens=_opt_int(item.get("cached_tokens")),
            ttft_s=_opt_float(item.get("ttft_s")),
            duration_s=_opt_float(item.get("duration_s")),
            budget_exhausted=item.get("budget_exhausted") is True,
            error_type=_opt_str(item.get("error_type")),
        ))
    return out


@dataclass(frozen=True)
class Reading:
    """What one source gave at one moment: its metrics (and recent requests), or why it is down."""

    url: str
    metrics: Metrics | None = None
    recent: list[RecentRequest] | None = None
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.error is None and self.metrics is not None


@dataclass(frozen=True)
class Snapshot:
    """Both sources read at (nearly) the same moment. ``time`` is monotonic seconds, ``wall`` unix seconds."""

    time: float
    wall: float
    exporter: Reading
    gateway: Reading
    #: The router's models (``top --router URL``); None when no router is followed.
    router: RouterReading | None = None


def _describe(exc: BaseException) -> str:
    """A short, human reason for a failed read (shown in the view as the source's state)."""
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        while cause is not None:  # httpx wraps the OSError; the errno says whether anything listens
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            cause = cause.__cause__ or cause.__context__
        return f"cannot connect ({exc})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PromTextParseError):
        return f"not Prometheus text ({exc})"
    if isinstance(exc, ValueError):
        return f"unexpected answer ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Sources:
    """Reads the exporter (``/metrics``) and the gateway admin port (``/metrics``, ``/api/recent``).

    The three GETs of one :meth:`read` run concurrently on one pooled ``httpx.AsyncClient``,
    each bounded by ``timeout``. Use as an async context manager, or call :meth:`aclose`.
    """

    def __init__(self, exporter_url: str, gateway_url: str, *, timeout: float = 3.0, recent_limit: int = 50,
                 router_url: str | None = None) -> None:
        self.exporter_url = exporter_url.rstrip("/")
        self.gateway_url = gateway_url.rstrip("/")
        #: A llama-server router whose models the models panel shows (followed in the background).
        # A router started with --api-key wants it on /models and /models/sse too (from $LLAMA_API_KEY, as the client).
        self.router = RouterSource(router_url, api_key=os.environ.get(API_KEY_ENV) or None).start() if router_url else None
        self._router_waited = False
        self.recent_limit = recent_limit
        # The exporter waits up to its own --timeout (2 s by default) for a dead llama-server: allow a bit more.
        self._client = httpx.AsyncClient(timeout=timeout, headers={"Accept": "text/plain, application/json"},
                                         limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=30))

    async def __aenter__(self) -> "Sources":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.router is not None:
            await asyncio.to_thread(self.router.stop)
        await self._client.aclose()

    async def _get(self, url: str, params: dict[str, str | int] | None = None) -> bytes:
        async with self._client.stream("GET", url, params=params) as resp:
            resp.raise_for_status()
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    async def _metrics(self, base: str, only: tuple[str, ...] | None = None) -> Metrics:
        return Metrics.parse((await self._get(base + "/metrics")).decode("utf-8", errors="replace"), only)

    async def _recent(self) -> list[RecentRequest]:
        return parse_recent(json.loads(await self._get(self.gateway_url + "/api/recent", {"limit": self.recent_limit})))

    async def read(self) -> Snapshot:
        """Read every source once; a source that fails is reported in its :class:`Reading`, never raised."""
        started, wall = time.monotonic(), time.time()
        results = await asyncio.gather(self._metrics(self.exporter_url), self._metrics(self.gateway_url, GATEWAY_SERIES), self._recent(),
                                       return_exceptions=True)
        exporter_m, gateway_m, recent = results
        if isinstance(exporter_m, BaseException):
            _reraise_cancel(exporter_m)
            exporter = Reading(self.exporter_url, error=_describe(exporter_m))
        else:
            exporter = Reading(self.exporter_url, metrics=exporter_m)
        if isinstance(gateway_m, BaseException):
            _reraise_cancel(gateway_m)
            gateway = Reading(self.gateway_url, error=_describe(gateway_m))
        else:
            if isinstance(recent, BaseException):
                _reraise_cancel(recent)
                recent_list: list[RecentRequest] | None = None
            else:
                recent_list = recent
            gateway = Reading(self.gateway_url, metrics=gateway_m, recent=recent_list)
        router = None
        if self.router is not None:
            if not self._router_waited:  # the first view shows the models, not "not read yet" (bounded wait, once)
                self._router_waited = True
                await asyncio.to_thread(self.router.watcher.wait_synced, 2.0)
            router = self.router.read()
        return Snapshot(time=started, wall=wall, exporter=exporter, gateway=gateway, router=router)

    async def read_once(self) -> Snapshot:
        """:meth:`read`, then close the client (for one-shot use with ``asyncio.run``)."""
        try:
            return await self.read()
        finally:
            await self.aclose()


def _reraise_cancel(exc: BaseException) -> None:
    # gather(return_exceptions=True) hands back cancellation too; only real read failures are states.
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
        raise exc


def merge_labels(samples: Iterable[Sample], by: str) -> dict[str, float]:
    """Sum sample values grouped by the value of label ``by`` (samples without it are skipped).

    Example: requests per model from the gateway's per-client series,
    ``merge_labels(metrics.series("gen_ai_server_request_duration_seconds_count"), "gen_ai_request_model")``.
    """
    out: dict[str, float] = {}
    for sample in samples:
        key = sample.labels.get(by)
        if key is not None:
            out[key] = out.get(key, 0.0) + sample.value
    return out
