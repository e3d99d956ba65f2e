"""The telemetry's side requests (model lookup, /tokenize count, /props n_ctx): one module, used by the client and the gateway.

llama-server sometimes closes a keep-alive connection just after a streamed response, so a count sent at
once on that pooled connection goes unanswered. A real HTTP server here does that deterministically: it
answers the first request of a connection, then drops the connection when the next request arrives on it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.trace import SpanKind

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry.proxy.observe import Observer
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.agent_record import N_CTX_MODELS, N_CTX_RETRY, N_CTX_TTL, ContextSizes
from llamatelemetry.telemetry.finisher import TaskFinisher
from llamatelemetry.telemetry.lookups import RESENDS, AsyncLookups, Lookups, ServerModel

from telemetry_helpers import Telemetry

N_CTX = 4096  # what the dropping server's /props says


class DroppingServer:
    """Answers one request per connection, keeps it alive, and drops it unanswered at the next request.

    ``drop_every_reuse=False`` drops only the first reused connection (a one-off, as llama-server does).
    """

    def __init__(self, *, drop_every_reuse: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[tuple[int, str]] = []  # (connection number, path)
        self.drop_every_reuse = drop_every_reuse
        self.dropped = 0
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._connections += 1
            threading.Thread(target=self._serve, args=(conn, self._connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            reader = conn.makefile("rb")
            for served in range(100):
                request_line = reader.readline()
                if not request_line:
                    return
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                path = request_line.split()[1].decode()
                self.requests.append((number, path))
                if served >= 1 and (self.drop_every_reuse or self.dropped == 0):
                    self.dropped += 1
                    return  # a pooled connection closed with the request unanswered
                if path == "/tokenize":
                    payload: dict = {"tokens": [9707, 1052, 0]}
                elif path.startswith("/props"):
                    payload = {"default_generation_settings": {"n_ctx": N_CTX}}
                else:
                    payload = {"data": [{"id": "/m/scripted.gguf"}]}
                body = json.dumps(payload).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


def test_sync_count_is_resent_after_a_dropped_keep_alive_connection(dropping):
    with httpx.Client() as http:
        lookups = Lookups(http, dropping.url)
        assert lookups.count_tokens("Hello there!") == 3
        assert lookups.count_tokens("Hello there!") == 3  # went out on the pooled connection, dropped, resent
    assert dropping.requests == [(1, "/tokenize"), (1, "/tokenize"), (2, "/tokenize")]


def test_async_count_and_model_are_resent_after_a_dropped_keep_alive_connection(dropping):
    async def main() -> tuple[int | None, str | None]:
        async with httpx.AsyncClient() as http:
            lookups = AsyncLookups(http, dropping.url)
            assert await lookups.count_tokens("Hello there!") == 3
            return await lookups.count_tokens("x"), await lookups.model()

    assert asyncio.run(main()) == (3, "/m/scripted.gguf")
    assert [path for _, path in dropping.requests] == ["/tokenize", "/tokenize", "/tokenize", "/v1/models"]


def test_sync_context_size_is_resent_after_a_dropped_keep_alive_connection(dropping):
    with httpx.Client() as http:
        lookups = Lookups(http, dropping.url, {"Authorization": "Bearer k"})
        assert lookups.count_tokens("Hello there!") == 3
        assert lookups.context_size() == N_CTX  # went out on the pooled connection, dropped, resent
        assert lookups.context_size("org/m:Q4") == N_CTX  # a router routes by model; autoload=false never loads it
    assert dropping.requests == [(1, "/tokenize"), (1, "/props"), (2, "/props"),
                                 (2, "/props?model=org%2Fm%3AQ4&autoload=false")]


def test_async_context_size_is_resent_after_a_dropped_keep_alive_connection(dropping):
    async def main() -> tuple[int | None, int | None]:
        async with httpx.AsyncClient() as http:
            lookups = AsyncLookups(http, dropping.url)
            assert await lookups.count_tokens("Hello there!") == 3
            return await lookups.context_size("m"), await lookups.context_size(None)

    assert asyncio.run(main()) == (N_CTX, N_CTX)
    assert dropping.requests == [(1, "/tokenize"), (1, "/props?model=m&autoload=false"),
                                 (2, "/props?model=m&autoload=false"), (2, "/props")]


@pytest.mark.parametrize("body", [{"default_generation_settings": {"n_ctx": 0}}, {"default_generation_settings": None},
                                  {"default_generation_settings": {"n_ctx": True}}, {"role": "router"}, "not json"])
def test_a_props_answer_without_a_positive_n_ctx_is_none(body):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body) if isinstance(body, str) else httpx.Response(200, json=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        assert Lookups(http, "http://llama.test").context_size("m") is None


def test_context_sizes_cache_is_due_once_fresh_for_the_ttl_and_retried_after_a_failure():
    now = [100.0]
    sizes = ContextSizes(clock=lambda: now[0])
    assert sizes.get("m") is None
    assert sizes.due("m") and not sizes.due("m"), "a lookup under way is not started twice"
    sizes.remember("m", None)
    now[0] += N_CTX_RETRY - 1
    assert not sizes.due("m")
    now[0] += 2
    assert sizes.due("m")
    sizes.remember("m", 512)
    assert sizes.get("m") == 512 and not sizes.due("m") and sizes.due("other")
    now[0] += N_CTX_TTL + 1
    assert sizes.due("m") and sizes.get("m") == 512  # stale: looked up again, the old value kept meanwhile
    for i in range(N_CTX_MODELS + 10):
        sizes.learn(f"x{i}", i + 1)
        sizes.due(f"y{i}")
    assert len(sizes._known) <= N_CTX_MODELS and len(sizes._next_lookup) <= N_CTX_MODELS


def test_resending_is_bounded():
    server = DroppingServer(drop_every_reuse=True)
    try:
        with httpx.Client() as http:
            lookups = Lookups(http, server.url)
            assert lookups.model() == "/m/scripted.gguf"
            # A server that drops every reused connection: httpx's new connection is pooled and dropped too.
            for _ in range(3):
                lookups.model()
        assert server.dropped <= 3 * (RESENDS + 1)
        assert len(server.requests) <= 1 + 3 * (RESENDS + 1)
    finally:
        server.close()


def test_both_clients_count_through_the_resending_lookups(dropping):
    with LlamaCppClient(dropping.url, telemetry=True) as client:
        assert client._count_tokens("Hello there!") == 3
        assert client._count_tokens("Hello there!") == 3

    async def main() -> int | None:
        async with AsyncLlamaCppClient(dropping.url) as client:
            await client._count_tokens("a")
            return await client._count_tokens("b")

    assert asyncio.run(main()) == 3


def test_the_gateway_counts_through_the_resending_lookups(dropping):
    async def main() -> int | None:
        async with httpx.AsyncClient() as http:
            lookups = Observer(tracer_provider=None, meter_provider=None, http=http).lookups(dropping.url, "Bearer k")
            await lookups.count_tokens("a")
            return await lookups.count_tokens("Hello there!")

    assert asyncio.run(main()) == 3
    assert dropping.dropped == 1


def test_a_failed_model_lookup_waits_before_the_next():
    now = [100.0]
    memo = ServerModel(clock=lambda: now[0])
    assert memo.due() and not memo.due(), "a lookup under way is not started twice"
    memo.remember(None)
    now[0] += 29
    assert not memo.due()
    now[0] += 2
    assert memo.due()
    memo.remember("m")
    assert memo.model == "m" and not memo.due()


# -- the one finisher: the gateway's ends go through it too, with the same bound and overflow rule -----

ANSWER = {
    "id": "c1", "model": "scripted", "object": "chat.completion",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Hello there!", "reasoning_content": "Okay"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 17, "total_tokens": 22},
}


def _answer_through_the_gateway(upstream: str, max_pending: int | None) -> tuple[list[str], dict]:
    tel = Telemetry()

    async def main() -> list[str]:
        async with httpx.AsyncClient() as http:
            observer = Observer(http=http, **tel.providers)
            if max_pending is not None:
                observer.finisher = TaskFinisher(max_pending=max_pending)
            scope = {"path": "/v1/chat/completions", "method": "POST", "headers": []}
            exchange = observer.begin(scope, upstream, {"model": "scripted", "messages": []})
            exchange.answered(200, httpx.Headers(), json.dumps(ANSWER).encode())
            seen = [s.name for s in tel.spans()]  # right after the answer, before the loop ran anything
            await observer.drain()
            return seen

    seen = asyncio.run(main())
    span = tel.only_span()
    assert span.kind == SpanKind.SERVER and span.attributes[sc.USAGE_OUTPUT_TOKENS] == 17
    return seen, dict(span.attributes)


def test_the_gateway_finishes_in_the_background_with_the_count(dropping):
    seen, attrs = _answer_through_the_gateway(dropping.url, None)
    assert seen == []  # the end (and its /tokenize) ran in the finisher, after the answer
    # 17 output tokens, of which the answer's 3 (as /tokenize counts it) and its end-of-turn token
    assert (attrs[sc.USAGE_REASONING_OUTPUT_TOKENS], attrs[sc.REASONING_COUNT_METHOD]) == (13, "output_minus_answer")
    # The first call of the model looks up its n_ctx too, in the same background job, through the same resend.
    assert attrs[sc.CONTEXT_N_CTX] == N_CTX and attrs[sc.CONTEXT_UTILIZATION] == pytest.approx(5 / N_CTX)
    assert [path for _, path in dropping.requests] == ["/tokenize", "/props", "/props"]
    assert dropping.dropped == 1


def test_the_gateway_ends_at_once_without_the_count_when_the_finisher_is_full(dropping):
    seen, attrs = _answer_through_the_gateway(dropping.url, 0)
    assert seen == ["chat scripted"]  # ended before answered() returned: nothing queued, nothing lost
    assert sc.USAGE_REASONING_OUTPUT_TOKENS not in attrs  # no count rather than a guess
    assert sc.CONTEXT_UTILIZATION not in attrs  # nor a context size
    assert dropping.requests == []
