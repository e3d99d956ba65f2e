"""What agents run into on a shared llama-server, read from what the server itself reports.

Pure functions over parsed JSON (response bodies, error bodies, ``timings``) and stream
accumulators, for both dialects (OpenAI chat, Anthropic messages). The recorder calls them at
the end of every call, so the client and the gateway get the same numbers.

* **Queue wait** (:func:`queue_wait`). llama-server's ``timings`` are taken from the slot's own
  clock (``tools/server/server-common.h``, ``server_slot_stats``): ``prompt_ms`` runs from the
  moment the slot starts processing the prompt (``t_start``, set in ``update_slots`` when the slot
  leaves ``SLOT_STATE_STARTED``) to the last prompt batch, ``predicted_ms`` from there to the last
  generated token. Their sum is the time the request spent *in a slot*. The wall time of the call
  minus that sum is therefore the time the request spent *outside* a slot: waiting for a free slot
  (deferred), plus the server's fixed per-request overhead (HTTP parsing, chat template, tokenizing,
  loading a cached prompt from host memory, writing the final answer) and the network round trip.
  Nothing in the responses separates the two, so the value is an upper bound on the wait; on an
  idle server it measures the overhead alone (a median 3.4 ms here for short prompts, see
  docs/recorder.md), and under contention it grows by exactly the time spent queued.
* **Context overflow** (:func:`context_overflow`): llama-server's 400
  ``{"error": {"type": "exceed_context_size_error", "n_prompt_tokens": N, "n_ctx": M, ...}}``
  (``server-task.cpp``, ``server_task_result_error::to_json``); ``n_ctx`` is the slot's context.
* **Tool calls** (:func:`tool_calls_of_json`, :func:`tool_calls_of_stream`): how many a response
  carried, and how many were malformed: arguments that are not valid JSON, or a finish reason
  ``tool_calls`` with no call. The third kind, output the server's tool-call parser rejects, never
  reaches a response: the server answers 500 (or an error event mid-stream) saying "The model
  produced output that does not match the expected <format> format" (``common/chat.cpp``); see
  :func:`is_tool_parse_error`.
* **Speculative decoding** (:func:`draft_counts`): ``timings.draft_n`` and ``draft_n_accepted``,
  present only when a draft model (``-md``) or another speculative method ran.

Example::

    from llamatelemetry.telemetry.agent_signals import context_overflow, queue_wait
    context_overflow({"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 600, "n_ctx": 512}})
    # ContextOverflow(prompt_tokens=600, n_ctx=512)
    queue_wait(1.25, {"prompt_ms": 200.0, "predicted_ms": 50.0})  # 1.0
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .accumulate import Accumulator

__all__ = [
    "OVERFLOW_ERROR_TYPE", "ContextOverflow", "ToolCalls", "context_overflow", "context_utilisation", "draft_counts",
    "is_tool_parse_error", "queue_wait", "tool_calls_of_json", "tool_calls_of_result", "tool_calls_of_stream",
]

#: llama-server's error type for a prompt larger than the slot's context (also our ``error.type``).
OVERFLOW_ERROR_TYPE = "exceed_context_size_error"
#: The start of the message llama-server sends when its chat parser rejects the model's output.
_PARSE_ERROR_TEXT = "The model produced output that does not match the expected"

#: Why a tool call was counted as malformed (the ``llamatelemetry.tool_call.malformed_reason`` values).
REASON_INVALID_ARGUMENTS = "invalid_arguments"
REASON_MISSING_CALL = "missing_call"
REASON_PARSE_ERROR = "parse_error"


@dataclass(frozen=True, slots=True)
class ContextOverflow:
    """A prompt that did not fit: its size and the slot's context size, as llama-server reported them."""

    prompt_tokens: int
    n_ctx: int


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """The tool calls of one response: how many, and which were malformed (one reason per bad call)."""

    count: int = 0
    malformed: tuple[str, ...] = ()


def queue_wait(wall_seconds: float, timings: Mapping[str, Any] | None) -> float | None:
    """Seconds a request spent outside a slot: wall time minus the server's prompt + generation time.

    None when the response carried no ``timings`` (Anthropic streams, errors). Clamped at 0: the
    server's clock and ours are read at slightly different moments.

    Example::

        queue_wait(0.9, {"prompt_ms": 120.0, "predicted_ms": 30.0})  # 0.75
    """
    if not timings:
        return None
    prompt_ms, predicted_ms = timings.get("prompt_ms"), timings.get("predicted_ms")
    if not isinstance(prompt_ms, (int, float)) or not isinstance(predicted_ms, (int, float)):
        return None
    return max(0.0, wall_seconds - (float(prompt_ms) + float(predicted_ms)) / 1000.0)


