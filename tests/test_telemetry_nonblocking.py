"""The caller gets its result before telemetry's extra request (a /tokenize lookup) answers.

A real llama-server (the Qwen3.5 thinking script) answers; only ``/tokenize`` is slowed by
:data:`DELAY` seconds, by a wrapper around httpx's real transport (a real server cannot be made
slow on one endpoint). The reasoning count of a full answer needs that lookup
(``output_minus_answer``), so a blocking client would take at least ``DELAY`` to return.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from typing import Any

import httpx
import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry.telemetry.finisher import ThreadFinisher
from llamatelemetry.telemetry import semconv as sc

from telemetry_helpers import Telemetry

HI = [{"role": "user", "content": "Hi"}]
THINKING = {"type": "enabled", "budget_tokens": 64}
DELAY = 3.0  # long enough that a caller who waited for it cannot pass for one who did not, even on a loaded machine


class SlowTokenize(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            time.sleep(DELAY)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncSlowTokenize(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            await asyncio.sleep(DELAY)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def qwen(thinking_servers: dict[str, Any]) -> tuple[Any, Any]:
    return thinking_servers["qwen35"]


def _check_span(tel: Telemetry, script: Any, elapsed: float) -> None:
    span = tel.only_span()
    attrs = span.attributes
    assert (attrs[sc.USAGE_REASONING_OUTPUT_TOKENS], attrs[sc.REASONING_COUNT_METHOD]) == (script.reasoning_tokens, "output_minus_answer")
    duration = (span.end_time - span.start_time) / 1e9
    assert duration <= elapsed + 0.05  # the lookup's delay is not part of the call's duration


@pytest.mark.parametrize("stream", [False, True])
def test_sync_caller_does_not_wait_for_the_lookup(qwen: tuple[Any, Any], stream: bool) -> None:
    server, script = qwen
    tel = Telemetry()
    http = httpx.Client(base_url=server.base_url, transport=SlowTokenize(), timeout=30)
    with LlamaCppClient(server.base_url, http_client=http, **tel.providers) as client:
        client.models.list()  # warm the connection and the default model outside the timed call
        started = time.monotonic()
        if stream:  # /v1/messages streams carry no token positions: their count needs the lookup too
            final = client.messages.create(messages=HI, max_tokens=64, thinking=THINKING, stream=True).get_final_completion()
        else:
            final = client.messages.create(messages=HI, max_tokens=64, thinking=THINKING)
        elapsed = time.monotonic() - started
        assert final.text == "Hello there!"
        assert elapsed < DELAY / 2, f"the caller waited {elapsed:.2f} s for telemetry"
        assert tel.ended_spans() == []  # still counting in the background
        assert client.flush_telemetry(timeout=10)
        _check_span(tel, script, elapsed)
    http.close()


@pytest.mark.parametrize("stream", [False, True])
def test_async_caller_does_not_wait_for_the_lookup(qwen: tuple[Any, Any], stream: bool) -> None:
    server, script = qwen
    tel = Telemetry()

    async def run() -> float:
        http = httpx.AsyncClient(base_url=server.base_url, transport=AsyncSlowTokenize(), timeout=30)
        async with AsyncLlamaCppClient(server.base_url, http_client=http, **tel.providers) as client:
            await client.models.list()
            started = time.monotonic()
            result = await client.messages.create(messages=HI, max_tokens=64, thinking=THINKING, stream=stream)
            if stream:
                async for _ in result:
                    pass
                result = await result.get_final_completion()
            elapsed = time.monotonic() - started
            assert result.text == "Hello there!"
            assert elapsed < DELAY / 2, f"the caller waited {elapsed:.2f} s for telemetry"
            assert tel.ended_spans() == []
            assert await client.flush_telemetry(timeout=10)
        await http.aclose()
        return elapsed

    elapsed = asyncio.run(run())
    _check_span(tel, script, elapsed)


def test_close_waits_for_pending_telemetry(qwen: tuple[Any, Any]) -> None:
    server, script = qwen
    tel = Telemetry()
    http = httpx.Client(base_url=server.base_url, transport=SlowTokenize(), timeout=30)
    client = LlamaCppClient(server.base_url, http_client=http, **tel.providers)
    client.messages.create(messages=HI, max_tokens=64, thinking=THINKING)
    client.close()  # no flush_telemetry(): close() waits for the span
    assert tel.only_span().attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == script.reasoning_tokens
    http.close()


def test_script_that_never_closes_the_client_still_exports_the_span(qwen: tuple[Any, Any]) -> None:
    server, script = qwen
    program = textwrap.dedent(f"""
        import time, httpx
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, ConsoleSpanExporter
        from llamatelemetry import LlamaCppClient

        class SlowTokenize(httpx.HTTPTransport):
            def handle_request(self, request):
                if request.url.path == "/tokenize":
                    time.sleep({DELAY})
                return super().handle_request(request)

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        client = LlamaCppClient({server.base_url!r}, tracer_provider=provider,
                                http_client=httpx.Client(transport=SlowTokenize(), timeout=30))
        client.messages.create(messages={HI!r}, max_tokens=64, thinking={THINKING!r})
        print("RETURNED", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    returned, _, exported = done.stdout.partition("RETURNED")
    assert f'"{sc.USAGE_REASONING_OUTPUT_TOKENS}": {script.reasoning_tokens}' in exported


def test_when_too_many_are_pending_the_span_ends_at_once_without_the_lookup(qwen: tuple[Any, Any]) -> None:
    server, script = qwen
    tel = Telemetry()
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        client._finisher = ThreadFinisher(max_pending=0)  # as if MAX_PENDING lookups were already waiting
        client.messages.create(messages=HI, max_tokens=64, thinking=THINKING)
        attrs = tel.only_span().attributes  # ended before the call returned: nothing queued, nothing lost
    assert attrs[sc.USAGE_OUTPUT_TOKENS] == script.output_tokens
    assert sc.USAGE_REASONING_OUTPUT_TOKENS not in attrs  # no count rather than a guess
