"""Exact reasoning-token counts, for every model family, streamed or not.

**Definition.** Reasoning tokens are *every token the model generated before the first token
of its visible answer*: the thinking text plus the markers and separators the model writes
itself (Gemma 4's ``<|channel>thought`` … ``<channel|>``, Qwen's ``</think>`` and the newlines
after it). Markers the chat template puts in the *prompt* (Qwen3.5's opening ``<think>\\n``)
were not generated and do not count. So reasoning + visible-answer tokens = output tokens
(the visible answer includes the end-of-turn token that closes it), and on an exhausted call
(``max_tokens`` reached while thinking, empty answer) reasoning = output tokens. The same rule
applies to full and exhausted answers, streams and single responses, ``/v1/chat/completions``
and ``/v1/messages``, on every family.

**Methods**, most exact first; the one used is recorded on the span as
``llamatelemetry.reasoning.count_method``:

``server``
    The server reports the count itself (``usage.completion_tokens_details.reasoning_tokens``,
    or the same field in a ``/v1/messages`` usage). llama-server b11434 does not yet.
``exhausted``
    The answer is empty and generation stopped at the token limit: every output token was
    spent thinking. No tokenizing.
``stream_position``
    Streamed chat: telemetry asks for ``"timings_per_token": true``, so every chunk carries
    ``timings.predicted_n`` (tokens generated so far). The first chunk with visible content
    (non-whitespace text or a tool call) is sent when the answer's first token is generated, so reasoning =
    its ``predicted_n`` − 1. Exact when the server sends the answer's first token in its own
    chunk (as it does for Gemma 4 and Qwen3.5); if it holds that token back (text that could
    still start a marker, an incomplete UTF-8 character), the count includes the held-back
    answer tokens.
``output_minus_answer``
    Single responses and ``/v1/messages`` streams (which carry no per-chunk timings): output
    tokens − the visible answer's tokens (the server's own ``/tokenize``; leading whitespace
    is the separator after the thinking, as some parsers leave it in ``content``) − 1 for the
    end-of-turn token when the model stopped by itself. Exact when the model's answer tokens
    are the canonical tokenization of the answer text.
    It can be off when (a) the model generated the answer in a non-canonical split (the count
    is off by the difference), (b) a stop *sequence* ended the answer (its tokens were
    generated but are not in the text: counted as reasoning), (c) the server trimmed
    whitespace from the answer. The result is clamped to ``[0, output tokens]``.
``reasoning_text``
    Last resort, for a single response whose answer cannot be tokenized as text (it holds tool
    calls): the tokens of the reasoning *text* alone. A lower bound: it misses the markers and
    any non-canonical split.

No count is reported when the output token count is unknown (a stream cut short before any
count arrived), and never one above the output or below zero.

Example::

    from llamatelemetry.telemetry.reasoning import count_reasoning
    count = count_reasoning(output_tokens=17, content="", reasoning="Okay the",
                            finish_reason="length")
    assert (count.tokens, count.method) == (17, "exhausted")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal, Protocol

Method = Literal["server", "exhausted", "stream_position", "output_minus_answer", "reasoning_text"]
METHOD_SERVER: Method = "server"
METHOD_EXHAUSTED: Method = "exhausted"
METHOD_STREAM_POSITION: Method = "stream_position"
METHOD_OUTPUT_MINUS_ANSWER: Method = "output_minus_answer"
METHOD_REASONING_TEXT: Method = "reasoning_text"

#: Finish/stop reasons meaning "the token limit was reached" (chat, /v1/messages).
LENGTH_REASONS = frozenset({"length", "max_tokens"})
#: Finish/stop reasons meaning the model wrote its end-of-turn token (counted in output tokens).
#: Chat's "stop" also covers stop sequences, which cannot be told apart (see the module docs).
END_OF_TURN_REASONS = frozenset({"stop", "end_turn"})


@dataclass(frozen=True, slots=True)
class ReasoningCount:
    """A reasoning-token count and the method that produced it (see the module docs)."""

    tokens: int
    method: Method


@dataclass(frozen=True, slots=True)
class CountRequest:
    """What telemetry must still look up before counting: the tokens of ``answer`` (or ``reasoning``).

    ``text`` is what to tokenize with the server's tokenizer; ``of_reasoning`` tells which one
    it is (the answer for ``output_minus_answer``, the reasoning text for ``reasoning_text``).
    """

    text: str
    of_reasoning: bool = False


def _exact_without_lookup(
    *, output_tokens: int | None, content: str, reasoning: str, finish_reason: str | None,
    server_count: int | None, stream_position: int | None, has_tool_calls: bool,
) -> ReasoningCount | None:
    if output_tokens is None or output_tokens < 0:
        return None  # reasoning is a part of output: without the whole, no part is reported
    if server_count is not None:
        return ReasoningCount(_clamp(server_count, output_tokens), METHOD_SERVER)
    if not reasoning:
        return None
    if finish_reason in LENGTH_REASONS and not content.strip() and not has_tool_calls:
        return ReasoningCount(output_tokens, METHOD_EXHAUSTED)
    if stream_position is not None:
        return ReasoningCount(_clamp(stream_position, output_tokens), METHOD_STREAM_POSITION)
    return None


def needed_lookup(
    *, output_tokens: int | None, content: str, reasoning: str, finish_reason: str | None,
    server_count: int | None = None, stream_position: int | None = None, has_tool_calls: bool = False,
) -> CountRequest | None:
    """Return the text to tokenize before :func:`count_reasoning` can count, or None if no lookup is needed.

    Example::

        lookup = needed_lookup(output_tokens=17, content="Hello there!", reasoning="Okay", finish_reason="stop")
        assert lookup == CountRequest("Hello there!")
    """
    if output_tokens is None or not reasoning:
        return None
    if _exact_without_lookup(output_tokens=output_tokens, content=content, reasoning=reasoning,
                             finish_reason=finish_reason, server_count=server_count,
                             stream_position=stream_position, has_tool_calls=has_tool_calls) is not None:
        return None
    if has_tool_calls:
        return CountRequest(reasoning, of_reasoning=True)
    answer = content.lstrip()  # leading whitespace is the separator after the thinking, not the answer
    return CountRequest(answer) if answer else None


def count_reasoning(
    *, output_tokens: int | None, content: str, reasoning: str, finish_reason: str | None,
    server_count: int | None = None, stream_position: int | None = None, has_tool_calls: bool = False,
    looked_up_tokens: int | None = None,
) -> ReasoningCount | None:
    """Count reasoning tokens by the most exact method available (pure; see the module docs).

    ``stream_position`` is the ``predicted_n`` of the first visible-content chunk minus one;
    ``looked_up_tokens`` the token count of the text :func:`needed_lookup` asked for (None if
    that lookup failed or was not possible). Returns None when no honest count exists.

    Example::

        count = count_reasoning(output_tokens=17, content="Hello there!", reasoning="Okay",
                                finish_reason="stop", looked_up_tokens=3)
        assert (count.tokens, count.method) == (13, "output_minus_answer")
    """
    exact = _exact_without_lookup(output_tokens=output_tokens, content=content, reasoning=reasoning,
                                  finish_reason=finish_reason, server_count=server_count,
                                  stream_position=stream_position, has_tool_calls=has_tool_calls)
    if exact is not None or output_tokens is None or output_tokens < 0 or not reasoning:
        return exact
    if has_tool_calls:
        if looked_up_tokens is None:
            return None
        return ReasoningCount(_clamp(looked_up_tokens, output_tokens), METHOD_REASONING_TEXT)
    answer_tokens = looked_up_tokens if content.strip() else 0
    if answer_tokens is None:
        return None
    end_of_turn = 1 if finish_reason in END_OF_TURN_REASONS else 0
    return ReasoningCount(_clamp(output_tokens - answer_tokens - end_of_turn, output_tokens), METHOD_OUTPUT_MINUS_ANSWER)


def _clamp(tokens: int, output_tokens: int) -> int:
    return max(0, min(int(tokens), output_tokens))


# -- the same, applied to a finished call's outcome (used by the recorder) --

class CountedOutcome(Protocol):
    """The fields of a call's outcome that counting reads, and the one it writes."""

    output_tokens: int | None
    content: str
    reasoning: str
    finish_reasons: list[str]
    server_reasoning_tokens: int | None
    stream_position: int | None
    has_tool_calls: bool
    reasoning_count_method: str | None


