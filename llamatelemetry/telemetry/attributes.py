"""Span attributes of one call: those known at its start (the request) and at its end (the outcome).

Pure functions from parsed JSON and an :class:`~.outcome.Outcome` to attribute dicts; the
recorder sets them in one call each, so the SDK validates them in one pass.

Example::

    attrs = request_attributes({"max_tokens": 64, "stop": "\\n"}, stream=True, capture=None)
    assert attrs[sc.REQUEST_STOP_SEQUENCES] == ["\\n"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from . import semconv as sc
from .outcome import Outcome

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

__all__ = ["ContentCapture", "request_attributes", "response_attributes", "truncate"]

_REQUEST_PARAMS = (
    ("max_tokens", sc.REQUEST_MAX_TOKENS), ("temperature", sc.REQUEST_TEMPERATURE), ("top_p", sc.REQUEST_TOP_P),
    ("top_k", sc.REQUEST_TOP_K), ("seed", sc.REQUEST_SEED), ("frequency_penalty", sc.REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", sc.REQUEST_PRESENCE_PENALTY),
)


@dataclass(frozen=True, slots=True)
class ContentCapture:
    """Opted in to recording prompts and answers, each attribute cut at ``limit`` characters."""

    limit: int


def truncate(text: str, limit: int) -> str:
    """``text``, cut at ``limit`` characters with a marker.

    Example::

        truncate("abcdef", 3)  # "abc...[truncated]"
    """
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def request_attributes(body: Mapping[str, Any], *, stream: bool, capture: ContentCapture | None) -> dict[str, "AttributeValue"]:
    """The request's sampling parameters (and, with ``capture``, its messages) as span attributes."""
    attributes: dict[str, AttributeValue] = {}
    for key, name in _REQUEST_PARAMS:
        value = body.get(key)
        if value is not None:
            attributes[name] = value
    stop = body.get("stop", body.get("stop_sequences"))
    if stop:
        attributes[sc.REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else list(stop)
    if stream:
        attributes[sc.REQUEST_STREAM] = True
    if capture is not None:
        limit = capture.limit
        if "messages" in body:
            attributes[sc.INPUT_MESSAGES] = truncate(json.dumps(body["messages"], ensure_ascii=False), limit)
        elif "prompt" in body:
            prompt = [{"role": "user", "parts": [{"type": "text", "content": body["prompt"]}]}]
            attributes[sc.INPUT_MESSAGES] = truncate(json.dumps(prompt, ensure_ascii=False), limit)
        if body.get("system"):
            system = body["system"]
            attributes[sc.SYSTEM_INSTRUCTIONS] = truncate(system if isinstance(system, str) else json.dumps(system), limit)
    return attributes


def response_attributes(out: Outcome, *, reasoning_tokens: int | None, ttft: float | None, per_token: float | None,
                        started: float, capture: ContentCapture | None) -> dict[str, "AttributeValue"]:
    """What the call produced, as span attributes (``started``: the call's monotonic start)."""
    attrs: dict[str, AttributeValue] = {}
    if out.response_id:
        attrs[sc.RESPONSE_ID] = out.response_id
    if out.response_model:
        attrs[sc.RESPONSE_MODEL] = out.response_model
    if out.finish_reasons:
        attrs[sc.RESPONSE_FINISH_REASONS] = out.finish_reasons
    if out.input_tokens is not None:
        attrs[sc.USAGE_INPUT_TOKENS] = out.input_tokens
    if out.output_tokens is not None:
        attrs[sc.USAGE_OUTPUT_TOKENS] = out.output_tokens
    if out.cached_tokens is not None:
        attrs[sc.USAGE_CACHE_READ_INPUT_TOKENS] = out.cached_tokens
    if reasoning_tokens is not None:
        attrs[sc.USAGE_REASONING_OUTPUT_TOKENS] = reasoning_tokens
        attrs[sc.REASONING_COUNT_METHOD] = out.reasoning_count_method or "unknown"
    if ttft is not None:
        attrs[sc.RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
    if out.first_content_at is not None:
        attrs[sc.TIME_TO_FIRST_CONTENT] = out.first_content_at - started
    if per_token is not None:
        attrs[sc.TIME_PER_OUTPUT_TOKEN] = per_token
    if out.chunks is not None:
        attrs[sc.STREAM_CHUNKS] = out.chunks
        attrs[sc.STREAM_CUT_SHORT] = out.cut_short
    if out.timings:
        for key, name in sc.LLAMACPP_TIMING_ATTRIBUTES.items():
            value = out.timings.get(key)
            if value is not None:
                attrs[name] = value
    if capture is not None:
        parts = []
        if out.reasoning:
            parts.append({"type": "reasoning", "content": out.reasoning})
        parts.append({"type": "text", "content": out.content})
        message = {"role": "assistant", "parts": parts, "finish_reason": out.finish_reasons[0] if out.finish_reasons else None}
        attrs[sc.OUTPUT_MESSAGES] = truncate(json.dumps([message], ensure_ascii=False), capture.limit)
    return attrs
