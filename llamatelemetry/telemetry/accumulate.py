"""Fold streamed chunks into the final result, and keep what telemetry needs from a stream (client and gateway alike).

One accumulator per stream kind (chat, text completion, Anthropic messages). They work on
the raw JSON dicts, so the per-chunk cost stays at a few dictionary look-ups.
"""

from __future__ import annotations

import time
from typing import Any

from .. import types


class Accumulator:
    """Base: tracks timing of the first chunk and first visible content (monotonic clock)."""

    chunk_type: type[types.Record] = types.Record

    def __init__(self) -> None:
        self.first_chunk_at: float | None = None
        self.first_content_at: float | None = None
        self.chunks = 0
        self.last_chunk_at: float | None = None
        #: Seconds between consecutive chunks (semconv's time_per_output_chunk, one value per chunk).
        self.chunk_gaps: list[float] = []
        self.finished = False  # saw the server's own end of stream ([DONE] or message_stop)
        self.content_parts: list[str] = []
        self.reasoning_parts: list[str] = []
        self.finish_reason: str | None = None
        self.id = ""
        self.model = ""
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        #: Tokens generated so far, from per-chunk timings (``timings_per_token``), if the server sent them.
        self.predicted_n: int | None = None
        #: ``predicted_n`` of the chunk where the visible answer starts (first non-whitespace text or tool
        #: call): that chunk's token is the answer's first. None if that chunk carried no timings.
        self.first_content_predicted_n: int | None = None
        self.answer_started = False

    @property
    def content(self) -> str:
        return "".join(self.content_parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_parts)

    @property
    def has_tool_calls(self) -> bool:
        return False

    def _mark(self, has_content: bool) -> None:
        now = time.monotonic()
        if self.last_chunk_at is None:
            self.first_chunk_at = now
        else:
            self.chunk_gaps.append(now - self.last_chunk_at)
        self.last_chunk_at = now
        if has_content and self.first_content_at is None:
            self.first_content_at = now
        self.chunks += 1

    def add(self, data: dict[str, Any]) -> bool:
        """Fold one chunk in; return False for a chunk the caller should not see."""
        raise NotImplementedError

    def final(self) -> Any:
        raise NotImplementedError


class _OpenAIStreamAccumulator(Accumulator):
    """Chunks shaped like OpenAI's (chat and text completions): header fields, one choice, usage."""

    def __init__(self, show_usage_chunk: bool, show_timings: bool = True) -> None:
        super().__init__()
        self.show_usage_chunk = show_usage_chunk
        self.show_timings = show_timings
        self.created = 0

    def add(self, data: dict[str, Any]) -> bool:
        self.id = data.get("id") or self.id
        self.model = data.get("model") or self.model
        self.created = data.get("created") or self.created
        timings = data.get("timings")
        if timings is not None:
            self.timings = timings
            self.predicted_n = timings.get("predicted_n", self.predicted_n)
        choices = data.get("choices")
        has_content = False
        finishing = False
        if choices:
            choice = choices[0]
            has_content = self._add_choice(choice)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                finishing = True
            if has_content and not self.answer_started and self._starts_answer(choice):
                self.answer_started = True
                if timings is not None:
                    self.first_content_predicted_n = timings.get("predicted_n")
        self._mark(has_content)
        if timings is not None and not self.show_timings and not finishing and data.get("usage") is None:
            # Per-chunk timings were requested by telemetry; without it only the final chunk has them.
            del data["timings"]
        if data.get("usage") is not None:
            self.usage = data["usage"]
            # The usage-only final chunk (no choices) was requested by telemetry, not by the caller.
            return self.show_usage_chunk or bool(choices)
        return True

    def _add_choice(self, choice: dict[str, Any]) -> bool:
        """Fold in one choice; return True if it carried visible content."""
        raise NotImplementedError

    def _starts_answer(self, choice: dict[str, Any]) -> bool:
        """Whether this content-carrying choice starts the answer (whitespace alone is a separator)."""
        delta = choice.get("delta") or {}
        return bool(delta.get("tool_calls")) or bool("".join(self.content_parts).strip())


