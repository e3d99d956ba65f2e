"""The gateway's admin port: ``/metrics`` (Prometheus), ``/api/recent`` (JSON), ``/health``.

Separate from the proxied port on purpose: the proxied port forwards *every* path to
llama-server (including llama-server's own ``/metrics`` and ``/health``), so the gateway's
own endpoints cannot live there.

``/metrics`` is the Prometheus exposition of the gateway's OpenTelemetry metrics, produced by
``opentelemetry-exporter-prometheus``'s reader on a registry of its own (names translated the
standard way: ``gen_ai.server.time_to_first_token`` → ``gen_ai_server_time_to_first_token_seconds``).

Example::

    admin = admin_app(PrometheusRegistry(), RecentRequests())
    uvicorn.run(admin, host="127.0.0.1", port=9184)
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .recent import RecentRequests
from .upstreams import UpstreamHealth


def admin_app(registry: CollectorRegistry, recent: RecentRequests, upstreams: UpstreamHealth | None = None) -> Starlette:
    """The ASGI app of the admin port.

    ``/health`` is ``200 ok`` while every upstream answers, else ``503`` with a line per unreachable upstream
    (the gateway is up, but requests to that upstream get 502: not ready for traffic).
    """

    # A plain ``def``: Starlette runs it in a worker thread, so collecting the metrics (a few
    # milliseconds with many series) never stalls the event loop that forwards streams.
    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def api_recent(request: Request) -> Response:
        raw = request.query_params.get("limit")
        try:
            limit = int(raw) if raw is not None else None
        except ValueError:
            return JSONResponse({"error": f"limit must be an integer, got {raw!r}"}, status_code=400)
        return JSONResponse(recent.as_json(limit))

    async def health(request: Request) -> Response:
        down = upstreams.unreachable() if upstreams is not None else {}
        if not down:
            return PlainTextResponse("ok")
        lines = [f"upstream {url} unreachable ({why}): requests to it are answered 502" for url, why in down.items()]
        return PlainTextResponse("\n".join(lines) + "\n", status_code=503)

    return Starlette(routes=[
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/recent", api_recent, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])
