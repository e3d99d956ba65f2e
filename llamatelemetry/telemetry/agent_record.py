"""Writes what :mod:`~llamatelemetry.telemetry.agent_signals` extracts onto a call's span and metrics.

One :class:`AgentInstruments` per recorder; the call record asks it for the :class:`AgentSignals` of a
finished call (success or failure), sets :func:`span_attributes` / :func:`add_span_events` on the span,
then :meth:`AgentInstruments.record` writes the metrics with the call's base metric attributes.

``n_ctx`` for successful calls comes from :class:`ContextSizes`: a cached ``GET /props`` per model
(``default_generation_settings.n_ctx`` is the slot's context), fetched on a daemon thread so no call
waits for it; the first call of a model (and every call when ``/props`` is unreachable, e.g. behind
``--api-key``) records no utilisation. An overflow's own ``n_ctx`` refreshes the cache.

Example::

    instruments = AgentInstruments(meter, server_url="http://127.0.0.1:8080")
    signals = instruments.signals_of_success("/v1/chat/completions", "m", outcome_json, wall=1.2,
                                             timings=timings, prompt_tokens=900)
    instruments.record(signals, {"gen_ai.request.model": "m"})
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from . import agent_signals as ag
from . import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue

logger = logging.getLogger("llamatelemetry.telemetry")
warn_logger = logging.getLogger("llamatelemetry")

#: Seconds a looked-up n_ctx stays valid (a server restarted with another -c is picked up after this).
N_CTX_TTL = 300.0
#: Seconds before a failed /props lookup is tried again.
N_CTX_RETRY = 60.0


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
    """n_ctx per model label, from overflows and a background ``GET /props`` (see module docs)."""

    def __init__(self, server_url: str | None, api_key: str | None = None) -> None:
        self.server_url = server_url
        # Sent to that same server only (a --api-key server guards /props); never recorded anywhere.
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._known: dict[str | None, tuple[int, float]] = {}
        self._pending: dict[str | None, float] = {}
        self._lock = threading.Lock()

    def learn(self, model: str | None, n_ctx: int) -> None:
        with self._lock:
            self._known[model] = (n_ctx, time.monotonic())

    def get(self, model: str | None) -> int | None:
        """The cached n_ctx of ``model`` (None if unknown yet: a lookup is started, never awaited)."""
        now = time.monotonic()
        with self._lock:
            found = self._known.get(model)
            if found is not None and now - found[1] < N_CTX_TTL:
                return found[0]
            if self.server_url is None or now - self._pending.get(model, -1e9) < N_CTX_RETRY or len(self._pending) > 256:
                return found[0] if found else None
            self._pending[model] = now
        threading.Thread(target=self._fetch, args=(model,), name="llamatelemetry-n-ctx", daemon=True).start()
        return found[0] if found else None

    def _fetch(self, model: str | None) -> None:
        import httpx

        url = f"{self.server_url}/props"
        if model:  # router mode needs it; a single-model server ignores it. autoload=false: never load a model.
            url += "?" + urllib.parse.urlencode({"model": model, "autoload": "false"})
        try:
            data = httpx.get(url, headers=self._headers, timeout=5.0).json()
            n_ctx = (data.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                self.learn(model, n_ctx)
        except Exception:  # noqa: BLE001 - unreachable, 401, not JSON: utilisation stays unknown
            logger.debug("llamatelemetry: /props lookup for n_ctx failed", exc_info=True)


class AgentInstruments:
    """The metric instruments for queue wait, context, tool calls, drafts and the prompt cache."""

    def __init__(self, meter: "Meter", *, server_url: str | None = None, api_key: str | None = None) -> None:
        self.context_sizes = ContextSizes(server_url, api_key)
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