TokenCounter = Callable[[str], "int | None"]
AsyncTokenCounter = Callable[[str], "Awaitable[int | None]"]


def _inputs(out: CountedOutcome) -> dict[str, Any]:
    return {
        "output_tokens": out.output_tokens, "content": out.content, "reasoning": out.reasoning,
        "finish_reason": out.finish_reasons[0] if out.finish_reasons else None,
        "server_count": out.server_reasoning_tokens, "stream_position": out.stream_position,
        "has_tool_calls": out.has_tool_calls,
    }


def _settle(out: CountedOutcome, looked_up: int | None) -> int | None:
    counted = count_reasoning(**_inputs(out), looked_up_tokens=looked_up)
    out.reasoning_count_method = counted.method if counted is not None else None
    return counted.tokens if counted is not None else None


def needs_lookup(out: CountedOutcome) -> bool:
    """True when counting ``out``'s reasoning tokens needs the server to tokenize some text.

    Example::

        if needs_lookup(outcome): ...  # count off the caller's path
    """
    return needed_lookup(**_inputs(out)) is not None


def count_outcome(out: CountedOutcome, count_tokens: TokenCounter | None) -> int | None:
    """Reasoning tokens of a finished call; sets ``out.reasoning_count_method``.

    ``count_tokens`` tokenizes text with the server (None: no I/O allowed, e.g. in a finalizer;
    then only the methods that need no lookup can count).

    Example::

        tokens = count_outcome(outcome, client_token_counter)
    """
    lookup = needed_lookup(**_inputs(out))
    looked_up = count_tokens(lookup.text) if lookup is not None and count_tokens is not None else None
    return _settle(out, looked_up)


async def acount_outcome(out: CountedOutcome, count_tokens: AsyncTokenCounter | None) -> int | None:
    """:func:`count_outcome` with an async token counter.

    Example::

        tokens = await acount_outcome(outcome, async_client_token_counter)
    """
    lookup = needed_lookup(**_inputs(out))
    looked_up = await count_tokens(lookup.text) if lookup is not None and count_tokens is not None else None
    return _settle(out, looked_up)
