"""One call's telemetry: the span, its attributes, and the metrics recorded when it ends.

A record ends exactly once (``_ended``), whichever comes first: the result, an error, the
end of a stream, ``close()`` of a stream, or the garbage collection of an abandoned stream.
The span is ended before any metric is recorded, so a failing instrument cannot lose it, and
the duration is taken before any extra request (a token count) is made. A client that gives the
record a finisher (``defer``/``adefer``, see :mod:`llamatelemetry._background`) has that request
and the span's end run off the caller's path; once handed off, later end calls are no-ops.
Every public method swallows its own exceptions: telemetry must never break the caller.
The public entry point is :mod:`llamatelemetry.telemetry.recorder`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import errors, types
from . import agent_record as ar
from . import agent_signals as ag
from . import reasoning as rc
from . import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from .._accumulate import Accumulator
    from .recorder import Recorder, TokenCounter

logger = logging.getLogger("llamatelemetry.telemetry")
warn_logger = logging.getLogger("llamatelemetry")

_REQUEST_PARAMS = (
    ("max_tokens", sc.REQUEST_MAX_TOKENS), ("temperature", sc.REQUEST_TEMPERATURE), ("top_p", sc.REQUEST_TOP_P),
    ("top_k", sc.REQUEST_TOP_K), ("seed", sc.REQUEST_SEED), ("frequency_penalty", sc.REQUEST_FREQUENCY_PENALTY),
    ("presence_penalty", sc.REQUEST_PRESENCE_PENALTY),
)
_LENGTH_REASONS = ("length", "max_tokens")
#: Chunk gaps recorded per slice when a stream ends in an event loop. Each OTel SDK histogram
#: measurement costs ~17 us (attribute cleaning and hashing), so recording a 1000-chunk stream's
#: gaps in one go would hold the loop ~17 ms — every other stream relayed or read on it would wait.
_GAPS_PER_SLICE = 64


@dataclass(slots=True)
class Outcome:
    """What a finished call produced, whatever its endpoint."""

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
    # tool calls (llamatelemetry.telemetry.agent_signals)
    tool_calls: "ag.ToolCalls | None" = None


def _usage_into(outcome: Outcome, usage: dict[str, Any] | None) -> None:
    """Fill token counts from an OpenAI- or Anthropic-shaped usage dict (streams)."""
    if not usage:
        return
    outcome.input_tokens = usage.get("prompt_tokens", usage.get("input_tokens"))
    outcome.output_tokens = usage.get("completion_tokens", usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details") or {}
    outcome.cached_tokens = details.get("cached_tokens", usage.get("cache_read_input_tokens"))
    outcome.server_reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")


def _timings(timings: types.Timings | None) -> dict[str, Any] | None:
    return None if timings is None else {f: getattr(timings, f) for f in sc.LLAMACPP_TIMING_FIELDS}


def outcome_of_result(result: Any) -> Outcome:
    """Summarise a typed (non-streamed) result, reading typed fields directly (hot path)."""
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


def outcome_of_json(path: str, data: Any) -> Outcome:
    """Summarise a non-streamed answer given as raw JSON (a dict), by the endpoint it came from."""
    result_type = _RESULT_TYPES.get(path.split("?", 1)[0].rstrip("/"))
    if result_type is None or not isinstance(data, dict):
        return Outcome()
    return outcome_of_result(result_type.from_dict(data))


def error_type_of(exc: BaseException) -> str:
    """``error.type`` for an exception: the HTTP status for an error answer (semconv), else the class name."""
    if isinstance(exc, errors.APIStatusError) and exc.status_code:
        return str(exc.status_code)
    return type(exc).__name__


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
    metric_attributes: Mapping[str, Any]


def outcome_of_stream(acc: "Accumulator") -> Outcome:
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


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def _no_count(text: str) -> None:
    return None


class CallRecord:
    """Telemetry for one call (see module docs); made by :meth:`Recorder.start`."""

    def __init__(
        self,
        recorder: "Recorder",
        path: str,
        body: Mapping[str, Any] | None,
        *,
        stream: bool,
        operation: str,
        default_model: str | None,
        count_tokens: "TokenCounter | None",
        kind: SpanKind = SpanKind.CLIENT,
        parent: Context | None = None,
        span_attributes: "Mapping[str, AttributeValue] | None" = None,
        metric_attributes: "Mapping[str, AttributeValue] | None" = None,
        on_end: "Callable[[EndedCall], None] | None" = None,
    ) -> None:
        self.started = time.monotonic()  # before the request is sent
        self.telemetry = recorder
        self.path = path
        self.stream = stream
        self.count_tokens: Any = count_tokens
        self.on_end = on_end
        self.in_finalizer = False
        #: Set by a client: runs a sync finishing job off the caller's path (False: not taken).
        self.defer: "Callable[[Callable[[], None]], bool] | None" = None
        #: Set by an async client: starts a finishing coroutine as a background task (False: not taken).
        self.adefer: "Callable[[Callable[[], Coroutine[Any, Any, None]]], bool] | None" = None
        self._handed_off = False
        self._ended = False
        self._span_ended = False
        self.body: Mapping[str, Any] = body if body is not None else {}
        model = self.body.get("model") or default_model
        self.model = model_label(model) if isinstance(model, str) and model else None
        self.operation = operation
        self.extra_metric_attributes = tuple(sorted(metric_attributes.items())) if metric_attributes else ()
        attributes: dict[str, Any] = {sc.OPERATION_NAME: operation, **recorder.base_attributes}
        if self.model:
            attributes[sc.REQUEST_MODEL] = self.model
        # All start attributes in one dict: the SDK validates them in one pass at span start.
        self._add_request_attributes(attributes, self.body)
        if span_attributes:
            attributes.update(span_attributes)
        self.span = recorder.tracer.start_span(
            f"{operation} {self.model}" if self.model else operation, context=parent, kind=kind, attributes=attributes,
        )
        self.recording = self.span.is_recording()
        self.trace_headers: dict[str, str] = {}
        #: The span's context: attach it (:meth:`attach`) while the request runs so inner spans and logs nest under it.
        self.context = trace.set_span_in_context(self.span, parent)
        propagate.inject(self.trace_headers, context=self.context)

    def attach(self) -> object:
        """Make the span current (returns the token for :meth:`detach`)."""
        return otel_context.attach(self.context)

    @staticmethod
    def detach(token: object) -> None:
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a token from another context: nothing to restore
            pass

    def _add_request_attributes(self, attributes: dict[str, Any], body: Mapping[str, Any]) -> None:
        for key, name in _REQUEST_PARAMS:
            value = body.get(key)
            if value is not None:
                attributes[name] = value
        stop = body.get("stop", body.get("stop_sequences"))
        if stop:
            attributes[sc.REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else list(stop)
        if self.stream:
            attributes[sc.REQUEST_STREAM] = True
        if self.telemetry.capture_content:
            limit = self.telemetry.content_limit
            if "messages" in body:
                attributes[sc.INPUT_MESSAGES] = _truncate(json.dumps(body["messages"], ensure_ascii=False), limit)
            elif "prompt" in body:
                prompt = [{"role": "user", "parts": [{"type": "text", "content": body["prompt"]}]}]
                attributes[sc.INPUT_MESSAGES] = _truncate(json.dumps(prompt, ensure_ascii=False), limit)
            if body.get("system"):
                system = body["system"]
                attributes[sc.SYSTEM_INSTRUCTIONS] = _truncate(system if isinstance(system, str) else json.dumps(system), limit)

    # -- ending --

    def fail(self, exc: BaseException) -> None:
        """End the span for a call that raised before producing a result."""
        self._fail(error_type_of(exc), str(exc), exc)

    def fail_status(self, status_code: int, message: str | None = None, body: Any = None) -> None:
        """End the span for an HTTP error answer (``error.type`` is the status code, as semconv says).

        Example::

            record.fail_status(400, "the request exceeds the available context size")
        """
        # A gateway passes the error body as the message: overflow and parse errors are read from it.
        self._fail(str(status_code), message or f"HTTP {status_code}", body if body is not None else message)

    def _fail(self, error_type: str, message: str, body: Any = None) -> None:
        if self._ended or self._handed_off:
            return
        self._ended = True
        duration = time.monotonic() - self.started
        attrs = None
        signals = self._failure_signals(body)
        if signals.overflow:
            error_type = sc.ERROR_TYPE_CONTEXT_OVERFLOW
        try:
            if self.recording:
                self.span.set_attributes(ar.span_attributes(signals))
                ar.add_span_events(self.span, signals)
                self.span.set_attribute(sc.ERROR_TYPE, error_type)
                self.span.set_status(Status(StatusCode.ERROR, message[:500]))
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: telemetry failed while recording an error", exc_info=True)
        self._end_span()
        try:
            attrs = self.telemetry.metric_attributes(self.operation, self.model, None, error_type, self.extra_metric_attributes)
            self.telemetry.duration.record(duration, attrs.base, context=self.context)
            if self.telemetry.server_request_duration is not None:
                self.telemetry.server_request_duration.record(duration, attrs.base, context=self.context)
            if self.telemetry.usage_counters:
                self._record_latest_usage(Outcome(), attrs, None)
            self.telemetry.agent.record(signals, attrs.base)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: a metric failed while recording an error", exc_info=True)
        if signals.overflow:
            ar.warn_overflow(signals, self.model)
        self._notify(EndedCall(self.operation, self.model, Outcome(), duration, None, None, None, False, error_type,
                               attrs.base if attrs is not None else {}))

    def _failure_signals(self, body: Any) -> "ar.AgentSignals":
        try:
            return self.telemetry.agent.signals_of_failure(self.model, body)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: reading an error body failed", exc_info=True)
            return ar.AgentSignals()

    def _count_now(self, text: str) -> int | None:
        """Count synchronously; None if there is no counter, or it is an async one."""
        if not text or self.count_tokens is None:
            return None
        counted = self.count_tokens(text)
        if hasattr(counted, "__await__"):  # an async counter where we cannot await: don't guess
            counted.close()
            return None
        return counted  # type: ignore[no-any-return]

    async def _count_async(self, text: str) -> int | None:
        if not text or self.count_tokens is None:
            return None
        counted = self.count_tokens(text)
        if hasattr(counted, "__await__"):
            return await counted  # type: ignore[no-any-return]
        return counted  # type: ignore[no-any-return]

    def _lookup_pending(self, outcome: Outcome) -> bool:
        """True when the reasoning count of ``outcome`` needs a request to the server."""
        return self.count_tokens is not None and rc.needs_lookup(outcome)

    def _hand_off(self, outcome: Outcome, error: BaseException | None, ended: float) -> bool:
        """Give the lookup and the finish to the client's background finisher (sync); False if none took it."""
        if self.defer is None or not self._lookup_pending(outcome):
            return False
        self._handed_off = True  # from now on the finisher ends the span; later end calls are no-ops
        if not self.defer(lambda: self._count_and_finish(outcome, error, ended)):
            self._finish_without_lookup(outcome, error, ended)  # too many pending
        return True

    def _count_and_finish(self, outcome: Outcome, error: BaseException | None, ended: float) -> None:
        try:
            self._finish(outcome, rc.count_outcome(outcome, self._count_now), error, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    def end(self, result: Any) -> None:
        """End the span of a non-streamed call (sync): ``result`` is the typed result or its raw JSON dict.

        When the reasoning count needs a ``/tokenize`` lookup and the client gave a finisher
        (:attr:`defer`), the lookup and the span's end run there: the caller does not wait.
        """
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()  # before the token count: the count is not part of the call's duration
        try:
            outcome = outcome_of_json(self.path, result) if isinstance(result, dict) else outcome_of_result(result)
            if not self._hand_off(outcome, None, ended):
                self._count_and_finish(outcome, None, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    async def aend(self, result: Any) -> None:
        """End the span of a non-streamed call (async): ``result`` is the typed result or its raw JSON dict."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_json(self.path, result) if isinstance(result, dict) else outcome_of_result(result)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        if not self._ahand_off(outcome, None, ended, gaps_later=False):
            # Cancelled while counting: the call itself succeeded, so the span is not an error.
            await self._acount_and_finish(outcome, None, ended, gaps_later=False, cancel_is_error=False)

    def end_stream(self, acc: "Accumulator", error: BaseException | None) -> None:
        """End the span of a stream (sync stream, or any stream being garbage-collected)."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_stream(acc)
            if self.in_finalizer:
                # No network I/O from a finalizer, and an async counter cannot be awaited here.
                self._finish(outcome, rc.count_outcome(outcome, None), error, ended)
            elif not self._hand_off(outcome, error, ended):
                self._count_and_finish(outcome, error, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    async def aend_stream(self, acc: "Accumulator", error: BaseException | None) -> None:
        """End the span of a stream (async); safe to call from a cancelled task (ends, then re-raises)."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_stream(acc)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        if not self._ahand_off(outcome, error, ended, gaps_later=True):
            await self._acount_and_finish(outcome, error, ended, gaps_later=True, cancel_is_error=True)

    def _ahand_off(self, outcome: Outcome, error: BaseException | None, ended: float, *, gaps_later: bool) -> bool:
        """Give the lookup and the finish to the client's task finisher (async); False if none took it."""
        if self.adefer is None or not self._lookup_pending(outcome):
            return False
        self._handed_off = True

        async def finish_later() -> None:
            # A cancelled background task (the loop shutting down) is not the call's error.
            await self._acount_and_finish(outcome, error, ended, gaps_later=gaps_later, cancel_is_error=False)

        if not self.adefer(finish_later):
            self._finish_without_lookup(outcome, error, ended)  # too many pending, or no loop
        return True

    async def _acount_and_finish(self, outcome: Outcome, error: BaseException | None, ended: float, *,
                                 gaps_later: bool, cancel_is_error: bool) -> None:
        try:
            reasoning_tokens = await rc.acount_outcome(outcome, self._count_async)
            gap_attributes = self._finish(outcome, reasoning_tokens, error, ended, gaps_later=gaps_later)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        except BaseException as exc:  # cancelled (anyio/asyncio) while counting: end with what we saw
            self._finish_quietly(outcome, None, error or (exc if cancel_is_error else None), ended)
            raise
        if gap_attributes is not None:
            await self._arecord_gaps(outcome.chunk_gaps, gap_attributes)

    async def _arecord_gaps(self, gaps: list[float], attributes: Mapping[str, Any]) -> None:
        """Record the stream's chunk gaps a slice at a time, letting the event loop run in between."""
        import anyio  # httpx's own dependency; works under asyncio and trio alike

        histogram = self.telemetry.time_per_output_chunk
        done = 0
        try:
            while done < len(gaps):
                for gap in gaps[done:done + _GAPS_PER_SLICE]:
                    histogram.record(gap, attributes)
                done += _GAPS_PER_SLICE
                if done < len(gaps):
                    await anyio.sleep(0)
        except Exception:  # noqa: BLE001 - the span already ended; a failing instrument loses only this metric
            logger.debug("llamatelemetry: recording chunk gaps failed", exc_info=True)
        except BaseException:  # cancelled between slices: record the rest now, then let it propagate
            try:
                for gap in gaps[done:]:
                    histogram.record(gap, attributes)
            except Exception:  # noqa: BLE001
                logger.debug("llamatelemetry: recording chunk gaps failed", exc_info=True)
            raise

    def _finish_without_lookup(self, outcome: Outcome, error: BaseException | None, ended: float) -> None:
        """End now, counting only by the methods that need no request (the span is never lost)."""
        try:
            self._finish(outcome, rc.count_outcome(outcome, None), error, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    def _finish_quietly(self, outcome: Outcome, reasoning_tokens: int | None, error: BaseException | None, ended: float) -> None:
        try:
            self._finish(outcome, reasoning_tokens, error, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    def _end_span(self, ended: float | None = None) -> None:
        """End the span, exactly once, whatever happens around it.

        ``ended`` (monotonic) backdates the end to when the call finished, so work done after
        it (counting tokens) never lengthens the span.
        """
        if self._span_ended:
            return
        self._span_ended = True
        try:
            end_time = None if ended is None else time.time_ns() - int((time.monotonic() - ended) * 1e9)
            self.span.end(end_time=end_time)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: ending a span failed", exc_info=True)

    def _give_up(self) -> None:
        logger.debug("llamatelemetry: telemetry failed while ending a span", exc_info=True)
        self._ended = True
        self._end_span()

    def _notify(self, ended: EndedCall) -> None:
        if self.on_end is None:
            return
        try:
            self.on_end(ended)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: on_end hook failed", exc_info=True)

    def _finish(self, out: Outcome, reasoning_tokens: int | None, error: BaseException | None, ended: float,
                gaps_later: bool = False) -> Mapping[str, Any] | None:
        """End the span, then record the metrics; with ``gaps_later`` the chunk gaps are left to the
        caller, who gets the attributes to record them with (None: nothing left to record)."""
        if self._ended:
            return None
        self._ended = True
        duration = ended - self.started
        telemetry = self.telemetry
        span = self.span
        exhausted = (
            any(r in _LENGTH_REASONS for r in out.finish_reasons) and not out.content.strip() and bool(out.reasoning.strip())
        )
        ttft = out.first_chunk_at - self.started if out.first_chunk_at is not None else None
        per_token = self._time_per_output_token(out, ended)
        error_type = error_type_of(error) if error is not None else None
        if error is not None:
            signals = self._failure_signals(error)
            if signals.overflow:
                error_type = sc.ERROR_TYPE_CONTEXT_OVERFLOW
        else:
            signals = self.telemetry.agent.signals_of_success(
                self.model, wall=duration, timings=out.timings, prompt_tokens=out.input_tokens,
                cached_tokens=out.cached_tokens, tool_calls=out.tool_calls)
        try:
            if self.recording:
                self._set_response_attributes(out, reasoning_tokens, ttft, per_token)
                span.set_attributes(ar.span_attributes(signals))
                ar.add_span_events(span, signals)
                if exhausted:
                    span.set_attribute(sc.REASONING_BUDGET_EXHAUSTED, True)
                    span.add_event(sc.EVENT_REASONING_BUDGET_EXHAUSTED, {
                        sc.REQUEST_MAX_TOKENS: self.body.get("max_tokens", -1),
                        sc.USAGE_REASONING_OUTPUT_TOKENS: reasoning_tokens if reasoning_tokens is not None else -1,
                    })
                if error is not None:
                    span.set_attribute(sc.ERROR_TYPE, error_type or "")
                    span.set_status(Status(StatusCode.ERROR, str(error)[:500]))
        finally:
            # The span ends before any metric is recorded: a failing instrument cannot lose it.
            self._end_span(ended)
        response_label = None
        if out.response_model:
            response_label = model_label(out.response_model)
        attrs = telemetry.metric_attributes(self.operation, self.model, response_label, error_type, self.extra_metric_attributes)
        try:
            self._record_metrics(out, attrs, duration, ttft, per_token, reasoning_tokens, exhausted, error is None,
                                 record_gaps=not gaps_later)
            telemetry.agent.record(signals, attrs.base)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: a metric instrument failed; the span was already ended", exc_info=True)
        if signals.overflow:
            ar.warn_overflow(signals, self.model)
        if exhausted:
            self._warn_exhausted(reasoning_tokens, out.finish_reasons)
        self._notify(EndedCall(self.operation, self.model, out, duration, ttft, per_token, reasoning_tokens, exhausted,
                               error_type, attrs.base))
        return attrs.base if gaps_later and ttft is not None and out.chunk_gaps else None

    def _record_metrics(self, out: Outcome, attrs: Any, duration: float, ttft: float | None, per_token: float | None,
                        reasoning_tokens: int | None, exhausted: bool, succeeded: bool, record_gaps: bool = True) -> None:
        telemetry = self.telemetry
        if exhausted:
            telemetry.budget_exhausted.add(1, attrs.base)
        # The span's context makes the duration an exemplar: dashboards jump from latency to the trace.
        telemetry.duration.record(duration, attrs.base, context=self.context)
        if telemetry.token_usage is not None:
            usage = telemetry.token_usage
            if out.input_tokens is not None:
                usage.record(out.input_tokens, attrs.input)
            if out.output_tokens is not None:
                usage.record(out.output_tokens, attrs.output)
            if reasoning_tokens is not None:
                usage.record(reasoning_tokens, attrs.reasoning)
        else:
            self._record_latest_usage(out, attrs, reasoning_tokens)
        if ttft is not None:
            telemetry.time_to_first_chunk.record(ttft, attrs.base)
            if record_gaps:  # recorded at the end, not while the caller reads the stream
                for gap in out.chunk_gaps:
                    telemetry.time_per_output_chunk.record(gap, attrs.base)
        if telemetry.server_request_duration is not None:
            telemetry.server_request_duration.record(duration, attrs.base, context=self.context)
            if succeeded and ttft is not None:
                telemetry.server_time_to_first_token.record(ttft, attrs.base)
            if succeeded and per_token is not None:
                telemetry.server_time_per_output_token.record(per_token, attrs.base)

    def _record_latest_usage(self, out: Outcome, attrs: Any, reasoning_tokens: int | None) -> None:
        """The newer conventions: usage counters (with modality) plus per-operation token histograms."""
        counters = self.telemetry.usage_counters
        histograms = self.telemetry.operation_tokens
        # Those conventions record every operation, failed ones included: 0 (modality "unknown") when
        # no usage arrived. Reasoning and cached counts that are unknown stay out: 0 would be a guess.
        unknown = None
        for key, value in (("input", out.input_tokens), ("output", out.output_tokens)):
            if value is None:
                unknown = unknown or {**attrs.usage, sc.TOKEN_MODALITY: sc.TOKEN_MODALITY_UNKNOWN}
                counters[key].add(0, unknown)
                histograms[key].record(0, attrs.base)
            else:
                counters[key].add(value, attrs.usage)
                histograms[key].record(value, attrs.base)
        if out.cached_tokens is not None:
            counters["cached"].add(out.cached_tokens, attrs.usage)
        if reasoning_tokens is not None:
            counters["reasoning"].add(reasoning_tokens, attrs.usage)

    def _time_per_output_token(self, out: Outcome, ended: float) -> float | None:
        if out.first_chunk_at is not None and out.output_tokens and out.output_tokens > 1:
            return (ended - out.first_chunk_at) / (out.output_tokens - 1)
        if out.timings and out.timings.get("predicted_per_token_ms") is not None:
            return float(out.timings["predicted_per_token_ms"]) / 1000.0
        return None

    def _set_response_attributes(self, out: Outcome, reasoning_tokens: int | None, ttft: float | None, per_token: float | None) -> None:
        span = self.span
        attrs: dict[str, Any] = {}
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
            attrs[sc.TIME_TO_FIRST_CONTENT] = out.first_content_at - self.started
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
        if self.telemetry.capture_content:
            parts = []
            if out.reasoning:
                parts.append({"type": "reasoning", "content": out.reasoning})
            parts.append({"type": "text", "content": out.content})
            message = {"role": "assistant", "parts": parts, "finish_reason": out.finish_reasons[0] if out.finish_reasons else None}
            attrs[sc.OUTPUT_MESSAGES] = _truncate(json.dumps([message], ensure_ascii=False), self.telemetry.content_limit)
        span.set_attributes(attrs)

    def _warn_exhausted(self, reasoning_tokens: int | None, finish_reasons: list[str]) -> None:
        max_tokens = self.body.get("max_tokens")
        spent = f"{reasoning_tokens} reasoning tokens" if reasoning_tokens is not None else "its whole output"
        # Say the server's own words: chat says finish_reason=length, /v1/messages stop_reason=max_tokens.
        reason = next((r for r in finish_reasons if r in _LENGTH_REASONS), "length")
        reported = f"stop_reason={reason}" if self.path == "/v1/messages" else f"finish_reason={reason}"
        warn_logger.warning(
            "llama-server returned an empty answer: the model spent %s thinking and hit max_tokens=%s "
            "(%s) before writing any visible content. Raise max_tokens, lower the "
            "reasoning budget (reasoning_budget_tokens / llama-server --reasoning-budget), or turn thinking "
            "off (chat_template_kwargs={'enable_thinking': False}).",
            spent, max_tokens if max_tokens is not None else "(server default)", reported,
        )
