"""What a finished call produced, read from its answer: pure extraction, no I/O, no telemetry objects.

Three doors, one :class:`Outcome`: a typed result (:func:`outcome_of_result`), the raw JSON of a
non-streamed answer (:func:`outcome_of_json`, what a gateway has), or a stream's accumulator
(:func:`outcome_of_stream`). The recorder turns an outcome into span attributes and metrics;
adding what a call measured means adding a field here and reading it there.

Example::

    out = outcome_of_json("/v1/messages", {"id": "m1", "model": "m", "stop_reason": "end_turn",
                                           "content": [], "usage": {"input_tokens": 3, "output_tokens": 2}})
    assert (out.finish_reasons, out.input_tokens) == (["end_turn"], 3)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from opentelemetry.util.types import AttributeValue

from .. import errors, types
from . import agent_signals as ag
from . import semconv as sc

if TYPE_CHECKING:
    from .accumulate import Accumulator

__all__ = ["EndedCall", "Outcome", "error_type_of", "model_label", "outcome_of_json", "outcome_of_result", "outcome_of_stream"]


@dataclass(slots=True)
class Outcome:
    """What a finished call produced, whatever its endpoint (fields a call did not report stay None/empty)."""

    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    content: str = ""
    reasoning: str = ""
    timings: dict[str, Any] | None = None
    # streams only
    first_chunk_at: float | None = None
    first_content_at: float | None = None
    chunks: int | None = None
    chunk_gaps: list[float] = field(default_factory=list)
    cut_short: bool = False
    # reasoning-token counting (llamatelemetry.telemetry.reasoning)
    server_reasoning_tokens: int | None = None
    stream_position: int | None = None
    has_tool_calls: bool = False
    reasoning_count_method: str | None = None
    # tool calls: how many, which malformed (llamatelemetry.telemetry.agent_signals)
    tool_calls: "ag.ToolCalls | None" = None


@dataclass(slots=True, frozen=True)
class EndedCall:
    """What a finished call measured, handed to ``on_end`` (e.g. a gateway's recent-requests list)."""

    operation: str
    #: The model's label (alias or file basename), as on the span name and metrics.
    model: str | None
    outcome: Outcome
    duration: float
    time_to_first_chunk: float | None
    time_per_output_token: float | None
    reasoning_tokens: int | None
    budget_exhausted: bool
    error_type: str | None
    #: The base metric attributes this call recorded with (extra attributes and error.type included).
    metric_attributes: Mapping[str, AttributeValue]


    @property
    def succeeded(self) -> bool:
        """The call ended without an error."""
        return self.error_type is None


def _timings(timings: types.Timings | None) -> dict[str, Any] | None:
    return None if timings is None else {f: getattr(timings, f) for f in sc.LLAMACPP_TIMING_FIELDS}


def outcome_of_result(result: object) -> Outcome:
    """Summarise a typed (non-streamed) result, reading typed fields directly (hot path).

    Example::

        out = outcome_of_result(client.chat_completion(messages=msgs))
    """
    out = Outcome(tool_calls=ag.tool_calls_of_result(result))
    if isinstance(result, (types.ChatCompletion, types.Completion)):
        out.response_id, out.response_model = result.id or None, result.model or None
        out.finish_reasons = [c.finish_reason for c in result.choices if c.finish_reason]
        if isinstance(result, types.ChatCompletion):
            if result.choices:
                msg = result.choices[0].message
                out.content, out.reasoning = msg.content or "", msg.reasoning_content or ""
                out.has_tool_calls = bool(msg.tool_calls)
        else:
            out.content = "".join(c.text for c in result.choices)
        usage = result.usage
        if usage is not None:
            out.input_tokens, out.output_tokens = usage.prompt_tokens, usage.completion_tokens
            if usage.prompt_tokens_details is not None:
                out.cached_tokens = usage.prompt_tokens_details.cached_tokens
            if usage.completion_tokens_details is not None:
                out.server_reasoning_tokens = usage.completion_tokens_details.reasoning_tokens
        out.timings = _timings(result.timings)
    elif isinstance(result, types.Message):
        out.response_id, out.response_model = result.id or None, result.model or None
        out.finish_reasons = [result.stop_reason] if result.stop_reason else []
        out.content, out.reasoning = result.text, result.thinking
        out.has_tool_calls = any(block.type == "tool_use" for block in result.content)
        if result.usage is not None:
            # Anthropic's input_tokens excludes cache reads; semconv's input tokens include them.
            cached = result.usage.cache_read_input_tokens
            out.input_tokens = result.usage.input_tokens + (cached or 0)
            out.output_tokens, out.cached_tokens = result.usage.output_tokens, cached
        out.timings = _timings(result.timings)
    elif isinstance(result, (types.CreateEmbeddingResponse, types.RerankResponse)):
        out.response_model = result.model or None
        if result.usage is not None:
            out.input_tokens = result.usage.prompt_tokens
    return out


#: Typed result for each inference endpoint's non-streamed answer (for raw JSON from a gateway).
_RESULT_TYPES: dict[str, type[types.Record]] = {
    "/v1/chat/completions": types.ChatCompletion, "/chat/completions": types.ChatCompletion,
    "/v1/completions": types.Completion, "/completions": types.Completion,
    "/v1/messages": types.Message,
    "/v1/embeddings": types.CreateEmbeddingResponse, "/embeddings": types.CreateEmbeddingResponse,
    "/v1/rerank": types.RerankResponse, "/rerank": types.RerankResponse,
    "/v1/reranking": types.RerankResponse, "/reranking": types.RerankResponse,
}


def outcome_of_json(path: str, data: object) -> Outcome:
    """Summarise a non-streamed answer given as raw JSON (a dict), by the endpoint it came from.

    Example::

        out = outcome_of_json("/v1/chat/completions", response.json())
    """
    result_type = _RESULT_TYPES.get(path.split("?", 1)[0].rstrip("/"))
    if result_type is None or not isinstance(data, dict):
        return Outcome()
    return outcome_of_result(result_type.from_dict(data))


def outcome_of_stream(acc: "Accumulator") -> Outcome:
    """Summarise a stream from its accumulator (finished or cut short).

    Example::

        out = outcome_of_stream(acc)  # acc: accumulator_for(path), fed every event
    """
    out = Outcome(
        response_id=acc.id or None, response_model=acc.model or None,
        finish_reasons=[acc.finish_reason] if acc.finish_reason else [],
        content=acc.content, reasoning=acc.reasoning, timings=acc.timings,
        first_chunk_at=acc.first_chunk_at, first_content_at=acc.first_content_at, chunks=acc.chunks, chunk_gaps=acc.chunk_gaps,
        cut_short=not acc.finished, has_tool_calls=acc.has_tool_calls,
        stream_position=acc.first_content_predicted_n - 1 if acc.first_content_predicted_n is not None else None,
        tool_calls=ag.tool_calls_of_stream(acc),
    )
    _usage_into(out, acc.usage)
    if out.output_tokens is None and acc.timings and acc.finished:  # the last chunk's timings are the totals
        _usage_from_timings(out, acc.timings)
    return out


def _usage_into(outcome: Outcome, usage: dict[str, Any] | None) -> None:
    """Fill token counts from an OpenAI- or Anthropic-shaped usage dict (streams)."""
    if not usage:
        return
    outcome.input_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
    outcome.output_tokens = usage.get("completion_tokens", usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or {}
    outcome.cached_tokens = details.get("cached_tokens", usage.get("cache_read_input_tokens"))
    outcome.server_reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")


def _usage_from_timings(out: Outcome, timings: dict[str, Any]) -> None:
    """Token counts from llama-server's ``timings`` when a stream carries no ``usage``.

    A stream has ``usage`` only if the caller asked (``stream_options.include_usage``); the OpenAI
    SDK, aider and Continue do not by default, and a gateway must not change their requests. The
    last chunk always has ``timings``: ``predicted_n`` tokens generated, ``prompt_n`` evaluated
    plus ``cache_n`` reused from the prompt cache — the same numbers ``usage`` would carry.
    """
    predicted, prompt, cached = timings.get("predicted_n"), timings.get("prompt_n"), timings.get("cache_n")
    if isinstance(predicted, int):
        out.output_tokens = predicted
    if isinstance(prompt, int):
        out.input_tokens = prompt + (cached if isinstance(cached, int) else 0)
    if isinstance(cached, int):
        out.cached_tokens = cached


def error_type_of(exc: BaseException) -> str:
    """``error.type`` for an exception: the HTTP status for an error answer (semconv), else the class name.

    Example::

        error_type_of(TimeoutError())  # "TimeoutError"

    A router's errors about the requested model get their own (``model_not_found``...): a 400 alone
    would not tell them from a malformed request.
    """
    if isinstance(exc, errors.RouterModelError):
        return exc.error_type
    if isinstance(exc, errors.APIStatusError) and exc.status_code:
        return str(exc.status_code)
    return type(exc).__name__


#: model id -> label, bounded (ids come from responses, so a misbehaving server could send many).
_LABELS: dict[str, str] = {}


def model_label(model: str) -> str:
    """The name spans and metric labels use for a model: the alias, or the GGUF file's basename.

    llama-server reports the full file path as the model id when it runs without ``--alias``;
    that path is high-cardinality noise in a span name or a label (it stays in ``gen_ai.response.model``).

    Example::

        model_label("/models/Qwen3-4B-Q4_K_M.gguf")  # "Qwen3-4B-Q4_K_M.gguf"
    """
    found = _LABELS.get(model)
    if found is None:
        found = os.path.basename(model.replace("\\", "/")) if ("/" in model or "\\" in model) else model
        found = found or model
        if len(_LABELS) < 1024:
            _LABELS[model] = found
    return found
