"""One call's telemetry from start to end: the span, and the one moment it ends.

A record ends exactly once, whichever comes first: the result, an error, the end of a stream,
``close()`` of a stream, or the garbage collection of an abandoned stream. The span is ended
before any metric is recorded, so a failing instrument cannot lose it, and the duration is taken
before any extra request (a token count, a context-size lookup) is made.

Whether the caller is sync or async is said once, at the start, by the side requests it gives
(:class:`SyncSideRequests` or :class:`AsyncSideRequests`, made with :mod:`.lookups`): how to ask the
server to tokenize a text and for the model's context size (``n_ctx``), and optionally a finisher that
runs those requests and the span's end off the caller's path (see :mod:`.finisher`); once handed off,
later end calls are no-ops. A call hands off when its reasoning count needs ``/tokenize``
(:func:`.reasoning.needs_lookup`) or when it generates, its prompt tokens are known and its model's
``n_ctx`` is due for a lookup (:meth:`.agent_record.ContextSizes.due`): so the first call of a model
records its context utilisation too. Sync ends (:meth:`CallRecord.end`, :meth:`~CallRecord.end_stream`)
make side requests only with sync callables; async ends (:meth:`~CallRecord.aend`,
:meth:`~CallRecord.aend_stream`) with either.
Every public method swallows its own exceptions: telemetry must never break the caller.
The public entry point is :meth:`llamatelemetry.telemetry.recorder.Recorder.start`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Mapping, Union

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from . import agent_record as ar
from . import reasoning as rc
from . import semconv as sc
from .attributes import ContentCapture, request_attributes, response_attributes
from .instruments import Instruments
from .outcome import EndedCall, Outcome, error_type_of, model_label, outcome_of_json, outcome_of_result, outcome_of_stream

if TYPE_CHECKING:
    from opentelemetry.util.types import AttributeValue

    from .accumulate import Accumulator

__all__ = ["AsyncSideRequests", "CallRecord", "EndedCall", "SideRequests", "SyncSideRequests"]

logger = logging.getLogger("llamatelemetry.telemetry")
warn_logger = logging.getLogger("llamatelemetry")

_LENGTH_REASONS = ("length", "max_tokens")
#: Operations that fill a generation slot's context (their prompt tokens count against n_ctx).
_GENERATES = ("chat", "text_completion")

#: Runs a sync finishing job off the caller's path; False when it did not take it (too many pending).
SyncDefer = Callable[[Callable[[], None]], bool]
#: Starts a finishing coroutine in the background; False when it did not take it (too many pending, no loop).
AsyncDefer = Callable[[Callable[[], Coroutine[Any, Any, None]]], bool]


@dataclass(frozen=True, slots=True)
class SyncSideRequests:
    """A sync caller's side requests: a token counter (the server's ``/tokenize``), optionally the call's
    model's context size (``GET /props``), and optionally its background finisher.

    Example::

        recorder.start(path, body, side_requests=SyncSideRequests(
            lookups.count_tokens, defer=finisher.submit, context_size=lambda: lookups.context_size(model)))
    """

    count_tokens: Callable[[str], int | None]
    defer: SyncDefer | None = None
    context_size: Callable[[], int | None] | None = None


@dataclass(frozen=True, slots=True)
class AsyncSideRequests:
    """An async caller's side requests (see :class:`SyncSideRequests`) and, optionally, its background finisher.

    Example::

        recorder.start(path, body, side_requests=AsyncSideRequests(
            alookups.count_tokens, defer=finisher.submit, context_size=lambda: alookups.context_size(model)))
    """

    count_tokens: Callable[[str], Awaitable[int | None]]
    defer: AsyncDefer | None = None
    context_size: Callable[[], Awaitable[int | None]] | None = None


SideRequests = Union[SyncSideRequests, AsyncSideRequests]


class CallRecord:
    """Telemetry for one call (see module docs); made by :meth:`Recorder.start`."""

    def __init__(
        self,
        *,
        tracer: Tracer,
        instruments: Instruments,
        base_attributes: Mapping[str, "AttributeValue"],
        capture: ContentCapture | None,
        path: str,
        body: Mapping[str, Any] | None,
        stream: bool,
        operation: str,
        default_model: str | None,
        side_requests: SideRequests | None,
        kind: SpanKind = SpanKind.CLIENT,
        parent: Context | None = None,
        span_attributes: "Mapping[str, AttributeValue] | None" = None,
        metric_attributes: "Mapping[str, AttributeValue] | None" = None,
        on_end: "Callable[[EndedCall], None] | None" = None,
        agent: "ar.AgentInstruments | None" = None,
    ) -> None:
        self.started = time.monotonic()  # before the request is sent
        self.instruments = instruments
        #: Queue wait, context, tool calls, drafts, prompt cache (None: not recorded).
        self.agent = agent
        self.capture = capture
        self.path = path
        self.stream = stream
        self.side_requests = side_requests
        self.on_end = on_end
        self._handed_off = False
        self._ended = False
        self._span_ended = False
        self.body: Mapping[str, Any] = body if body is not None else {}
        model = self.body.get("model") or default_model
        self.model = model_label(model) if isinstance(model, str) and model else None
        self.operation = operation
        self.extra_metric_attributes = tuple(sorted(metric_attributes.items())) if metric_attributes else ()
        # All start attributes in one dict: the SDK validates them in one pass at span start.
        attributes: dict[str, AttributeValue] = {sc.OPERATION_NAME: operation, **base_attributes}
        if self.model:
            attributes[sc.REQUEST_MODEL] = self.model
        attributes.update(request_attributes(self.body, stream=stream, capture=capture))
        if span_attributes:
            attributes.update(span_attributes)
        self.span = tracer.start_span(
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
        """Restore the context that was current before :meth:`attach`."""
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a token from another context: nothing to restore
            pass

    # -- ending with an error --

    def fail(self, exc: BaseException) -> None:
        """End the span for a call that raised before producing a result."""
        self._fail(error_type_of(exc), str(exc), exc)

    def fail_status(self, status_code: int, message: str | None = None, body: object = None,
                    error_type: str | None = None) -> None:
        """End the span for an HTTP error answer (``error.type`` is the status code, as semconv says,
        unless ``error_type`` names the error more precisely, e.g. a router's ``model_not_found``).

        Example::

            record.fail_status(400, "the request exceeds the available context size")
        """
        # A gateway passes the error body as the message: overflow and parse errors are read from it.
        self._fail(error_type or str(status_code), message or f"HTTP {status_code}", body if body is not None else message)

    def _fail(self, error_type: str, message: str, body: object = None) -> None:
        if self._ended or self._handed_off:
            return
        self._ended = True
        duration = time.monotonic() - self.started
        base: Mapping[str, AttributeValue] = {}
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
            attrs = self.instruments.attributes.get(self.operation, self.model, None, error_type, self.extra_metric_attributes)
            base = attrs.base
            self.instruments.record_failure(duration, attrs, self.context)
            if self.agent is not None:
                self.agent.record(signals, base)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: a metric failed while recording an error", exc_info=True)
        if signals.overflow:
            ar.warn_overflow(signals, self.model)
        self._notify(EndedCall(self.operation, self.model, Outcome(), duration, None, None, None, False, error_type, base))

    def _failure_signals(self, body: object) -> "ar.AgentSignals":
        try:
            return self.agent.signals_of_failure(self.model, body) if self.agent is not None else ar.AgentSignals()
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: reading an error body failed", exc_info=True)
            return ar.AgentSignals()

    def _success_signals(self, out: Outcome, duration: float) -> "ar.AgentSignals":
        if self.agent is None:
            return ar.AgentSignals()
        # Embeddings and rerank use no prompt cache and no generation slot time: they would dilute the hit ratio.
        generates = self.operation in _GENERATES
        return self.agent.signals_of_success(self.model, wall=duration, timings=out.timings,
                                             prompt_tokens=out.input_tokens if generates else None,
                                             cached_tokens=out.cached_tokens, tool_calls=out.tool_calls)

    # -- side requests --

    def _sizes_context(self, outcome: Outcome, error: BaseException | None, *, sync: bool) -> bool:
        """True when this call looks up its model's n_ctx (claims the lookup: concurrent calls make none).

        Only a generating call that succeeded with known prompt tokens, whose model's n_ctx is due, and
        whose caller gave a context-size request this end can make (a sync end: a sync one).
        """
        side = self.side_requests
        if side is None or side.context_size is None or (sync and not isinstance(side, SyncSideRequests)):
            return False
        return (self.agent is not None and error is None and self.operation in _GENERATES
                and outcome.input_tokens is not None and self.agent.context_sizes.due(self.model))

    def _look_up_context_size(self) -> None:
        side = self.side_requests
        if isinstance(side, SyncSideRequests) and side.context_size is not None and self.agent is not None:
            self.agent.context_sizes.remember(self.model, side.context_size())

    async def _alook_up_context_size(self) -> None:
        side = self.side_requests
        if side is None or side.context_size is None or self.agent is None:
            return
        if isinstance(side, AsyncSideRequests):
            n_ctx = await side.context_size()
        else:
            n_ctx = side.context_size()
        self.agent.context_sizes.remember(self.model, n_ctx)

    # -- ending with a result (sync) --

    def end(self, result: object) -> None:
        """End the span of a non-streamed call (sync): ``result`` is the typed result or its raw JSON dict.

        When the call needs a side request (``/tokenize``, ``/props``) and the caller gave a finisher
        (:attr:`SyncSideRequests.defer`), the requests and the span's end run there: the caller does not wait.
        """
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()  # before any side request: it is not part of the call's duration
        try:
            outcome = outcome_of_json(self.path, result) if isinstance(result, dict) else outcome_of_result(result)
            sizing = self._sizes_context(outcome, None, sync=True)
            if not self._hand_off(outcome, None, ended, sizing):
                self._look_up_and_finish(outcome, None, ended, sizing)
        except Exception:  # noqa: BLE001
            self._give_up()

    def end_stream(self, acc: "Accumulator", error: BaseException | None, *, finalizing: bool = False) -> None:
        """End the span of a stream (sync stream; any stream being garbage-collected: ``finalizing=True``)."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_stream(acc)
            if finalizing:
                # No network I/O from a finalizer, and an async request cannot be awaited here.
                self._finish(outcome, rc.count_outcome(outcome, None), error, ended)
                return
            sizing = self._sizes_context(outcome, error, sync=True)
            if not self._hand_off(outcome, error, ended, sizing):
                self._look_up_and_finish(outcome, error, ended, sizing)
        except Exception:  # noqa: BLE001
            self._give_up()

    def _sync_counter(self) -> Callable[[str], int | None] | None:
        # An async counter cannot be awaited on a sync path: count by what needs no request.
        side = self.side_requests
        return side.count_tokens if isinstance(side, SyncSideRequests) else None

    def _hand_off(self, outcome: Outcome, error: BaseException | None, ended: float, sizing: bool) -> bool:
        """Give the side requests and the finish to the caller's background finisher (sync); False if none took it."""
        side = self.side_requests
        if not isinstance(side, SyncSideRequests) or side.defer is None or not (sizing or rc.needs_lookup(outcome)):
            return False
        self._handed_off = True  # from now on the finisher ends the span; later end calls are no-ops
        if not side.defer(lambda: self._look_up_and_finish(outcome, error, ended, sizing)):
            self._finish_without_lookup(outcome, error, ended)  # too many pending
        return True

    def _look_up_and_finish(self, outcome: Outcome, error: BaseException | None, ended: float, sizing: bool) -> None:
        try:
            reasoning_tokens = rc.count_outcome(outcome, self._sync_counter())
            if sizing:
                self._look_up_context_size()
            self._finish(outcome, reasoning_tokens, error, ended)
        except Exception:  # noqa: BLE001
            self._give_up()

    # -- ending with a result (async) --

    async def aend(self, result: object) -> None:
        """End the span of a non-streamed call (async): ``result`` is the typed result or its raw JSON dict."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_json(self.path, result) if isinstance(result, dict) else outcome_of_result(result)
            sizing = self._sizes_context(outcome, None, sync=False)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        if not self._ahand_off(outcome, None, ended, sizing, gaps_later=False):
            # Cancelled while looking up: the call itself succeeded, so the span is not an error.
            await self._alook_up_and_finish(outcome, None, ended, sizing, gaps_later=False, cancel_is_error=False)

    async def aend_stream(self, acc: "Accumulator", error: BaseException | None) -> None:
        """End the span of a stream (async); safe to call from a cancelled task (ends, then re-raises)."""
        if self._ended or self._handed_off:
            return
        ended = time.monotonic()
        try:
            outcome = outcome_of_stream(acc)
            sizing = self._sizes_context(outcome, error, sync=False)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        if not self._ahand_off(outcome, error, ended, sizing, gaps_later=True):
            await self._alook_up_and_finish(outcome, error, ended, sizing, gaps_later=True, cancel_is_error=True)

    def _ahand_off(self, outcome: Outcome, error: BaseException | None, ended: float, sizing: bool, *,
                   gaps_later: bool) -> bool:
        """Give the side requests and the finish to the caller's task finisher (async); False if none took it."""
        side = self.side_requests
        if not isinstance(side, AsyncSideRequests) or side.defer is None or not (sizing or rc.needs_lookup(outcome)):
            return False
        self._handed_off = True

        async def finish_later() -> None:
            # A cancelled background task (the loop shutting down) is not the call's error.
            await self._alook_up_and_finish(outcome, error, ended, sizing, gaps_later=gaps_later, cancel_is_error=False)

        if not side.defer(finish_later):
            self._finish_without_lookup(outcome, error, ended)  # too many pending, or no loop
        return True

    async def _acount(self, outcome: Outcome) -> int | None:
        side = self.side_requests
        if isinstance(side, AsyncSideRequests):
            return await rc.acount_outcome(outcome, side.count_tokens)
        return rc.count_outcome(outcome, side.count_tokens if side is not None else None)

    async def _alook_up_and_finish(self, outcome: Outcome, error: BaseException | None, ended: float, sizing: bool,
                                   *, gaps_later: bool, cancel_is_error: bool) -> None:
        try:
            reasoning_tokens = await self._acount(outcome)
            if sizing:
                await self._alook_up_context_size()
            gap_attributes = self._finish(outcome, reasoning_tokens, error, ended, gaps_later=gaps_later)
        except Exception:  # noqa: BLE001
            self._give_up()
            return
        except BaseException as exc:  # cancelled (anyio/asyncio) while looking up: end with what we saw
            self._finish_quietly(outcome, None, error or (exc if cancel_is_error else None), ended)
            raise
        if gap_attributes is not None:
            await self.instruments.arecord_gaps(outcome.chunk_gaps, gap_attributes)

    # -- the one end --

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
                gaps_later: bool = False) -> dict[str, "AttributeValue"] | None:
        """End the span, then record the metrics; with ``gaps_later`` the chunk gaps are left to the
        caller, who gets the attributes to record them with (None: nothing left to record)."""
        if self._ended:
            return None
        self._ended = True
        span = self.span
        # A tool call is an answer too: max_tokens cutting one short is not an empty answer.
        exhausted = (
            any(r in _LENGTH_REASONS for r in out.finish_reasons) and not out.content.strip() and bool(out.reasoning.strip())
            and not out.has_tool_calls
        )
        ttft = out.first_chunk_at - self.started if out.first_chunk_at is not None else None
        per_token = self._time_per_output_token(out, ended)
        error_type = error_type_of(error) if error is not None else None
        signals = self._failure_signals(error) if error is not None else self._success_signals(out, ended - self.started)
        if signals.overflow:
            error_type = sc.ERROR_TYPE_CONTEXT_OVERFLOW
        try:
            if self.recording:
                span.set_attributes(response_attributes(
                    out, reasoning_tokens=reasoning_tokens, ttft=ttft, per_token=per_token,
                    started=self.started, capture=self.capture,
                ))
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
        response_label = model_label(out.response_model) if out.response_model else None
        attrs = self.instruments.attributes.get(self.operation, self.model, response_label, error_type,
                                                self.extra_metric_attributes)
        summary = EndedCall(self.operation, self.model, out, ended - self.started, ttft, per_token, reasoning_tokens,
                            exhausted, error_type, attrs.base)
        try:
            self.instruments.record_end(summary, attrs, self.context, record_gaps=not gaps_later)
            if self.agent is not None:
                self.agent.record(signals, attrs.base)
        except Exception:  # noqa: BLE001
            logger.debug("llamatelemetry: a metric instrument failed; the span was already ended", exc_info=True)
        if signals.overflow:
            ar.warn_overflow(signals, self.model)
        if exhausted:
            self._warn_exhausted(reasoning_tokens, out.finish_reasons)
        self._notify(summary)
        return attrs.base if gaps_later and ttft is not None and out.chunk_gaps else None

    def _time_per_output_token(self, out: Outcome, ended: float) -> float | None:
        if out.first_chunk_at is not None and out.output_tokens and out.output_tokens > 1:
            return (ended - out.first_chunk_at) / (out.output_tokens - 1)
        if out.timings and out.timings.get("predicted_per_token_ms") is not None:
            return float(out.timings["predicted_per_token_ms"]) / 1000.0
        return None

    def _warn_exhausted(self, reasoning_tokens: int | None, finish_reasons: list[str]) -> None:
        max_tokens = self.body.get("max_tokens")
        spent = f"{reasoning_tokens} reasoning tokens" if reasoning_tokens is not None else "its whole output"
        # Say the server's own words: chat says finish_reason=length, /v1/messages stop_reason=max_tokens.
        reason = next((r for r in finish_reasons if r in _LENGTH_REASONS), "length")
        reported = f"stop_reason={reason}" if self.path == "/v1/messages" else f"finish_reason={reason}"
        client = dict(self.extra_metric_attributes).get(sc.CLIENT_NAME)  # the gateway's: which tool to fix
        warn_logger.warning(
            "llama-server returned an empty answer%s: the model spent %s thinking and hit max_tokens=%s "
            "(%s) before writing any visible content. Raise max_tokens, lower the "
            "reasoning budget (reasoning_budget_tokens / llama-server --reasoning-budget), or turn thinking "
            "off (chat_template_kwargs={'enable_thinking': False}).",
            f" to client {client!r}" if client else "", spent,
            max_tokens if max_tokens is not None else "(server default)", reported,
        )
