"""Is each upstream llama-server reachable? The gateway's own answer, for operators and ``top``.

A gateway whose llama-server is down must not look healthy. This module keeps one state per
upstream, fed two ways: passively by every forwarded request (an answer of any status means
reachable; a failure to connect means not), and actively by a check at start and every
:data:`CHECK_INTERVAL_SECONDS` (``GET /health`` on the upstream; llama-server answers it even
while loading). The state shows as:

- the admin ``/health``: ``200 ok`` when every upstream answered, else ``503`` and one line per
  unreachable upstream saying which and why (what a readiness probe or a script needs);
- the gauge ``llamatelemetry_proxy_upstream_up{upstream="URL"}`` (1 reachable, 0 not) on the
  admin ``/metrics``;
- the log: a warning at start for an upstream that does not answer, and one line per failed
  request, at most one per upstream every :data:`LOG_EVERY_SECONDS` (with how many were not
  logged), so a tool retrying in a loop cannot flood it. Recovery is logged once.

Example::

    health = UpstreamHealth(["http://127.0.0.1:8080"])
    await health.check_all(http)            # warns if it does not answer
    health.failed("http://127.0.0.1:8080", httpx.ConnectError("refused"))
    health.unreachable()                    # {"http://127.0.0.1:8080": "ConnectError: refused"}
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("llamatelemetry.proxy")

#: How often the gateway checks each upstream by itself (requests update the state in between).
CHECK_INTERVAL_SECONDS = 10.0
#: Bound on one check: the upstream answers /health at once, or it is not reachable.
CHECK_TIMEOUT_SECONDS = 3.0
#: At most one log line per upstream per this many seconds about failed requests.
LOG_EVERY_SECONDS = 10.0
#: The gauge on the admin /metrics.
METRIC_UPSTREAM_UP = "llamatelemetry_proxy_upstream_up"


@dataclass
class _State:
    reachable: bool | None = None  #: None: not known yet
    problem: str = ""
    logged_at: float = float("-inf")
    not_logged: int = 0


class UpstreamHealth(Collector):
    """Reachability of each upstream (see module docs); also a ``prometheus_client`` collector."""

    def __init__(self, upstreams: Iterable[str]) -> None:
        self._states = {url.rstrip("/"): _State() for url in upstreams}

    def _state(self, upstream: str) -> _State:
        return self._states.setdefault(upstream.rstrip("/"), _State())

    def answered(self, upstream: str) -> None:
        """The upstream sent an HTTP answer (any status): it is reachable."""
        state = self._state(upstream)
        if state.reachable is False:
            log.warning("upstream %s answers again", upstream)
        state.reachable, state.problem, state.not_logged = True, "", 0

    def failed(self, upstream: str, exc: BaseException, *, path: str | None = None, client: str | None = None) -> None:
        """A request (or a check, ``path=None``) could not reach the upstream; logs at most once per interval."""
        state = self._state(upstream)
        state.reachable, state.problem = False, f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - state.logged_at < LOG_EVERY_SECONDS:
            state.not_logged += 1
            return
        more = f" ({state.not_logged} more failures since the last line)" if state.not_logged else ""
        if path:
            log.warning("upstream %s unreachable (%s): %s from %s answered 502%s; is llama-server running there?",
                        upstream, state.problem, path, client or "a client", more)
        else:
            log.warning("upstream %s unreachable (%s): requests to it are answered 502 until it answers%s",
                        upstream, state.problem, more)
        state.logged_at, state.not_logged = now, 0

    def unreachable(self) -> dict[str, str]:
        """Upstreams known to be unreachable, with why."""
        return {url: s.problem for url, s in self._states.items() if s.reachable is False}

    def is_up(self, upstream: str) -> bool | None:
        return self._state(upstream).reachable

    async def check(self, http: httpx.AsyncClient, upstream: str) -> bool:
        """``GET /health`` on one upstream; any HTTP answer (503 while loading included) means reachable."""
        try:
            # Connection: close — a probe every 10 s must not keep a pooled connection (and a slot of
            # llama-server's HTTP threads) open between checks.
            await http.get(upstream.rstrip("/") + "/health", headers={"connection": "close"}, timeout=CHECK_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            self.failed(upstream, exc)
            return False
        self.answered(upstream)
        return True

    async def check_all(self, http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self.check(http, url) for url in list(self._states)))

    async def watch(self, http: httpx.AsyncClient, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """Check every upstream now, then every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.check_all(http)
            except Exception:  # noqa: BLE001 - a failed check must never stop the gateway
                log.debug("upstream check failed", exc_info=True)
            await asyncio.sleep(interval)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(METRIC_UPSTREAM_UP, "Whether the gateway reaches this upstream llama-server "
                                  "(1: it answered HTTP, any status; 0: connecting failed).", labels=["upstream"])
        for url, state in self._states.items():
            if state.reachable is not None:
                gauge.add_metric([url], 1.0 if state.reachable else 0.0)
        yield gauge
