"""Telemetry against a real llama-server: spans, exact counts, exhaustion, streams, privacy."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors, instrument
from llamatelemetry.provision.model import ANSWER_PIECES, REASONING_TOKENS, THINKING_COMPLETION_TOKENS
from llamatelemetry.telemetry import semconv as sc

from telemetry_helpers import RecordingServer, Telemetry

HI = [{"role": "user", "content": "hi"}]
N_REASONING = REASONING_TOKENS  # thinking text + </think> + "\n\n" (see telemetry/reasoning.py)


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture
def client(full_server, tel):
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        yield c


def test_chat_span_has_exact_counts_and_llamacpp_timings(client, tel, full_server):
    resp = client.chat.completions.create(messages=HI, max_tokens=64, temperature=0.5, top_k=40, seed=7, stop=["\n\n\n"])
    assert client.flush_telemetry()  # the reasoning count's /tokenize lookup runs off the caller's path
    span = tel.only_span()
    a = span.attributes
    assert span.name == "chat scripted"
    assert span.kind.name == "CLIENT"
    assert a[sc.OPERATION_NAME] == "chat" and a[sc.PROVIDER] == "llama.cpp"
    assert a[sc.REQUEST_MODEL] == "scripted" and a[sc.RESPONSE_MODEL] == "scripted"
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and a[sc.SERVER_PORT] == full_server.port
    assert a[sc.REQUEST_MAX_TOKENS] == 64 and a[sc.REQUEST_TEMPERATURE] == 0.5 and a[sc.REQUEST_TOP_K] == 40
    assert a[sc.REQUEST_SEED] == 7 and list(a[sc.REQUEST_STOP_SEQUENCES]) == ["\n\n\n"]
    assert a[sc.RESPONSE_ID] == resp.id
    assert list(a[sc.RESPONSE_FINISH_REASONS]) == ["stop"]
    assert a[sc.USAGE_INPUT_TOKENS] == resp.usage.prompt_tokens
    assert a[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == N_REASONING
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == resp.usage.prompt_tokens_details.cached_tokens
    assert a["llamacpp.timings.predicted_n"] == THINKING_COMPLETION_TOKENS
    assert a["llamacpp.timings.prompt_n"] == resp.timings.prompt_n
    assert a["llamacpp.timings.predicted_per_second"] > 0
    assert sc.REASONING_BUDGET_EXHAUSTED not in a
    assert sc.INPUT_MESSAGES not in a and sc.OUTPUT_MESSAGES not in a, "content must be off by default"
    assert tel.histogram_count(sc.METRIC_OPERATION_DURATION, **{sc.OPERATION_NAME: "chat"}) == 1
    assert tel.histogram_sum(sc.METRIC_TOKEN_USAGE, **{sc.TOKEN_TYPE: "output"}) == THINKING_COMPLETION_TOKENS
    assert tel.histogram_sum(sc.METRIC_TOKEN_USAGE, **{sc.TOKEN_TYPE: "reasoning"}) == N_REASONING
    assert tel.histogram_sum(sc.METRIC_TOKEN_USAGE, **{sc.TOKEN_TYPE: "input"}) == resp.usage.prompt_tokens
    assert not tel.points(sc.METRIC_REASONING_BUDGET_EXHAUSTED)


def test_no_reasoning_count_without_thinking(client, tel):
    client.chat_completion(messages=HI, max_tokens=64, chat_template_kwargs={"enable_thinking": False})
    a = tel.only_span().attributes
    assert sc.USAGE_REASONING_OUTPUT_TOKENS not in a
    assert a[sc.USAGE_OUTPUT_TOKENS] == len(ANSWER_PIECES) + 1


def test_stream_span_counts_ttft_and_hides_usage_chunk(client, tel):
    with client.chat.completions.create(messages=HI, max_tokens=64, stream=True) as stream:
        chunks = list(stream)
    assert all(c.choices for c in chunks)
    span = tel.only_span()
    a = span.attributes
    duration = (span.end_time - span.start_time) / 1e9
    assert a[sc.REQUEST_STREAM] is True
    assert a[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == N_REASONING
    assert 0 < a[sc.RESPONSE_TIME_TO_FIRST_CHUNK] < a[sc.TIME_TO_FIRST_CONTENT] < duration
    assert a[sc.TIME_PER_OUTPUT_TOKEN] > 0
    assert a[sc.STREAM_CUT_SHORT] is False
    assert a[sc.STREAM_CHUNKS] >= THINKING_COMPLETION_TOKENS - 3
    assert tel.histogram_count(sc.METRIC_TIME_TO_FIRST_CHUNK) == 1
    # semconv: one value per chunk after the first; the gaps add up to first chunk -> last chunk
    assert tel.histogram_count(sc.METRIC_TIME_PER_OUTPUT_CHUNK) == a[sc.STREAM_CHUNKS] - 1
    assert 0 < tel.histogram_sum(sc.METRIC_TIME_PER_OUTPUT_CHUNK) < duration - a[sc.RESPONSE_TIME_TO_FIRST_CHUNK]


def test_exhaustion_is_flagged_counted_and_warned(client, tel, caplog):
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        resp = client.chat_completion(messages=HI, max_tokens=5)
    assert resp.choices[0].message.content == ""
    span = tel.only_span()
    assert span.attributes[sc.REASONING_BUDGET_EXHAUSTED] is True
    assert span.attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == 5
    assert [e.name for e in span.events] == [sc.EVENT_REASONING_BUDGET_EXHAUSTED]
    assert sum(p.value for p in tel.points(sc.METRIC_REASONING_BUDGET_EXHAUSTED)) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "max_tokens" in warnings[0].getMessage() and "enable_thinking" in warnings[0].getMessage()


def test_exhaustion_in_stream_and_messages(client, tel):
    list(client.chat.completions.create(messages=HI, max_tokens=4, stream=True))
    client.messages.create(messages=HI, max_tokens=3)
    list(client.messages.create(messages=HI, max_tokens=3, stream=True))
    spans = tel.spans()
    assert spans[1].attributes[sc.USAGE_INPUT_TOKENS] == spans[2].attributes[sc.USAGE_INPUT_TOKENS] == spans[0].attributes[sc.USAGE_INPUT_TOKENS]
    assert len(spans) == 3
    assert all(s.attributes.get(sc.REASONING_BUDGET_EXHAUSTED) is True for s in spans)
    assert [s.attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] for s in spans] == [4, 3, 3]
    assert sum(p.value for p in tel.points(sc.METRIC_REASONING_BUDGET_EXHAUSTED)) == 3


def test_messages_span_counts(client, tel):
    prompt_tokens = client.chat_completion(messages=HI, max_tokens=64).usage.prompt_tokens
    client.flush_telemetry()
    tel.exporter.clear()
    msg = client.messages.create(messages=HI, max_tokens=64)
    assert client.flush_telemetry()
    a = tel.only_span().attributes
    # Anthropic's input_tokens excludes cache reads; the span's input tokens include them.
    assert msg.usage.cache_read_input_tokens > 0
    assert a[sc.USAGE_INPUT_TOKENS] == msg.usage.input_tokens + msg.usage.cache_read_input_tokens == prompt_tokens
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == msg.usage.cache_read_input_tokens
    assert a[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == N_REASONING
    assert list(a[sc.RESPONSE_FINISH_REASONS]) == ["end_turn"]


def test_embeddings_and_completions_spans(client, tel):
    client.embed("hello there")
    client.completions.create(prompt="hi", max_tokens=4)
    emb, cmpl = tel.spans()
    assert emb.name == "embeddings scripted" and emb.attributes[sc.USAGE_INPUT_TOKENS] > 0
    assert cmpl.name == "text_completion scripted" and cmpl.attributes[sc.USAGE_OUTPUT_TOKENS] == 4


def test_non_inference_calls_make_no_spans(client, tel):
    client.models.list()
    client.tokenize("hi")
    client.health.check()
    assert tel.spans() == []


def test_stream_closed_early_ends_span_once_as_cut_short(client, tel):
    stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True)
    seen = 0
    for _ in stream:
        seen += 1
        if seen == 5:
            break
    stream.close()
    stream.close()
    span = tel.only_span()
    assert span.attributes[sc.STREAM_CUT_SHORT] is True
    assert span.attributes[sc.STREAM_CHUNKS] >= 5
    assert sc.USAGE_OUTPUT_TOKENS not in span.attributes  # unknown: left out, not guessed


def test_abandoned_stream_ends_span_on_gc(client, tel):
    stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True)
    next(stream)
    del stream
    gc.collect()
    span = tel.only_span()
    assert span.attributes[sc.STREAM_CUT_SHORT] is True


def test_error_span_and_metric(tel):
    from llamatelemetry.provision.server import free_port

    with LlamaCppClient(f"http://127.0.0.1:{free_port()}", max_retries=0, **tel.providers) as c:
        with pytest.raises(errors.APIConnectionError):
            c.chat_completion(messages=HI, model="m")
    span = tel.only_span()
    assert span.attributes[sc.ERROR_TYPE] == "APIConnectionError"
    assert span.status.status_code.name == "ERROR"
    assert tel.histogram_count(sc.METRIC_OPERATION_DURATION, **{sc.ERROR_TYPE: "APIConnectionError"}) == 1


def test_content_capture_opt_in(full_server, tel, monkeypatch):
    with LlamaCppClient(full_server.base_url, capture_content=True, **tel.providers) as c:
        c.chat_completion(messages=HI, max_tokens=64)
    a = tel.only_span().attributes
    assert '"hi"' in a[sc.INPUT_MESSAGES]
    assert "Hello there!" in a[sc.OUTPUT_MESSAGES] and "reasoning" in a[sc.OUTPUT_MESSAGES]
    tel.exporter.clear()
    monkeypatch.setenv(sc.CAPTURE_CONTENT_ENV, "true")
    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        c.chat_completion(messages=HI, max_tokens=64)
    assert sc.INPUT_MESSAGES in tel.only_span().attributes


def test_content_capture_is_size_limited(full_server, tel):
    with LlamaCppClient(full_server.base_url, capture_content=True, **tel.providers) as c:
        c._telemetry.content_limit = 50
        c.chat_completion(messages=[{"role": "user", "content": "x" * 500}], max_tokens=64)
    assert len(tel.only_span().attributes[sc.INPUT_MESSAGES]) <= 50 + len("...[truncated]")


def test_api_key_never_recorded(tel):
    reply = {"id": "c", "model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    with RecordingServer(reply) as server, LlamaCppClient(server.url, api_key="sk-very-secret", capture_content=True, **tel.providers) as c:
        c.chat_completion(messages=HI, model="m")
    span = tel.only_span()
    assert all("sk-very-secret" not in str(v) for v in span.attributes.values())
    assert server.requests[0][1]["Authorization"] == "Bearer sk-very-secret"


def test_traceparent_reaches_the_server(tel):
    reply = {"id": "c", "model": "m", "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
    with RecordingServer(reply) as server, LlamaCppClient(server.url, **tel.providers) as c:
        c.chat_completion(messages=HI, model="m")
    headers = {k.lower(): v for k, v in server.requests[0][1].items()}
    span = tel.only_span()
    assert headers["traceparent"] == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{int(span.context.trace_flags):02x}"


def test_broken_telemetry_never_breaks_the_call(full_server, tel):
    class Exploding:
        def __getattr__(self, name):
            raise RuntimeError("boom")

    with LlamaCppClient(full_server.base_url, **tel.providers) as c:
        c._telemetry.tracer = Exploding()
        assert c.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == "Hello there!"
        c._telemetry.instruments.duration = Exploding()
        c._telemetry.tracer = tel.tracer_provider.get_tracer("t")
        assert c.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == "Hello there!"
        stream = c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
        assert stream.get_final_completion().choices[0].message.content == "Hello there!"


def test_instrument_turns_telemetry_on(full_server, tel):
    with LlamaCppClient(full_server.base_url, telemetry=False) as c:
        c.chat_completion(messages=HI, max_tokens=64)
        assert tel.spans() == []
        instrument(c, **tel.providers)
        c.chat_completion(messages=HI, max_tokens=64)
    assert tel.only_span().attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == N_REASONING


def test_async_parity(full_server, tel):
    async def main():
        async with AsyncLlamaCppClient(full_server.base_url, **tel.providers) as c:
            await c.chat_completion(messages=HI, max_tokens=64)
            assert await c.flush_telemetry()  # keeps the spans in call order
            stream = await c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
            async with stream:
                async for _ in stream:
                    pass
            await c.chat_completion(messages=HI, max_tokens=5)
            cut = await c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
            async for _ in cut:
                break
            await cut.aclose()

    asyncio.run(main())
    plain, streamed, exhausted, cut = tel.spans()
    for span in (plain, streamed):
        assert span.attributes[sc.USAGE_REASONING_OUTPUT_TOKENS] == N_REASONING
        assert span.attributes[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS
    assert 0 < streamed.attributes[sc.RESPONSE_TIME_TO_FIRST_CHUNK] < (streamed.end_time - streamed.start_time) / 1e9
    assert exhausted.attributes[sc.REASONING_BUDGET_EXHAUSTED] is True
    assert cut.attributes[sc.STREAM_CUT_SHORT] is True


def test_async_client_matches_sync_results(full_server):
    async def main():
        async with AsyncLlamaCppClient(full_server.base_url, telemetry=False) as c:
            resp = await c.chat.completions.create(messages=HI, max_tokens=64)
            final = await (await c.chat.completions.create(messages=HI, max_tokens=64, stream=True)).get_final_completion()
            msg = await c.messages.create(messages=HI, max_tokens=64)
            health = await c.health.check()
            ids = await c.tokenize("Hello there!")
            models = await c.models.list()
            return resp, final, msg, health, ids, models

    resp, final, msg, health, ids, models = asyncio.run(main())
    assert resp.choices[0].message.content == final.choices[0].message.content == msg.text == "Hello there!"
    assert final.usage.completion_tokens == THINKING_COMPLETION_TOKENS
    assert health.ok and len(ids) == len(ANSWER_PIECES) and models.data[0].id == "scripted"


def test_async_abandoned_stream_ends_span_on_gc(full_server, tel):
    async def main():
        async with AsyncLlamaCppClient(full_server.base_url, **tel.providers) as c:
            stream = await c.chat.completions.create(messages=HI, max_tokens=64, stream=True)
            for _ in range(5):  # some reasoning arrives before the stream is dropped
                await stream.__anext__()
            assert stream._acc.reasoning
            del stream
            gc.collect()
            assert len(tel.spans()) == 1  # ended by the finalizer, before the client closes
            # the client keeps working after abandoning a stream
            assert (await c.chat_completion(messages=HI, max_tokens=64)).choices[0].message.content == "Hello there!"

    asyncio.run(main())
    abandoned = tel.spans()[0]
    assert abandoned.attributes[sc.STREAM_CUT_SHORT] is True
    assert sc.USAGE_REASONING_OUTPUT_TOKENS not in abandoned.attributes  # no network I/O from a finalizer