def _error_object(body: Any) -> Mapping[str, Any] | None:
    """The error object of an error body, in either dialect (or the object itself, as in Anthropic SSE)."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    if isinstance(inner, Mapping):
        return inner
    return body if "type" in body or "message" in body else None


def context_overflow(body: Any) -> ContextOverflow | None:
    """The overflow an error body reports (dict, JSON text or bytes), or None for any other error.

    Example::

        context_overflow('{"error":{"code":400,"type":"exceed_context_size_error","n_prompt_tokens":9,"n_ctx":8}}')
        # ContextOverflow(prompt_tokens=9, n_ctx=8)
    """
    err = _error_object(body)
    if err is None or err.get("type") != OVERFLOW_ERROR_TYPE:
        return None
    prompt, n_ctx = err.get("n_prompt_tokens"), err.get("n_ctx")
    if not isinstance(prompt, int) or not isinstance(n_ctx, int):
        return None
    return ContextOverflow(prompt, n_ctx)


def is_tool_parse_error(body: Any) -> bool:
    """True when an error body (or message text) is llama-server's chat parser rejecting the model's output.

    That happens when a model writes a tool call (or reasoning markers) the format's parser cannot read.

    Example::

        is_tool_parse_error({"error": {"code": 500, "message":
            "The model produced output that does not match the expected Qwen3.5 format"}})  # True
    """
    err = _error_object(body)
    message = err.get("message") if err is not None else body if isinstance(body, str) else None
    return isinstance(message, str) and _PARSE_ERROR_TEXT in message


def context_utilisation(prompt_tokens: int | None, n_ctx: int | None) -> float | None:
    """How full the slot's context was: prompt tokens / ``n_ctx`` (None if either is unknown).

    Example::

        context_utilisation(1536, 2048)  # 0.75
    """
    if prompt_tokens is None or not n_ctx or n_ctx <= 0:
        return None
    return prompt_tokens / n_ctx


def draft_counts(timings: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """``(draft_n, draft_n_accepted)`` from ``timings``; None when no speculative decoding ran.

    Example::

        draft_counts({"draft_n": 40, "draft_n_accepted": 30})  # (40, 30)
    """
    if not timings:
        return None
    drafted, accepted = timings.get("draft_n"), timings.get("draft_n_accepted")
    if not isinstance(drafted, int) or not isinstance(accepted, int):
        return None
    return drafted, accepted


def _arguments_malformed(arguments: Any) -> bool:
    """OpenAI tool-call arguments must be a JSON object serialised as a string."""
    if isinstance(arguments, Mapping):
        return False
    if not isinstance(arguments, str):
        return True
    try:
        return not isinstance(json.loads(arguments), dict)
    except ValueError:
        return True


def _summarise(calls: list[Any], finish_reason: str | None, anthropic: bool) -> ToolCalls:
    malformed: list[str] = []
    for call in calls:
        if anthropic:
            # Anthropic tool_use input is an object (llama-server turns unparsable arguments into {}).
            arguments = call.get("input") if isinstance(call, Mapping) else None
            if "partial_json" in call and arguments in (None, {}):
                arguments = call.get("partial_json") or "{}"
        else:
            function = call.get("function") if isinstance(call, Mapping) else None
            arguments = function.get("arguments") if isinstance(function, Mapping) else None
        if _arguments_malformed(arguments):
            malformed.append(REASON_INVALID_ARGUMENTS)
    expects_call = finish_reason == ("tool_use" if anthropic else "tool_calls")
    if expects_call and not calls:
        malformed.append(REASON_MISSING_CALL)
    return ToolCalls(len(calls), tuple(malformed))


def tool_calls_of_json(path: str, data: Any) -> ToolCalls | None:
    """The tool calls of a non-streamed chat answer (raw JSON); None for endpoints without tool calls.

    Example::

        tool_calls_of_json("/v1/chat/completions", {"choices": [{"finish_reason": "tool_calls",
            "message": {"tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}}]})
        # ToolCalls(count=1, malformed=('invalid_arguments',))
    """
    if not isinstance(data, Mapping):
        return None
    bare = path.split("?", 1)[0].rstrip("/")
    if bare.endswith("/messages"):
        blocks = data.get("content")
        calls = [b for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_use"] if isinstance(blocks, list) else []
        return _summarise(calls, data.get("stop_reason"), anthropic=True)
    if not bare.endswith("/chat/completions"):
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return ToolCalls()
    choice = choices[0]
    message = choice.get("message") or {}
    found: Any = message.get("tool_calls") if isinstance(message, Mapping) else None
    return _summarise(list(found) if isinstance(found, list) else [], choice.get("finish_reason"), anthropic=False)


def tool_calls_of_stream(acc: "Accumulator") -> ToolCalls | None:
    """The tool calls a stream carried (chat or Anthropic messages); None for text completions.

    Only a finished stream can say a call is malformed: a cut-short one has half its arguments.
    """
    tool_calls = getattr(acc, "tool_calls", None)
    if isinstance(tool_calls, dict):  # ChatAccumulator: index -> call
        calls = [tool_calls[i] for i in sorted(tool_calls)]
        summary = _summarise(calls, acc.finish_reason, anthropic=False)
    else:
        blocks = getattr(acc, "blocks", None)
        if not isinstance(blocks, list):
            return None
        calls = [b for b in blocks if isinstance(b, Mapping) and b.get("type") == "tool_use"]
        summary = _summarise(calls, acc.finish_reason, anthropic=True)
    return summary if acc.finished else ToolCalls(summary.count)


def tool_calls_of_result(result: object) -> ToolCalls | None:
    """The tool calls of a typed result (:class:`~llamatelemetry.types.ChatCompletion` or ``Message``).

    Example::

        tool_calls_of_result(client.chat.completions.create(messages=msgs, tools=tools))
    """
    from .. import types

    if isinstance(result, types.ChatCompletion):
        if not result.choices:
            return ToolCalls()
        choice = result.choices[0]
        calls = [{"function": {"arguments": tc.function.arguments if tc.function else None}}
                 for tc in (choice.message.tool_calls or [])]
        return _summarise(calls, choice.finish_reason, anthropic=False)
    if isinstance(result, types.Message):
        blocks = [{"input": b.input if b.input is not None else {}} for b in result.content if b.type == "tool_use"]
        return _summarise(blocks, result.stop_reason, anthropic=True)
    return None