class ChatAccumulator(_OpenAIStreamAccumulator):
    chunk_type = types.ChatCompletionChunk

    def __init__(self, show_usage_chunk: bool, show_timings: bool = True) -> None:
        super().__init__(show_usage_chunk, show_timings)
        self.tool_calls: dict[int, dict[str, Any]] = {}

    @property
    def has_tool_calls(self) -> bool:
        return bool(self.tool_calls)

    def _add_choice(self, choice: dict[str, Any]) -> bool:
        delta = choice.get("delta") or {}
        has_content = False
        text = delta.get("content")
        if text:
            self.content_parts.append(text)
            has_content = True
        thinking = delta.get("reasoning_content")
        if thinking:
            self.reasoning_parts.append(thinking)
        if delta.get("tool_calls"):
            has_content = True
            self._add_tool_calls(delta["tool_calls"])
        return has_content

    def _add_tool_calls(self, deltas: list[dict[str, Any]]) -> None:
        for tc in deltas:
            slot = self.tool_calls.setdefault(tc.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            if tc.get("id"):
                slot["id"] = tc["id"]
            fn = tc.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""

    def final(self) -> types.ChatCompletion:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning_parts:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        data: dict[str, Any] = {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage, "timings": self.timings,
        }
        return types.ChatCompletion.from_dict(data)


class CompletionAccumulator(_OpenAIStreamAccumulator):
    chunk_type = types.Completion

    def _add_choice(self, choice: dict[str, Any]) -> bool:
        text = choice.get("text")
        if text:
            self.content_parts.append(text)
        return bool(text)

    def final(self) -> types.Completion:
        return types.Completion.from_dict({
            "id": self.id, "created": self.created, "model": self.model, "usage": self.usage, "timings": self.timings,
            "choices": [{"index": 0, "text": self.content, "finish_reason": self.finish_reason}],
        })


class MessagesAccumulator(Accumulator):
    """Anthropic-shaped events: message_start, content_block_start/delta/stop, message_delta, message_stop."""

    chunk_type = types.MessageStreamEvent

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read: int | None = None

    @property
    def has_tool_calls(self) -> bool:
        return any(block.get("type") == "tool_use" for block in self.blocks)

    def add(self, data: dict[str, Any]) -> bool:
        kind = data.get("type")
        has_content = False
        if kind == "message_start":
            msg = data.get("message") or {}
            self.id = msg.get("id") or self.id
            self.model = msg.get("model") or self.model
            usage = msg.get("usage") or {}
            self.input_tokens = usage.get("input_tokens") or self.input_tokens
            self.cache_read = usage.get("cache_read_input_tokens", self.cache_read)
        elif kind == "content_block_start":
            self.blocks.append(dict(data.get("content_block") or {}))
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if not self.blocks:  # a delta without its block start: keep the text all the same
                self.blocks.append({"type": "text"})
            block = self.blocks[-1]
            if delta.get("type") == "thinking_delta":
                self.reasoning_parts.append(delta.get("thinking", ""))
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif delta.get("type") == "text_delta":
                self.content_parts.append(delta.get("text", ""))
                block["text"] = block.get("text", "") + delta.get("text", "")
                has_content = True
            elif delta.get("type") == "input_json_delta":
                block["partial_json"] = block.get("partial_json", "") + delta.get("partial_json", "")
                has_content = True
        elif kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.finish_reason = self.stop_reason
            usage = data.get("usage") or {}
            self.output_tokens = usage.get("output_tokens", self.output_tokens)
            self.input_tokens = usage.get("input_tokens") or self.input_tokens
        elif kind == "message_stop":
            self.finished = True
        if data.get("timings") is not None:
            self.timings = data["timings"]
        self._mark(has_content)
        if kind in ("message_delta", "message_stop"):
            # OpenAI-shaped for telemetry: prompt_tokens includes cache reads (Anthropic's input_tokens does not).
            self.usage = {"prompt_tokens": self.input_tokens + (self.cache_read or 0), "completion_tokens": self.output_tokens}
            if self.cache_read is not None:
                self.usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read}
        return True

    def final(self) -> types.Message:
        usage: dict[str, Any] = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_read is not None:
            usage["cache_read_input_tokens"] = self.cache_read
        return types.Message.from_dict({
            "id": self.id, "model": self.model, "content": self.blocks, "stop_reason": self.stop_reason,
            "usage": usage, "timings": self.timings,
        })


def accumulator_for(path: str, show_usage_chunk: bool = True, show_timings: bool = True) -> Accumulator:
    """The accumulator for a streamed answer from ``path`` (query string ignored).

    ``show_usage_chunk=False`` hides the usage-only final chunk the caller did not ask for;
    ``show_timings=False`` hides the per-chunk ``timings`` telemetry asked for (chat streams).

    Example::

        acc = accumulator_for("/v1/messages")
        for event in events:  # dicts, one per SSE ``data:`` line
            acc.add(event)
    """
    bare = path.split("?", 1)[0].rstrip("/")
    if bare.endswith("/messages"):
        return MessagesAccumulator()
    if bare.endswith("/completions") and not bare.endswith("/chat/completions"):
        return CompletionAccumulator(show_usage_chunk=show_usage_chunk)
    return ChatAccumulator(show_usage_chunk=show_usage_chunk, show_timings=show_timings)
