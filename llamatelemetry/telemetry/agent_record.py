"""Writes what :mod:`~llamatelemetry.telemetry.agent_signals` extracts onto a call's span and metrics.

One :class:`AgentInstruments` per recorder; the call record asks it for the :class:`AgentSignals` of a
finished call (success or failure), sets :func:`span_attributes` / :func:`add_span_events` on the span,
then :meth:`AgentInstruments.record` writes the metrics with the call's base metric attributes.

``n_ctx`` for successful calls comes from :class:`ContextSizes`, a cache per model with no I/O of its
own: when a generating call's model has no fresh ``n_ctx`` (:meth:`ContextSizes.due`), the call record
looks it up with the caller's side requests (``GET /props``, :meth:`.lookups.Lookups.context_size`: the
caller's ``Authorization``, the keep-alive resend) in the background finisher, the cache learns it, and the
call records its utilisation with it, so the first call of a model records utilisation too and no caller
waits. Without a finisher slot (full) a call records with what is cached. An overflow's own ``n_ctx``
refreshes the cache.

Example::

    instruments = AgentInstruments(meter)
    signals = instruments.signals_of_success("/v1/chat/completions", "m", outcome_json, wall=1.2,
                                             timings=timings, prompt_tokens=900)
    instruments.record(signals, {"gen_ai.request.model": "m"})
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import agent_signals as ag
from . import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

warn_logger = logging.getLogger("llamatelemetry")

#: Seconds a looked-up n_ctx stays valid (a server restarted with another -c is picked up after this).
N_CTX_TTL = 300.0
#: Seconds before a failed /props lookup is tried again.
N_CTX_RETRY = 60.0
#: Models whose n_ctx is kept (the oldest is forgotten beyond this).
N_CTX_MODELS = 256


@dataclass(slots=True)
class AgentSignals:
    """What one call showed about queueing, context, tool calls and speculative decoding."""

    queue_wait: float | None = None
    prompt_tokens: int | None = None
    n_ctx: int | None = None
    overflow: bool = False
    tool_calls: ag.ToolCalls | None = None
    drafts: tuple[int, int] | None = None
    cached_tokens: int | None = None
    #: Reasons of the malformed tool calls (parse_error included) in order.
    malformed: tuple[str, ...] = field(default_factory=tuple)

    @property
    def utilisation(self) -> float | None:
        return ag.context_utilisation(self.prompt_tokens, self.n_ctx)


class ContextSizes:
    """n_ctx per model label, learned from overflows and ``/props`` lookups made by others (see module docs).

    Thread-safe, bounded to :data:`N_CTX_MODELS` models; no I/O.

    Example::

        if sizes.due("m"):
            sizes.remember("m", lookups.context_size("m"))
        sizes.get("m")  # 4096, or None
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: Monotonic seconds (replaceable, so a test can let the TTL and the retry delay pass).
        self.clock = clock
        self._known: dict[str | None, tuple[int, float]] = {}
        self._next_lookup: dict[str | None, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _put(table: dict[str | None, Any], model: str | None, value: Any) -> None:
        if model not in table and len(table) >= N_CTX_MODELS:
            table.pop(next(iter(table)))  # forget the oldest model
        table[model] = value

    def learn(self, model: str | None, n_ctx: int) -> None:
        """Keep ``model``'s n_ctx (fresh for :data:`N_CTX_TTL`)."""
        with self._lock:
            self._put(self._known, model, (n_ctx, self.clock()))

    def get(self, model: str | None) -> int | None:
        """The cached n_ctx of ``model`` (a stale one too, until a lookup refreshes it), or None."""
        with self._lock:
            found = self._known.get(model)
        return found[0] if found is not None else None

    def due(self, model: str | None) -> bool:
        """True when ``model`` has no fresh n_ctx and a lookup may be made now (marks it as being made)."""
        now = self.clock()
        with self._lock:
            found = self._known.get(model)
            if found is not None and now - found[1] < N_CTX_TTL:
                return False
            if now < self._next_lookup.get(model, 0.0):
                return False
            # Set before the lookup ends: concurrent calls of the model do not start lookups of their own.
            self._put(self._next_lookup, model, now + N_CTX_RETRY)
            return True

    def remember(self, model: str | None, n_ctx: int | None) -> None:
        """Keep a looked-up n_ctx; after a failure (None) the next lookup waits :data:`N_CTX_RETRY`."""
        if n_ctx is not None:
            self.learn(model, n_ctx)
            return
        with self._lock:
            self._put(self._next_lookup, model, self.clock() + N_CTX_RETRY)


class AgentInstruments:
    """The metric instruments for queue wait, context, tool calls, drafts and the prompt cache."""

    def __init__(self, meter: "Meter") -> None:
        self.context_sizes = ContextSizes()
        self.queue_wait = meter.create_histogram(
            sc.METRIC_QUEUE_WAIT, unit="s", explicit_bucket_boundaries_advisory=list(sc.QUEUE_WAIT_BUCKETS),
            description="Time a request spent outside a llama-server slot: waiting for a free slot plus fixed overhead.",
        )
        self.context_utilization = meter.create_histogram(
            sc.METRIC_CONTEXT_UTILIZATION, unit="1", explicit_bucket_boundaries_advisory=list(sc.UTILIZATION_BUCKETS),
            description="Prompt tokens / the slot's context size (n_ctx), per request.",
        )
        self.context_overflows = meter.create_counter(
            sc.METRIC_CONTEXT_OVERFLOWS, unit="{request}", description="Requests refused because the prompt exceeds n_ctx.")
        self.tool_calls = meter.create_counter(
            sc.METRIC_TOOL_CALLS, unit="{call}", description="Tool calls in responses.")
        self.tool_calls_malformed = meter.create_counter(
            sc.METRIC_TOOL_CALLS_MALFORMED, unit="{call}",
            description="Malformed tool calls: parser errors, invalid JSON arguments, tool_calls finish without a call.")
        self.draft_tokens = meter.create_counter(
            sc.METRIC_SPECULATIVE_DRAFT_TOKENS, unit="{token}", description="Tokens drafted by speculative decoding.")
        self.accepted_tokens = meter.create_counter(
            sc.METRIC_SPECULATIVE_ACCEPTED_TOKENS, unit="{token}", description="Drafted tokens the target model accepted.")
        self.prompt_tokens = meter.create_counter(
            sc.METRIC_PROMPT_TOKENS, unit="{token}", description="Prompt tokens, cached ones included.")
        self.prompt_cached_tokens = meter.create_counter(
            sc.METRIC_PROMPT_CACHED_TOKENS, unit="{token}", description="Prompt tokens served from llama-server's prompt cache.")

    # -- reading a finished call --

    def signals_of_success(self, model: str | None, *, wall: float, timings: Mapping[str, Any] | None,
                           prompt_tokens: int | None, cached_tokens: int | None,
                           tool_calls: ag.ToolCalls | None) -> AgentSignals:
        """The signals of a call that got an answer (``wall``: its duration in seconds)."""
        n_ctx = self.context_sizes.get(model) if prompt_tokens is not None else None
        malformed = tool_calls.malformed if tool_calls is not None else ()
        return AgentSignals(ag.queue_wait(wall, timings), prompt_tokens, n_ctx, False, tool_calls,
                            ag.draft_counts(timings), cached_tokens, malformed)

    def signals_of_failure(self, model: str | None, body: Any) -> AgentSignals:
        """The signals of an error answer (its body: dict, JSON text or bytes; or an exception carrying ``body``)."""
        body = getattr(body, "body", body)
        overflow = ag.context_overflow(body)
        if overflow is not None:
            self.context_sizes.learn(model, overflow.n_ctx)
            return AgentSignals(prompt_tokens=overflow.prompt_tokens, n_ctx=overflow.n_ctx, overflow=True)
        if ag.is_tool_parse_error(body):
            return AgentSignals(malformed=(ag.REASON_PARSE_ERROR,))
        return AgentSignals()

    # -- writing --

    def record(self, signals: AgentSignals, attributes: Mapping[str, "AttributeValue"]) -> None:
        """Write the metrics of one call (``attributes``: the call's base metric attributes)."""
        if signals.queue_wait is not None:
            self.queue_wait.record(signals.queue_wait, attributes)
        utilisation = signals.utilisation
        if utilisation is not None:
            self.context_utilization.record(utilisation, attributes)
        if signals.overflow:
            self.context_overflows.add(1, attributes)
        if signals.tool_calls is not None and signals.tool_calls.count:
            self.tool_calls.add(signals.tool_calls.count, attributes)
        for reason in signals.malformed:
            self.tool_calls_malformed.add(1, {**attributes, sc.TOOL_CALL_MALFORMED_REASON: reason})
        if signals.drafts is not None:
            self.draft_tokens.add(signals.drafts[0], attributes)
            self.accepted_tokens.add(signals.drafts[1], attributes)
        if signals.prompt_tokens is not None and not signals.overflow:
            self.prompt_tokens.add(signals.prompt_tokens, attributes)
            self.prompt_cached_tokens.add(signals.cached_tokens or 0, attributes)


def span_attributes(signals: AgentSignals) -> dict[str, "AttributeValue"]:
    """The span attributes of one call's signals."""
    attrs: dict[str, AttributeValue] = {}
    if signals.queue_wait is not None:
        attrs[sc.QUEUE_WAIT] = signals.queue_wait
    if signals.n_ctx is not None:
        attrs[sc.CONTEXT_N_CTX] = signals.n_ctx
        if signals.prompt_tokens is not None:
            attrs[sc.CONTEXT_PROMPT_TOKENS] = signals.prompt_tokens
    utilisation = signals.utilisation
    if utilisation is not None:
        attrs[sc.CONTEXT_UTILIZATION] = utilisation
    if signals.tool_calls is not None:
        attrs[sc.TOOL_CALLS_COUNT] = signals.tool_calls.count
    if signals.malformed:
        attrs[sc.TOOL_CALLS_MALFORMED_COUNT] = len(signals.malformed)
    if signals.drafts is not None:
        attrs[sc.SPECULATIVE_DRAFT_TOKENS], attrs[sc.SPECULATIVE_ACCEPTED_TOKENS] = signals.drafts
    return attrs


def add_span_events(span: "Span", signals: AgentSignals) -> None:
    """One event per malformed tool call, naming why."""
    for reason in signals.malformed:
        span.add_event(sc.EVENT_TOOL_CALL_MALFORMED, {sc.TOOL_CALL_MALFORMED_REASON: reason})


def warn_overflow(signals: AgentSignals, model: str | None) -> None:
    """Say what to do about a prompt that does not fit (agents often swallow the 400 and retry)."""
    per_slot = "" if signals.n_ctx is None else f" ({signals.n_ctx} tokens per slot)"
    warn_logger.warning(
        "llama-server refused a %s-token prompt for model %s: it exceeds the slot's context%s "
        "(exceed_context_size_error). Retrying the same prompt fails again: shorten or compact the conversation, "
        "or restart llama-server with a larger context (-c; with -np N each slot gets -c/N unless --kv-unified).",
        signals.prompt_tokens if signals.prompt_tokens is not None else "?", model or "(default)", per_slot,
    )
