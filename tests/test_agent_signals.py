"""What agents run into, produced for real by llama-server and recorded by the client and the gateway.

Each condition comes from a real llama-server: ``-np 1`` with overlapping requests (queueing), a tiny
``-c`` (context overflow), scripted Qwen3.5 models whose output is a valid or a malformed tool call in the
real template's syntax, a repeated long prompt (prompt cache), and a draft model (``-md``, speculative
decoding).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors
from llamatelemetry.provision.model import (
    QWEN35_BAD_TOOL_SCRIPT, QWEN35_TOOL_SCRIPT, TOOL_CALL_ARGUMENTS, TOOL_CALL_TOOL, cached_thinking_models,
    write_draft_model,
)
from llamatelemetry.provision.sdist import sdist_asset
from llamatelemetry.provision.server import LlamaServer
from llamatelemetry.telemetry import semconv as sc
from proxy_helpers import running_gateway
from telemetry_helpers import Telemetry
from waiting import wait_for

AIDER = {"User-Agent": "aider/0.86.1"}


def _points(tel: Telemetry, name: str, **attrs: Any) -> list[Any]:
    return [p for p in tel.points(name) if all(p.attributes.get(k) == v for k, v in attrs.items())]


def _counter(tel: Telemetry, name: str, **attrs: Any) -> int:
    return sum(int(p.value) for p in _points(tel, name, **attrs))


# ---------------------------------------------------------------- queue wait


@pytest.fixture(scope="module")
def one_slot(llama_server_binary: Path, scripted_model: Path) -> Iterator[LlamaServer]:
    with LlamaServer(scripted_model, binary=llama_server_binary, parallel=1, ctx_size=4096) as server:
        yield server


def test_queue_wait_orders_and_sizes_overlapping_requests_on_one_slot(one_slot: LlamaServer) -> None:
    """Three requests 0.3 s apart on one slot: each waits for the ones before it, by as long as they ran."""
    tel = Telemetry()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500, "ignore_eos": True}
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    with LlamaCppClient(one_slot.base_url, timeout=300, **tel.providers) as client:
        client.chat.completions.create(messages=body["messages"], max_tokens=4)  # warm up: first-load costs
        client.flush_telemetry()  # its span ends in the background, after the n_ctx lookup
        tel.exporter.clear()

        def send(name: str) -> None:
            started[name] = time.monotonic()
            client.chat.completions.create(messages=body["messages"], max_tokens=1500, extra_body={"ignore_eos": True})
            ended[name] = time.monotonic()

        threads = []
        for name in ("a", "b", "c"):
            thread = threading.Thread(target=send, args=(name,))
            thread.start()
            threads.append(thread)
            time.sleep(0.3)
        for thread in threads:
            thread.join(300)
    spans = sorted(tel.spans(), key=lambda s: s.start_time)
    assert len(spans) == 3
    waits = [s.attributes[sc.QUEUE_WAIT] for s in spans]
    # a got the free slot; b waited while a ran (a's end minus b's start), c while a and b ran.
    expected = [0.0, ended["a"] - started["b"], ended["b"] - started["c"]]
    assert waits[0] < 0.2, waits
    assert waits[0] < waits[1] < waits[2], waits
    for got, want in zip(waits[1:], expected[1:]):
        # The estimate = the real wait + the fixed overhead (ms); allow for scheduling on a loaded box.
        assert want - 0.1 <= got <= want + 0.5, (waits, expected)
    # ... and each is the wall time minus the server's own prompt + generation time (the documented method).
    for span in spans:
        wall = (span.end_time - span.start_time) / 1e9
        slot_time = (span.attributes["llamacpp.timings.prompt_ms"] + span.attributes["llamacpp.timings.predicted_ms"]) / 1000
        assert span.attributes[sc.QUEUE_WAIT] == pytest.approx(wall - slot_time, abs=0.05)
    histogram = _points(tel, sc.METRIC_QUEUE_WAIT, **{sc.REQUEST_MODEL: "scripted"})
    assert sum(p.count for p in histogram) == 4 and sum(p.sum for p in histogram) == pytest.approx(sum(waits), abs=0.2)


# ---------------------------------------------------------------- context overflow and utilisation


@pytest.fixture(scope="module")
def tiny_context(llama_server_binary: Path, scripted_model: Path) -> Iterator[LlamaServer]:
    with LlamaServer(scripted_model, binary=llama_server_binary, parallel=1, ctx_size=256) as server:
        yield server


LONG = [{"role": "user", "content": "hi " * 100}]  # 321 prompt tokens with the template


def test_context_overflow_client(tiny_context: LlamaServer, caplog: pytest.LogCaptureFixture) -> None:
    tel = Telemetry()
    with LlamaCppClient(tiny_context.base_url, max_retries=0, **tel.providers) as client, \
            caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        with pytest.raises(errors.BadRequestError) as raised:
            client.chat.completions.create(messages=LONG, max_tokens=4)
    body = raised.value.body["error"]
    assert body["type"] == "exceed_context_size_error" and body["n_ctx"] == 256 and body["n_prompt_tokens"] > 256
    span = tel.only_span()
    assert span.attributes[sc.ERROR_TYPE] == "exceed_context_size_error"
    assert span.attributes[sc.CONTEXT_PROMPT_TOKENS] == body["n_prompt_tokens"]
    assert span.attributes[sc.CONTEXT_N_CTX] == 256
    assert span.attributes[sc.CONTEXT_UTILIZATION] == pytest.approx(body["n_prompt_tokens"] / 256)
    assert _counter(tel, sc.METRIC_CONTEXT_OVERFLOWS, **{sc.REQUEST_MODEL: "scripted", sc.ERROR_TYPE: "exceed_context_size_error"}) == 1
    warning = [r.getMessage() for r in caplog.records if "exceeds the slot's context" in r.getMessage()]
    assert len(warning) == 1 and f"{body['n_prompt_tokens']}-token prompt" in warning[0] and "-c" in warning[0]


def _assert_utilisation(tel: Telemetry, span: Any, prompt_tokens: int, n_ctx: int) -> None:
    assert span.attributes[sc.CONTEXT_N_CTX] == n_ctx and span.attributes[sc.CONTEXT_PROMPT_TOKENS] == prompt_tokens
    assert span.attributes[sc.CONTEXT_UTILIZATION] == pytest.approx(prompt_tokens / n_ctx)
    points = _points(tel, sc.METRIC_CONTEXT_UTILIZATION, **{sc.REQUEST_MODEL: "scripted"})
    assert sum(p.count for p in points) == 1 and points[0].max == pytest.approx(prompt_tokens / n_ctx)


def test_context_utilisation_of_the_first_call_sync(tiny_context: LlamaServer) -> None:
    """The very first call of a model records prompt/n_ctx: its n_ctx is looked up (/props) before its span ends."""
    tel = Telemetry()
    with LlamaCppClient(tiny_context.base_url, **tel.providers) as client:
        result = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert client.flush_telemetry(timeout=10)
        assert result.usage is not None
        _assert_utilisation(tel, tel.only_span(), result.usage.prompt_tokens, 256)


def test_context_utilisation_of_the_first_call_async(tiny_context: LlamaServer) -> None:
    tel = Telemetry()

    async def main() -> int:
        async with AsyncLlamaCppClient(tiny_context.base_url, **tel.providers) as client:
            result = await client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                                          stream=True)
            async for _ in result:
                pass
            final = await result.get_final_completion()
            assert await client.flush_telemetry(timeout=10)
        assert final.usage is not None
        return final.usage.prompt_tokens

    prompt_tokens = asyncio.run(main())
    _assert_utilisation(tel, tel.only_span(), prompt_tokens, 256)


def test_context_utilisation_of_the_first_call_through_the_gateway(tiny_context: LlamaServer) -> None:
    with running_gateway(tiny_context.base_url) as gw:
        answer = httpx.post(gw.url + "/v1/chat/completions", headers=AIDER, timeout=60,
                            json={"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert answer.status_code == 200
        span = gw.wait_for_spans(1)[0]
        wait_for(lambda: bool(_points(gw, sc.METRIC_CONTEXT_UTILIZATION)), timeout=10, what="the utilisation metric")
    _assert_utilisation(gw, span, answer.json()["usage"]["prompt_tokens"], 256)


def test_context_overflow_gateway(tiny_context: LlamaServer, caplog: pytest.LogCaptureFixture) -> None:
    with running_gateway(tiny_context.base_url) as gw, caplog.at_level(logging.WARNING, logger="llamatelemetry"):
        for path, extra in (("/v1/chat/completions", {}), ("/v1/messages", {"max_tokens": 4})):
            answer = httpx.post(gw.url + path, json={"model": "scripted", "messages": LONG, **extra}, headers=AIDER, timeout=60)
            assert answer.status_code == 400
        spans = gw.wait_for_spans(2)
        metrics_text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    for span in spans:
        assert span.attributes[sc.ERROR_TYPE] == "exceed_context_size_error"
        assert span.attributes[sc.CONTEXT_N_CTX] == 256 and span.attributes[sc.CONTEXT_PROMPT_TOKENS] > 256
    assert _counter(gw, sc.METRIC_CONTEXT_OVERFLOWS, **{sc.CLIENT_NAME: "aider"}) == 2
    assert 'llamatelemetry_context_overflows_total{' in metrics_text and 'llamatelemetry_client_name="aider"' in metrics_text
    assert sum("exceeds the slot's context" in r.getMessage() for r in caplog.records) == 2


# ---------------------------------------------------------------- tool calls


@pytest.fixture(scope="module")
def tool_servers(llama_server_binary: Path) -> Iterator[dict[str, LlamaServer]]:
    models = cached_thinking_models([QWEN35_TOOL_SCRIPT, QWEN35_BAD_TOOL_SCRIPT])
    servers = {}
    try:
        for script in (QWEN35_TOOL_SCRIPT, QWEN35_BAD_TOOL_SCRIPT):
            servers[script.family] = LlamaServer(
                models[script.family], binary=llama_server_binary, ctx_size=2048, alias=script.family,
                extra_args=["--chat-template-file", str(sdist_asset(script.template))]).start(wait=False)
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_valid_tool_call_counted_not_malformed(tool_servers: dict[str, LlamaServer]) -> None:
    tel = Telemetry()
    with LlamaCppClient(tool_servers["qwen35-tools"].base_url, **tel.providers) as client:
        result = client.chat.completions.create(messages=WEATHER, tools=[TOOL_CALL_TOOL], max_tokens=64)
        with client.chat.completions.create(messages=WEATHER, tools=[TOOL_CALL_TOOL], max_tokens=64, stream=True) as stream:
            for _ in stream:
                pass
        message = client.messages.create(messages=WEATHER, max_tokens=64, tools=[{
            "name": "get_weather", "input_schema": TOOL_CALL_TOOL["function"]["parameters"]}])
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert result.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == TOOL_CALL_ARGUMENTS  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    spans = tel.spans()
    assert len(spans) == 3
    for span in spans:
        assert span.attributes[sc.TOOL_CALLS_COUNT] == 1
        assert sc.TOOL_CALLS_MALFORMED_COUNT not in span.attributes and not span.events
    assert _counter(tel, sc.METRIC_TOOL_CALLS, **{sc.REQUEST_MODEL: "qwen35-tools"}) == 3
    assert _counter(tel, sc.METRIC_TOOL_CALLS_MALFORMED) == 0


def test_malformed_tool_call_counted_with_an_event(tool_servers: dict[str, LlamaServer]) -> None:
    """The model never closes its call: the grammar keeps it inside the parameter until max_tokens, and the
    server returns the call with arguments that are not JSON (finish_reason length)."""
    tel = Telemetry()
    with LlamaCppClient(tool_servers["qwen35-badtools"].base_url, **tel.providers) as client:
        result = client.chat.completions.create(messages=WEATHER, tools=[TOOL_CALL_TOOL], max_tokens=40)
        with client.chat.completions.create(messages=WEATHER, tools=[TOOL_CALL_TOOL], max_tokens=40, stream=True) as stream:
            for _ in stream:
                pass
    arguments = result.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]
    with pytest.raises(ValueError):
        json.loads(arguments)
    for span in tel.spans():
        assert span.attributes[sc.TOOL_CALLS_COUNT] == 1 and span.attributes[sc.TOOL_CALLS_MALFORMED_COUNT] == 1
        # max_tokens cut a tool call short: not an empty answer (the reasoning-budget trap is about text answers)
        assert sc.REASONING_BUDGET_EXHAUSTED not in span.attributes
        assert [(e.name, dict(e.attributes)) for e in span.events] == [
            (sc.EVENT_TOOL_CALL_MALFORMED, {sc.TOOL_CALL_MALFORMED_REASON: "invalid_arguments"})]
    assert _counter(tel, sc.METRIC_TOOL_CALLS_MALFORMED, **{
        sc.REQUEST_MODEL: "qwen35-badtools", sc.TOOL_CALL_MALFORMED_REASON: "invalid_arguments"}) == 2


def test_tool_calls_through_the_gateway_per_client(tool_servers: dict[str, LlamaServer]) -> None:
    with running_gateway(tool_servers["qwen35-badtools"].base_url) as gw:
        for stream in (False, True):
            answer = httpx.post(gw.url + "/v1/chat/completions", headers=AIDER, timeout=60, json={
                "model": "qwen35-badtools", "messages": WEATHER, "tools": [TOOL_CALL_TOOL], "max_tokens": 40, "stream": stream})
            assert answer.status_code == 200
        gw.wait_for_spans(2)
        metrics_text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    assert _counter(gw, sc.METRIC_TOOL_CALLS_MALFORMED, **{sc.CLIENT_NAME: "aider"}) == 2
    assert 'llamatelemetry_tool_calls_malformed_total{' in metrics_text
    assert 'llamatelemetry_tool_call_malformed_reason="invalid_arguments"' in metrics_text


# ---------------------------------------------------------------- prompt cache


def test_prompt_cache_hits_of_a_repeated_long_prompt(one_slot: LlamaServer) -> None:
    messages = [{"role": "user", "content": "hi " * 200}]  # about 620 prompt tokens
    with running_gateway(one_slot.base_url) as gw:
        for _ in range(3):
            answer = httpx.post(gw.url + "/v1/chat/completions", headers=AIDER, timeout=60,
                                json={"model": "scripted", "messages": messages, "max_tokens": 2})
            assert answer.status_code == 200
        spans = gw.wait_for_spans(3)
        metrics_text = httpx.get(gw.admin_url + "/metrics", timeout=10).text
    prompt = spans[0].attributes[sc.USAGE_INPUT_TOKENS]
    cached = [s.attributes[sc.USAGE_CACHE_READ_INPUT_TOKENS] for s in spans]
    assert prompt > 400 and cached[1] >= prompt - 2 and cached[2] >= prompt - 2  # all but the last token(s) reused
    labels = {sc.CLIENT_NAME: "aider", sc.REQUEST_MODEL: "scripted"}
    assert _counter(gw, sc.METRIC_PROMPT_TOKENS, **labels) == 3 * prompt
    assert _counter(gw, sc.METRIC_PROMPT_CACHED_TOKENS, **labels) == sum(cached)
    # ... and the gateway's queue-wait histogram is per client and model too
    assert sum(p.count for p in _points(gw, sc.METRIC_QUEUE_WAIT, **labels)) == 3
    assert "llamatelemetry_prompt_cached_tokens_total{" in metrics_text and "llamatelemetry_prompt_tokens_total{" in metrics_text


# ---------------------------------------------------------------- speculative decoding


def test_speculative_decoding_with_a_draft_model(llama_server_binary: Path, scripted_model: Path, tmp_path: Path) -> None:
    draft = write_draft_model(tmp_path / "draft.gguf")  # one wrong guess per pass over the script
    tel = Telemetry()
    with LlamaServer(scripted_model, binary=llama_server_binary, extra_args=[
            "-md", str(draft), "--spec-type", "draft-simple", "--spec-draft-n-max", "4"]) as server, \
            LlamaCppClient(server.base_url, **tel.providers) as client:
        result = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=52,
                                                extra_body={"ignore_eos": True})
        with client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=52, stream=True,
                                            extra_body={"ignore_eos": True}) as stream:
            for _ in stream:
                pass
    assert result.timings is not None and result.timings.draft_n and result.timings.draft_n_accepted is not None
    drafted, accepted = result.timings.draft_n, result.timings.draft_n_accepted
    assert 0 < accepted < drafted  # the draft is wrong once per pass
    spans = tel.spans()
    for span in spans:
        assert span.attributes[sc.SPECULATIVE_DRAFT_TOKENS] > span.attributes[sc.SPECULATIVE_ACCEPTED_TOKENS] > 0
    assert spans[0].attributes[sc.SPECULATIVE_DRAFT_TOKENS] == drafted
    assert _counter(tel, sc.METRIC_SPECULATIVE_DRAFT_TOKENS) == sum(s.attributes[sc.SPECULATIVE_DRAFT_TOKENS] for s in spans)
    assert _counter(tel, sc.METRIC_SPECULATIVE_ACCEPTED_TOKENS) == sum(s.attributes[sc.SPECULATIVE_ACCEPTED_TOKENS] for s in spans)


def test_context_utilisation_behind_an_api_key(llama_server_binary: Path, scripted_model: Path) -> None:
    """The /props lookup carries the caller's key to that same server (the client's, the gateway's incoming
    request's), so even the first call records utilisation; the key is recorded nowhere."""
    tel = Telemetry()
    hi = [{"role": "user", "content": "hi"}]
    with LlamaServer(scripted_model, binary=llama_server_binary, ctx_size=512, extra_args=["--api-key", "s3cret-key"]) as server:
        assert httpx.get(server.base_url + "/props", timeout=10).status_code == 401  # /props is guarded
        with LlamaCppClient(server.base_url, api_key="s3cret-key", **tel.providers) as client:
            result = client.chat.completions.create(messages=hi, max_tokens=2)
        assert result.usage is not None
        span = tel.only_span()
        assert span.attributes[sc.CONTEXT_N_CTX] == 512
        assert span.attributes[sc.CONTEXT_UTILIZATION] == pytest.approx(result.usage.prompt_tokens / 512)
        assert all("s3cret" not in str(v) for s in tel.spans() for v in s.attributes.values())
        with running_gateway(server.base_url) as gw:
            answer = httpx.post(gw.url + "/v1/chat/completions", json={"model": "scripted", "messages": hi, "max_tokens": 2},
                                headers={**AIDER, "Authorization": "Bearer s3cret-key"}, timeout=60)
            assert answer.status_code == 200
            span = gw.wait_for_spans(1)[0]
    assert span.attributes[sc.CONTEXT_N_CTX] == 512
    assert span.attributes[sc.CONTEXT_UTILIZATION] == pytest.approx(answer.json()["usage"]["prompt_tokens"] / 512)
    assert all("s3cret" not in str(v) for v in span.attributes.values())
