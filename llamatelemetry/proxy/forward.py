"""The forwarding edge: an ASGI app that passes every request to one llama-server, unchanged.

Why Starlette + uvicorn (and not aiohttp): uvicorn is the most used ASGI server, with a
C parser (httptools) and uvloop when installed; Starlette's ``StreamingResponse`` listens for
the client's ``http.disconnect`` while it streams and cancels the stream at once, which is
what frees a llama-server slot when an agent gives up mid-answer. The upstream side is one
shared httpx connection pool (the project's HTTP library): requests go straight to its
``AsyncHTTPTransport`` — the client layer's cookies, redirects and auth are exactly what a
transparent proxy must not apply, and skipping it saves ~160 µs of CPU per request — and
``aiter_raw()`` hands over bytes as they arrive from the socket, still content-encoded: bodies
pass byte for byte and SSE events reach the client as soon as llama-server sends them, never
re-chunked or buffered. The telemetry's own calls (token counts) use an ``httpx.AsyncClient``
on the same transport: one pool, one keep-alive policy.

What is forwarded: every method and path, the query string byte for byte, the body, the
headers less hop-by-hop ones (:mod:`.headers`). What the gateway adds: a ``traceparent``
(W3C trace context of its span) towards llama-server, and its own error when llama-server
cannot be reached (a 502 in the endpoint's dialect, :mod:`.dialect`) or cuts a stream short
(an error event, then the end of the stream).

Example::

    transport = upstream_transport()
    app = ProxyApp("http://127.0.0.1:8080", transport, observer)
    uvicorn.run(app, host="127.0.0.1", port=8089)
"""

from __future__ import annotations

import asyncio
import json
import logging
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import AsyncIterator

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .dialect import error_body, stream_error_event
from .guard import raise_max_tokens
from .headers import RawHeaders, request_headers, response_headers
from .observe import Exchange, Observer, parse_json_body
from .routing import in_client_dialect

log = logging.getLogger("llamatelemetry.proxy")

#: Connecting must be quick (a down upstream answers 502 at once); generating may take minutes
#: (long prompts on CPU), so reads have no timeout: the client decides how long to wait, and its
#: disconnect closes the upstream request.
UPSTREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
#: llama-server closes idle keep-alive connections after 5 s; dropping ours after 2 s means we
#: never send on a connection it is closing (see ``_base.DEFAULT_LIMITS``).
UPSTREAM_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=2.0)
_TIMEOUT_EXTENSION = {"timeout": UPSTREAM_TIMEOUT.as_dict()}
#: Bound on parsed upstream URLs kept (paths and query strings come from clients).
_MAX_CACHED_TARGETS = 256


def upstream_transport() -> httpx.AsyncHTTPTransport:
    """The one connection pool every route shares (``trust_env=False``: the upstream is named
    explicitly, so ``HTTP_PROXY`` must not redirect it)."""
    return httpx.AsyncHTTPTransport(limits=UPSTREAM_LIMITS, trust_env=False)


