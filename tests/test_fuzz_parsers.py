"""Fuzzing the parsers the telemetry runs on untrusted bytes, with Hypothesis, on a fixed budget.

What clients and upstreams send is relayed byte for byte; only the telemetry reads it. Whatever it
reads — request JSON, OpenAI SSE events, Anthropic events, Prometheus text in the exporter — the
telemetry must never raise into the relay, never lose the request's span, never grow without bound.

Budget: ``FUZZ_EXAMPLES`` examples per property (derandomized: the same inputs on every run, so the
suite stays deterministic; raise it locally with ``LLAMATELEMETRY_FUZZ_EXAMPLES=5000`` to search
further). Each example runs through the gateway's real :class:`Observer`/``Exchange`` with an
in-memory OTel SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from llamatelemetry.promtext import PromTextParseError, parse_prometheus_text
from llamatelemetry.provision.server import free_port
from llamatelemetry.proxy.guard import raise_max_tokens
from llamatelemetry.proxy.limits import LineGuard
from llamatelemetry.proxy.observe import Observer, parse_json_body
from llamatelemetry.telemetry.recorder import operation_for

FUZZ_EXAMPLES = int(os.environ.get("LLAMATELEMETRY_FUZZ_EXAMPLES", "150"))
BUDGET = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
#: A small line cap, so the fuzzer reaches it: the telemetry's buffer must stay under cap + one chunk.
LINE_CAP = 4096
PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/completions", "/completion", "/v1/embeddings", "/chat/completions"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)
#: Field names the telemetry looks at, so generated objects hit its real code paths.
KNOWN_KEYS = ["model", "stream", "max_tokens", "messages", "choices", "delta", "content", "usage", "timings",
              "prompt_tokens", "completion_tokens", "finish_reason", "type", "message", "index", "error", "id",
              "input_tokens", "output_tokens", "content_block", "text", "thinking", "reasoning_content", "stop_reason"]
objects = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner,
                                                                max_size=6),
    max_leaves=30,
)
ANTHROPIC_TYPES = ["message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
                   "message_stop", "ping", "error"]


def _event_line(obj: Any, anthropic_type: str | None) -> bytes:
    if anthropic_type is not None and isinstance(obj, dict):
        obj = {**obj, "type": anthropic_type}
    prefix = f"event: {anthropic_type}\n".encode() if anthropic_type else b""
    return prefix + b"data: " + json.dumps(obj, default=str).encode() + b"\n\n"


sse_pieces = st.one_of(
    st.builds(_event_line, objects, st.none() | st.sampled_from(ANTHROPIC_TYPES)),
    st.binary(max_size=300),  # anything at all, split anywhere
    st.just(b"data: [DONE]\n\n"), st.just(b": ping\n\n"), st.just(b"\r\n"),
    st.builds(lambda n: b"data: " + b"x" * n, st.integers(0, 3 * LINE_CAP)),  # long (unterminated) lines
)


class Harness:
    """A gateway Observer (real recorder, in-memory SDK) on an event loop, its upstream a closed port."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient()
        self.upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens: side lookups fail at once
        self.observer = Observer(tracer_provider=tracer_provider, meter_provider=MeterProvider([InMemoryMetricReader()]),
                                 http=self.http)

    def scope(self, path: str) -> dict[str, Any]:
        return {"type": "http", "path": path, "method": "POST",
                "headers": [(b"user-agent", b"fuzz/1"), (b"content-type", b"application/json")]}

    def run(self, work: Any) -> None:
        async def body() -> None:
            work()
            await self.observer.drain(5.0)

        self.loop.run_until_complete(body())

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _one_span_per_request(harness: Harness, before: int, path: str) -> None:
    expected = 1 if operation_for(path) is not None else 0  # llama.cpp's native paths get no span
    assert len(harness.spans.get_finished_spans()) == before + expected, "the request's span was lost"


@BUDGET
@given(path=st.sampled_from(PATHS), raw=st.one_of(st.binary(max_size=400), st.builds(lambda v: json.dumps(v).encode(), json_values),
                                                  st.builds(lambda v: json.dumps(v).encode(), objects)),
       answer=st.one_of(st.binary(max_size=400), st.builds(lambda v: json.dumps(v).encode(), objects)),
       status=st.sampled_from([200, 200, 400, 404, 500, 503]), floor=st.integers(1, 4096))
def test_request_and_answer_bodies(harness: Harness, path: str, raw: bytes, answer: bytes, status: int, floor: int) -> None:
    before = len(harness.spans.get_finished_spans())

    def work() -> None:
        parsed = parse_json_body(path, raw)
        assert parsed is None or isinstance(parsed, dict)
        if parsed is not None:
            raise_max_tokens(parsed, path, floor)
        exchange = harness.observer.begin(harness.scope(path), harness.upstream, parsed)
        exchange.answered(status, httpx.Headers({"content-type": "application/json"}), answer)

    harness.run(work)
    _one_span_per_request(harness, before, path)


@BUDGET
@example(path="/v1/chat/completions", pieces=[b'data: {"choices":[]}\n\n', b"data: " + b"x" * (3 * LINE_CAP)], cut=97,
         ended="left")  # an upstream line that never ends, after a good event
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/completions"]),
       pieces=st.lists(sse_pieces, max_size=25), cut=st.integers(1, 97), ended=st.sampled_from(["done", "error", "left"]))
def test_sse_streams(harness: Harness, path: str, pieces: list[bytes], cut: int, ended: str) -> None:
    before = len(harness.spans.get_finished_spans())
    data = b"".join(pieces)
    chunks = [data[i:i + cut] for i in range(0, len(data), cut)]  # re-split anywhere, as TCP may

    def work() -> None:
        exchange = harness.observer.begin(harness.scope(path), harness.upstream, {"model": "m", "stream": True})
        guard = LineGuard(cap=LINE_CAP)
        for chunk in chunks:
            if guard.admit(chunk):
                exchange.chunk(chunk)
            assert exchange._events.buffered <= LINE_CAP + cut, "the telemetry buffered an unbounded line"  # noqa: SLF001
        error = httpx.ReadError("cut") if ended == "error" else None
        exchange.stream_ended(200, error, client_left=ended == "left")

    harness.run(work)
    _one_span_per_request(harness, before, path)


prom_lines = st.one_of(
    st.text(max_size=80),
    st.builds(lambda n, labels, v: f"{n}{labels} {v}", st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True),
              st.sampled_from(["", "{}", '{a="b"}', '{a="b",c="d\\n"}', '{a="', "{a=b}", '{a="x",a="y"}']),
              st.sampled_from(["1", "-1.5e3", "NaN", "+Inf", "x", "", "1 1700000000000", "1 x"])),
    st.builds(lambda n, t: f"# TYPE {n} {t}", st.text(max_size=15), st.sampled_from(["counter", "gauge", "histogram", "bogus", ""])),
    st.builds(lambda n, h: f"# HELP {n} {h}", st.text(max_size=15), st.text(max_size=30)),
)


@BUDGET
@given(lines=st.lists(prom_lines, max_size=30))
def test_prometheus_text(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    try:
        families = parse_prometheus_text(text)
    except PromTextParseError:
        return  # the one failure the exporter expects (it reports that target's scrape as failed)
    samples = sum(len(f.samples) for f in families)
    assert samples <= text.count("\n"), "more samples than lines: the parser invented data"
