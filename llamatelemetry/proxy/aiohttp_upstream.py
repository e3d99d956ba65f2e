"""The gateway's upstream transport on aiohttp's client (C HTTP parser) instead of httpx's (h11, pure Python).

Selected with ``LLAMATELEMETRY_PROXY_UPSTREAM_CLIENT=aiohttp`` (``pip install aiohttp``); httpx's is the
default. ``benchmarks/bench_proxy.py --aiohttp`` runs both side by side. It is an ``httpx.AsyncBaseTransport``, so the forwarding edge stays one piece
of code whichever client parses llama-server's answers: aiohttp's errors are mapped to the httpx errors
the edge tells apart (cannot connect vs closed vs cut short), and a response closed before its end
closes its connection (which stops llama-server generating, as with httpx).

Example::

    transport = AiohttpTransport()
    response = await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:8080/health"))
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import httpx
import yarl

#: Same pool policy as the httpx transport (``forward.UPSTREAM_LIMITS``): llama-server closes idle
#: keep-alive connections after 5 s, so ours are dropped after 2 s.
_POOL = {"limit": 512, "keepalive_timeout": 2.0}
_CONNECT_TIMEOUT = 5.0


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise httpx.RemoteProtocolError(f"llama-server closed the connection mid-response: {exc}") from exc
        except aiohttp.ClientOSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("reading the upstream response timed out") from exc
        self.finished = True

    async def aclose(self) -> None:
        if self.finished:
            self.response.release()  # back to the pool
        else:
            self.response.close()  # abandoned mid-way: close the connection so llama-server stops


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over one ``aiohttp.ClientSession`` (created on first use, in the loop)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(**_POOL),  # type: ignore[arg-type]
                auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.get("connect", _CONNECT_TIMEOUT),
                                        sock_read=timeouts.get("read"))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        content = request.content if request.method not in ("GET", "HEAD") or request.content else None
        try:
            # encoded=True: the path and query go out byte for byte (yarl would otherwise re-quote them).
            url = yarl.URL(str(request.url), encoded=True)
            response = await self._open().request(request.method, url, headers=headers, data=content,
                                                  allow_redirects=False, timeout=timeout, auto_decompress=False)
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response", request=request) from exc
        except aiohttp.ClientOSError as exc:
            # No response byte arrived (e.g. "Can not write request body" on a pooled connection
            # llama-server was closing): the same case as httpx's RemoteProtocolError, which the edge resends once.
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout("connecting to the upstream timed out", request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        raw_headers = [(k, v) for k, v in response.raw_headers]
        return httpx.Response(response.status, headers=raw_headers, stream=_Body(response), request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