def upstream_client(transport: httpx.AsyncHTTPTransport) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` on the shared pool, for the gateway's own requests (never stores cookies)."""
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(transport=transport, timeout=UPSTREAM_TIMEOUT, trust_env=False,
                             follow_redirects=False, cookies=no_cookies)


def _json_response(path: str, status: int, message: str) -> Response:
    return Response(error_body(path, status, message), status_code=status, media_type="application/json")


class ProxyApp:
    """ASGI app forwarding every HTTP request to ``upstream`` (see module docs)."""

    def __init__(self, upstream: str, transport: httpx.AsyncHTTPTransport, observer: Observer, *,
                 min_max_tokens: int | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self._base = httpx.URL(self.upstream)
        self._base_path = self._base.raw_path.rstrip(b"/")
        self.transport = transport
        self.observer = observer
        self.min_max_tokens = min_max_tokens
        self._targets: dict[bytes, httpx.URL] = {}

    def _target(self, scope: Scope) -> httpx.URL:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope.get("query_string") or b""
        key = raw_path + (b"?" + query if query else b"")
        # httpx parses and validates every URL it builds (~30 us); clients call the same few paths
        # over and over, and an httpx.URL is immutable, so one parsed URL per path serves them all.
        found = self._targets.get(key)
        if found is None:
            found = self._base.copy_with(raw_path=self._base_path + key)
            if len(self._targets) >= _MAX_CACHED_TARGETS:
                self._targets.clear()
            self._targets[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: llama-server speaks neither
            return
        body = await Request(scope, receive).body()
        path: str = scope["path"]
        headers = request_headers(scope["headers"])
        parsed = parse_json_body(path, body)
        raised_from = None
        if self.min_max_tokens is not None and parsed is not None:
            raised_from = raise_max_tokens(parsed, path, self.min_max_tokens)
            if raised_from is not None:
                body = json.dumps(parsed, ensure_ascii=False).encode()
        if parsed is not None:
            await self.observer.prepare(scope, self.upstream)  # a router upstream? (asked once, bounded)
        exchange = self.observer.begin(scope, self.upstream, parsed, max_tokens_raised_from=raised_from)
        if exchange.trace_headers:
            # Our span becomes the parent upstream: replace (not add to) the caller's trace context.
            drop = {name.encode() for name in exchange.trace_headers}
            headers = [h for h in headers if h[0] not in drop]
            headers.extend((name.encode(), value.encode()) for name, value in exchange.trace_headers.items())
        request = httpx.Request(scope["method"], self._target(scope), headers=headers, content=body,
                                extensions=_TIMEOUT_EXTENSION)
        try:
            answer = await self._exchange_until_disconnect(request, receive)
        except httpx.HTTPError as exc:
            message = (f"llamatelemetry proxy could not reach the upstream llama-server at {self.upstream} "
                       f"({type(exc).__name__}: {exc}); check that it is running and that --upstream/--route points at it")
            exchange.unreachable(exc)
            await _json_response(path, 502, message)(scope, receive, send)
            return
        if answer is None:  # the client left before the answer: the upstream request is already closed
            exchange.client_left()
            return
        upstream, raw = answer
        out_headers = response_headers(upstream.headers.raw)
        if raw is None:
            await _RelayedStream(upstream, out_headers, exchange, path, self.upstream)(scope, receive, send)
            return
        if isinstance(raw, httpx.HTTPError):
            exchange.cut_short(upstream.status_code, raw)
            await _json_response(path, 502, f"llamatelemetry proxy: the upstream llama-server at {self.upstream} "
                                 f"closed the connection mid-response ({type(raw).__name__}); check its log")(scope, receive, send)
            return
        if upstream.status_code >= 400 and (reshaped := in_client_dialect(path, upstream.status_code, raw)) is not None:
            # A router's error about the model, in the OpenAI shape on an Anthropic endpoint: say it in the client's.
            raw, out_headers = reshaped, [h for h in out_headers if h[0] != b"content-length"]
        response = Response(raw, status_code=upstream.status_code)
        if not any(name == b"content-length" for name, _ in out_headers) and "content-length" in response.headers:
            out_headers.append((b"content-length", str(len(raw)).encode()))
        response.raw_headers = out_headers
        await response(scope, receive, send)
        # After the client has its answer: parsing the body for telemetry costs it nothing.
        exchange.answered(upstream.status_code, upstream.headers, raw)

    async def _exchange_until_disconnect(
        self, request: httpx.Request, receive: Receive,
    ) -> tuple[httpx.Response, bytes | httpx.HTTPError | None] | None:
        """Send upstream and, unless it streams, read the whole body — or give up the moment the client leaves.

        Returns None when the client disconnected first (the upstream request is then closed, which
        stops llama-server generating), else the response and its body (None for an SSE stream, relayed
        by :class:`_RelayedStream`, which watches for the disconnect itself; an ``httpx.HTTPError`` when
        the body broke off).
        """
        # Plain asyncio tasks, not an anyio task group: uvicorn runs the app on asyncio (or uvloop), and
        # a task group costs ~80 us per request here (anyio 4 formats the task's repr on every cancel)
        # against ~7 us for a task and a cancel — on the path to the first byte.
        exchange = asyncio.ensure_future(self._exchange(request))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((exchange, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()  # stop watching: from here the response owns receive()
            if not exchange.done():  # the client left (or we are being cancelled): abandon the upstream request
                exchange.cancel()  # its own cleanup (in its task, whatever happens to ours) closes the upstream
                await asyncio.wait((exchange,))
        if watch.done() and not watch.cancelled() and watch.exception() is not None:
            log.debug("watching for the client's disconnect failed", exc_info=watch.exception())
        if exchange.cancelled():
            return None
        return exchange.result()  # an httpx.HTTPError raised upstream propagates from here

    async def _exchange(self, request: httpx.Request) -> tuple[httpx.Response, bytes | httpx.HTTPError | None]:
        upstream = await self._send(request)
        handed_over = False
        try:
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                handed_over = True
                return upstream, None
            try:
                return upstream, b"".join([chunk async for chunk in upstream.aiter_raw()])
            except httpx.HTTPError as exc:
                return upstream, exc
        finally:
            if not handed_over:  # not handed over as a stream: done with it
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.transport.handle_async_request(request)
        except httpx.RemoteProtocolError:
            # "Server disconnected without sending a response": a pooled connection llama-server
            # closed as we reused it. No response byte arrived, so sending once more is safe.
            return await self.transport.handle_async_request(request)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _RelayedStream(StreamingResponse):
    """An SSE response relayed chunk by chunk; always closes the upstream response and ends telemetry."""

    def __init__(self, upstream: httpx.Response, headers: RawHeaders, exchange: Exchange, path: str, upstream_url: str) -> None:
        super().__init__(self._relay(), status_code=upstream.status_code)
        self.raw_headers = headers
        self.upstream = upstream
        self.exchange = exchange
        self.path = path
        self.upstream_url = upstream_url
        self.upstream_finished = False
        self.upstream_error: httpx.HTTPError | None = None

    async def _relay(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.upstream.aiter_raw():
                yield chunk
                self.exchange.chunk(chunk)  # after the client has it: telemetry never delays a chunk
            self.upstream_finished = True
        except httpx.HTTPError as exc:
            self.upstream_error = exc
            yield stream_error_event(self.path, 502, (
                f"llamatelemetry proxy: the upstream llama-server at {self.upstream_url} ended the stream before "
                f"finishing it ({type(exc).__name__}); check its log"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._relay_until_disconnect(receive, send)
        finally:
            # Runs when the stream ended, failed, or the client went away (the relay was cancelled
            # on http.disconnect). Closing the upstream response closes its connection,
            # which makes llama-server stop generating and free the slot. Shielded: we may be
            # inside a cancelled scope, where an unshielded await would be cancelled at once.
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self.upstream.aclose()
            self.exchange.stream_ended(self.upstream.status_code, self.upstream_error,
                                       client_left=not self.upstream_finished and self.upstream_error is None)

    async def _relay_until_disconnect(self, receive: Receive, send: Send) -> None:
        """Starlette's relay loop (``stream_response``), cancelled the moment the client disconnects.

        What ``StreamingResponse.__call__`` does, with two asyncio tasks instead of its anyio task
        group: the group costs ~80 us per response here (anyio 4 formats the task's repr on every
        cancel), against ~7 us (see ``ProxyApp._exchange_until_disconnect``).
        """
        relay = asyncio.ensure_future(self.stream_response(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not relay.done():  # the client left (or we are being cancelled): stop relaying at once
                relay.cancel()
                await asyncio.wait((relay,))
        if watch.done() and not watch.cancelled() and watch.exception() is not None:
            log.debug("watching for the client's disconnect failed", exc_info=watch.exception())
        if not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()  # type: ignore[misc]
