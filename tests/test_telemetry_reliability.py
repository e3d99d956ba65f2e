"""No span lost, no time misreported: every call's span ends exactly once, with error.type on every error path."""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import Span

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors
from llamatelemetry._base import MAX_RETRY_AFTER_SECONDS, retry_delay
from llamatelemetry.provision.model import REASONING_TOKENS
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.lookups import RETRY_SECONDS

from telemetry_helpers import Telemetry

HI = [{"role": "user", "content": "hi"}]
ENDLESS = {"ignore_eos": True}  # the scripted model loops: a long, real stream to cut
OK_BODY = {"id": "c1", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture
def end_calls(monkeypatch) -> Counter:
    """Counts every call of Span.end per span id (the SDK itself ignores, and so hides, a second end)."""
    calls: Counter = Counter()
    original = Span.end

    def counting_end(self, end_time=None):
        calls[self.context.span_id] += 1
        return original(self, end_time)

    monkeypatch.setattr(Span, "end", counting_end)
    return calls


def _ended_once(tel: Telemetry, end_calls: Counter) -> None:
    spans = tel.spans()
    assert spans, "the span was lost"
    assert [end_calls[s.context.span_id] for s in spans] == [1] * len(spans)


def mock_client(handler, tel: Telemetry, **kw) -> LlamaCppClient:
    return LlamaCppClient("http://llama.test:8080", http_client=httpx.Client(transport=httpx.MockTransport(handler)),
                          max_retries=0, **tel.providers, **kw)


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


# -- ends exactly once, errors carry error.type -------------------------------------------------

def test_every_ending_ends_the_span_once(full_server, tel, end_calls):
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        c.chat_completion(messages=HI, max_tokens=64)
        with c.chat.completions.create(messages=HI, max_tokens=64, stream=True) as stream:
            for _ in stream:
                pass
        stream.close()
        cut = c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
        next(cut)
        cut.close()
        cut.close()
    assert len(tel.spans()) == 3
    _ended_once(tel, end_calls)


def test_http_error_status_is_the_error_type(full_server, tel, end_calls):
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        with pytest.raises(errors.BadRequestError):
            c.chat_completion(messages=HI, max_tokens=-5, extra_body={"n_probs": "x"})
    span = tel.only_span()
    assert span.attributes[sc.ERROR_TYPE] == "400" and span.status.status_code.name == "ERROR"
    assert tel.histogram_count(sc.METRIC_OPERATION_DURATION, **{sc.ERROR_TYPE: "400"}) == 1
    _ended_once(tel, end_calls)


def test_timeout_is_recorded(full_server, tel, end_calls):
    with LlamaCppClient(full_server.base_url, timeout=0.05, max_retries=0, **tel.providers) as c:
        with pytest.raises(errors.APITimeoutError):
            c.chat_completion(messages=HI, max_tokens=3000, extra_body=ENDLESS)
    assert tel.only_span().attributes[sc.ERROR_TYPE] == "APITimeoutError"
    _ended_once(tel, end_calls)


@pytest.mark.parametrize("status", [500, 404])
def test_5xx_and_4xx_answers(tel, end_calls, status):
    c = mock_client(lambda req: httpx.Response(status, json={"error": {"code": status, "message": "no"}}), tel)
    with pytest.raises(errors.APIStatusError):
        c.chat_completion(messages=HI, model="m")
    assert tel.only_span().attributes[sc.ERROR_TYPE] == str(status)
    _ended_once(tel, end_calls)


def test_mid_stream_error_and_truncated_stream(tel, end_calls):
    error_body = sse('{"choices": [{"delta": {"content": "a"}}]}', '{"error": {"code": 500, "message": "kv cache full"}}')
    c = mock_client(lambda req: httpx.Response(200, content=error_body), tel)
    with pytest.raises(errors.APIStatusError):
        list(c.chat.completions.create(messages=HI, model="m", stream=True))
    truncated = mock_client(lambda req: httpx.Response(200, content=sse('{"choices": [{"delta": {"content": "a"}}]}')), tel)
    with pytest.raises(errors.StreamInterruptedError):
        list(truncated.chat.completions.create(messages=HI, model="m", stream=True))
    mid, cut = tel.spans()
    assert mid.attributes[sc.ERROR_TYPE] == "500" and mid.attributes[sc.STREAM_CUT_SHORT] is True
    assert cut.attributes[sc.ERROR_TYPE] == "StreamInterruptedError" and cut.attributes[sc.STREAM_CUT_SHORT] is True
    _ended_once(tel, end_calls)


# -- a failing metric instrument cannot lose the span --------------------------------------------

class Exploding:
    def __getattr__(self, name):
        raise RuntimeError("instrument broke")


@pytest.mark.parametrize("instrument", ["duration", "usage", "time_to_first_chunk"])
def test_raising_metric_instrument_keeps_the_span(full_server, tel, end_calls, instrument):
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        setattr(c._telemetry.instruments, instrument, Exploding())
        assert c.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == "Hello there!"
        c.flush_telemetry()  # its reasoning count ends it in the background: keep the spans in call order
        assert c.chat.completions.create(messages=HI, max_tokens=64, stream=True).get_final_completion().choices
        with pytest.raises(errors.BadRequestError):
            c.chat_completion(messages=HI, max_tokens=-5, extra_body={"n_probs": "x"})
    ok, streamed, failed = tel.spans()
    assert ok.attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    assert streamed.attributes[sc.STREAM_CUT_SHORT] is False and failed.attributes[sc.ERROR_TYPE] == "400"
    _ended_once(tel, end_calls)


# -- cancellation ----------------------------------------------------------------------------------

def test_asyncio_cancel_ends_the_span_with_what_it_saw(full_server, tel, end_calls):
    async def main():
        async with AsyncLlamaCppClient(full_server.base_url, **tel.providers) as c:
            started = asyncio.Event()

            async def consume():
                stream = await c.chat.completions.create(messages=HI, max_tokens=5000, stream=True, extra_body=ENDLESS)
                async for _ in stream:
                    started.set()

            task = asyncio.create_task(consume())
            await started.wait()
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the client still works afterwards
            assert (await c.chat_completion(messages=HI, max_tokens=64)).choices[0].message.content == "Hello there!"

    asyncio.run(main())
    cancelled = tel.spans()[0]
    assert cancelled.attributes[sc.ERROR_TYPE] == "CancelledError"
    assert cancelled.attributes[sc.STREAM_CUT_SHORT] is True and cancelled.attributes[sc.STREAM_CHUNKS] > 0
    _ended_once(tel, end_calls)


def test_anyio_cancel_scope_ends_the_span(full_server, tel, end_calls):
    # anyio (Starlette/FastAPI on client disconnect) cancels every await inside the scope, cleanup included.
    async def main():
        async with AsyncLlamaCppClient(full_server.base_url, **tel.providers) as c:
            with anyio.move_on_after(0.3):
                stream = await c.chat.completions.create(messages=HI, max_tokens=50000, stream=True, extra_body=ENDLESS)
                async for _ in stream:
                    pass
            assert (await c.chat_completion(messages=HI, max_tokens=64)).choices[0].message.content == "Hello there!"

    anyio.run(main)
    cancelled = tel.spans()[0]
    assert cancelled.attributes[sc.STREAM_CUT_SHORT] is True and cancelled.attributes[sc.STREAM_CHUNKS] > 0
    assert sc.ERROR_TYPE in cancelled.attributes
    _ended_once(tel, end_calls)


# -- pooled connections of abandoned async streams -------------------------------------------------

def test_async_stream_dropped_before_first_read_releases_its_connection(full_server, tel):
    async def main():
        pool_limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        http = httpx.AsyncClient(limits=pool_limits, timeout=httpx.Timeout(10.0, pool=2.0))
        async with AsyncLlamaCppClient(full_server.base_url, http_client=http, **tel.providers) as c:
            for _ in range(3):  # with one connection in the pool, a leaked one makes the next call time out
                stream = await c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
                del stream
                gc.collect()
                pool = http._transport._pool
                for _ in range(100):  # the close runs as a task on this loop: give it a moment on a busy machine
                    await asyncio.sleep(0.02)
                    if not pool._requests:
                        break
                assert not pool._requests and all(conn.is_idle() or conn.is_closed() for conn in pool.connections)
            assert (await c.chat_completion(messages=HI, max_tokens=64)).choices[0].message.content == "Hello there!"
        await http.aclose()

    asyncio.run(main())
    assert len(tel.spans()) == 4 and all(s.attributes.get(sc.STREAM_CUT_SHORT) for s in tel.spans()[:3])


# -- telemetry's own requests: outside the duration, bounded, retried ------------------------------

def test_token_count_is_not_part_of_the_duration(full_server, tel):
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        real_count = c._count_tokens

        def slow_count(text):
            time.sleep(1.0)
            return real_count(text)

        c._count_tokens = slow_count
        c.chat_completion(messages=HI, max_tokens=64)
    span = tel.only_span()
    assert span.attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    # the call itself takes milliseconds; with the 1 s count inside, both would exceed 1 s
    assert (span.end_time - span.start_time) / 1e9 < 0.8
    assert tel.histogram_sum(sc.METRIC_OPERATION_DURATION) < 0.8


def test_failed_model_lookup_is_retried_later(tel):
    lookups = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            lookups.append(1)
            if len(lookups) == 1:
                return httpx.Response(503, json={"error": {"message": "Loading model"}})
            return httpx.Response(200, json={"object": "list", "data": [{"id": "/models/Qwen3-4B.gguf", "object": "model"}]})
        return httpx.Response(200, json=OK_BODY)

    c = mock_client(handler, tel)
    c.chat_completion(messages=HI)
    c.chat_completion(messages=HI)
    assert len(lookups) == 1, "a failed lookup is not repeated on every call"
    c._model.clock = lambda: time.monotonic() + RETRY_SECONDS  # the retry delay has passed
    c.chat_completion(messages=HI)
    assert len(lookups) == 2
    assert [s.name for s in tel.spans()] == ["chat", "chat", "chat Qwen3-4B.gguf"]


def test_span_is_current_while_the_request_runs(full_server, tel):
    seen = []
    http = httpx.Client(event_hooks={"request": [
        lambda request: seen.append(trace.get_current_span().get_span_context())
        if request.url.path == "/v1/chat/completions" else None]})
    with LlamaCppClient(full_server.base_url, http_client=http, **tel.providers) as c:
        c.chat_completion(messages=HI, max_tokens=64)
    span = tel.only_span()
    assert seen[0].span_id == span.context.span_id
    assert not trace.get_current_span().get_span_context().is_valid, "detached after the call"


# -- Retry-After from a misbehaving server ----------------------------------------------------------

@pytest.mark.parametrize("value,expected", [("-1", 0.0), ("0", 0.0), ("2.5", 2.5), ("1e308", MAX_RETRY_AFTER_SECONDS),
                                            ("inf", MAX_RETRY_AFTER_SECONDS)])
def test_retry_after_is_clamped(value, expected):
    assert retry_delay(0, value) == expected


@pytest.mark.parametrize("value", ["nan", "-inf", "Wed, 21 Oct 2015 07:28:00 GMT", "soon"])
def test_retry_after_that_is_not_a_number_falls_back_to_backoff(value):
    delay = retry_delay(0, value)
    assert math.isfinite(delay) and 0 < delay <= 1


@pytest.mark.parametrize("value", ["-1", "nan", "-inf"])
def test_client_survives_a_bad_retry_after(tel, value):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, headers={"Retry-After": value}, json={"error": {"message": "Loading model"}})

    c = LlamaCppClient("http://llama.test:8080", http_client=httpx.Client(transport=httpx.MockTransport(handler)),
                       max_retries=1, telemetry=False)
    began = time.monotonic()
    with pytest.raises(errors.ModelLoadingError):
        c.chat_completion(messages=HI, model="m")
    assert len(calls) == 2 and time.monotonic() - began < 2


def test_span_is_current_while_the_async_request_runs(full_server, tel):
    seen = []

    async def hook(request: httpx.Request) -> None:
        if request.url.path == "/v1/chat/completions":
            seen.append(trace.get_current_span().get_span_context())

    async def main():
        http = httpx.AsyncClient(event_hooks={"request": [hook]})
        async with AsyncLlamaCppClient(full_server.base_url, http_client=http, **tel.providers) as c:
            await c.chat_completion(messages=HI, max_tokens=64)
        await http.aclose()

    asyncio.run(main())
    assert seen[0].span_id == tel.only_span().context.span_id
