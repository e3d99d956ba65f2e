"""The recorder's metric instruments and how one finished call is written to them.

Which instruments exist is decided once, when the :class:`Instruments` are built: the token
metrics of the semantic-convention version in use (:class:`ClassicTokenUsage` or
:class:`LatestTokenUsage`) and, for a gateway, the ``gen_ai.server.*`` histograms
(:class:`ServerHistograms`; a client gets :class:`NoServerHistograms`). Every instrument is typed;
no call site asks "is this one on?".

Example::

    instruments = Instruments(metrics.get_meter("x"), latest_semconv=False, server_metrics=True)
    attrs = instruments.attributes.get("chat", "m", None, None)
    instruments.record_failure(0.25, attrs, context=None)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from opentelemetry.metrics import Counter, Histogram, Meter

from . import semconv as sc
from .outcome import EndedCall, Outcome

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.util.types import AttributeValue

__all__ = [
    "GAPS_PER_SLICE", "AttributeSets", "ClassicTokenUsage", "Instruments", "LatestTokenUsage", "MetricAttributes",
    "NoServerHistograms", "ServerHistograms", "TokenUsage",
]

logger = logging.getLogger("llamatelemetry.telemetry")

#: Chunk gaps recorded per slice when a stream ends in an event loop. Each OTel SDK histogram
#: measurement costs ~17 us (attribute cleaning and hashing), so recording a 1000-chunk stream's
#: gaps in one go would hold the loop ~17 ms — every other stream relayed or read on it would wait.
GAPS_PER_SLICE = 64
#: Bound on cached attribute sets (distinct operation/model/error/extra combinations).
MAX_CACHED_ATTRIBUTE_SETS = 512

Attributes = dict[str, "AttributeValue"]
ExtraAttributes = tuple[tuple[str, "AttributeValue"], ...]


@dataclass(frozen=True, slots=True)
class MetricAttributes:
    """The attribute sets one kind of call records its metrics with (built once, then reused)."""

    base: Attributes
    input: Attributes
    output: Attributes
    reasoning: Attributes
    #: The newer conventions' usage counters carry gen_ai.token.modality (and no error.type).
    usage: Attributes


class AttributeSets:
    """Low-cardinality metric attributes per kind of call, cached: no per-call dict building."""

    def __init__(self, base_attributes: Mapping[str, "AttributeValue"]) -> None:
        self._base = dict(base_attributes)
        self._cache: dict[tuple[str, str | None, str | None, str | None, ExtraAttributes], MetricAttributes] = {}

    def get(self, operation: str, request_model: str | None, response_model: str | None,
            error_type: str | None, extra: ExtraAttributes = ()) -> MetricAttributes:
        """The attribute sets for one operation/model/error/extra combination."""
        key = (operation, request_model, response_model, error_type, extra)
        found = self._cache.get(key)
        if found is None:
            base: Attributes = {sc.OPERATION_NAME: operation, **self._base, **dict(extra)}
            if request_model:
                base[sc.REQUEST_MODEL] = request_model
            if response_model:
                base[sc.RESPONSE_MODEL] = response_model
            usage = {**base, sc.TOKEN_MODALITY: sc.TOKEN_MODALITY_TEXT}
            if error_type:
                base[sc.ERROR_TYPE] = error_type
            found = MetricAttributes(
                base, {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_INPUT}, {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_OUTPUT},
                {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_REASONING}, usage,
            )
            if len(self._cache) >= MAX_CACHED_ATTRIBUTE_SETS:
                self._cache.clear()
            self._cache[key] = found
        return found


# -- token usage: one class per semantic-convention version ----------------------------------------

class TokenUsage:
    """Token metrics of one semantic-convention version (see the subclasses)."""

    def record(self, out: Outcome, attrs: MetricAttributes, reasoning_tokens: int | None) -> None:
        """Record a finished call's token counts."""
        raise NotImplementedError

    def record_failure(self, attrs: MetricAttributes) -> None:
        """Record a call that failed before any usage arrived."""
        raise NotImplementedError


class ClassicTokenUsage(TokenUsage):
    """``gen_ai.client.token.usage``: one histogram, ``gen_ai.token.type`` input/output/reasoning."""

    def __init__(self, meter: Meter) -> None:
        self.histogram: Histogram = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE, unit="{token}", description="Number of input, output and reasoning tokens used.",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
        )

    def record(self, out: Outcome, attrs: MetricAttributes, reasoning_tokens: int | None) -> None:
        if out.input_tokens is not None:
            self.histogram.record(out.input_tokens, attrs.input)
        if out.output_tokens is not None:
            self.histogram.record(out.output_tokens, attrs.output)
        if reasoning_tokens is not None:
            self.histogram.record(reasoning_tokens, attrs.reasoning)

    def record_failure(self, attrs: MetricAttributes) -> None:
        """Nothing: these conventions record tokens only when they are known."""


class LatestTokenUsage(TokenUsage):
    """The newer conventions: usage counters (with modality) plus per-operation token histograms."""

    def __init__(self, meter: Meter) -> None:
        def counter(name: str, what: str) -> Counter:
            return meter.create_counter(name, unit="{token}", description=f"The number of {what}.")

        def histogram(name: str, key: str) -> Histogram:
            return meter.create_histogram(
                name, unit="{token}", description=f"The number of {key} tokens used per inference operation.",
                explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
            )

        self.input = counter(sc.METRIC_INFERENCE_USAGE_INPUT_TOKENS, "input (prompt) tokens used, including cached tokens")
        self.output = counter(sc.METRIC_INFERENCE_USAGE_OUTPUT_TOKENS, "output tokens used, including reasoning tokens")
        self.cached = counter(sc.METRIC_INFERENCE_USAGE_CACHE_READ_INPUT_TOKENS, "input tokens served from the prompt cache")
        self.reasoning = counter(sc.METRIC_INFERENCE_USAGE_REASONING_OUTPUT_TOKENS, "output tokens used for reasoning")
        self.input_per_operation = histogram(sc.METRIC_INFERENCE_OPERATION_INPUT_TOKENS, "input")
        self.output_per_operation = histogram(sc.METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS, "output")

    def record(self, out: Outcome, attrs: MetricAttributes, reasoning_tokens: int | None) -> None:
        # Those conventions record every operation, failed ones included: 0 (modality "unknown") when
        # no usage arrived. Reasoning and cached counts that are unknown stay out: 0 would be a guess.
        unknown: Attributes | None = None
        for counter, histogram, value in ((self.input, self.input_per_operation, out.input_tokens),
                                          (self.output, self.output_per_operation, out.output_tokens)):
            if value is None:
                unknown = unknown or {**attrs.usage, sc.TOKEN_MODALITY: sc.TOKEN_MODALITY_UNKNOWN}
                counter.add(0, unknown)
                histogram.record(0, attrs.base)
            else:
                counter.add(value, attrs.usage)
                histogram.record(value, attrs.base)
        if out.cached_tokens is not None:
            self.cached.add(out.cached_tokens, attrs.usage)
        if reasoning_tokens is not None:
            self.reasoning.add(reasoning_tokens, attrs.usage)

    def record_failure(self, attrs: MetricAttributes) -> None:
        self.record(Outcome(), attrs, None)


# -- the gateway's server-side histograms ------------------------------------------------------------

class NoServerHistograms:
    """A client records no ``gen_ai.server.*`` metrics: every method does nothing."""

    def record(self, duration: float, ttft: float | None, per_token: float | None, succeeded: bool,
               attrs: MetricAttributes, context: "Context | None") -> None:
        """Nothing to record."""

    def record_failure(self, duration: float, attrs: MetricAttributes, context: "Context | None") -> None:
        """Nothing to record."""


class ServerHistograms(NoServerHistograms):
    """``gen_ai.server.request.duration``, ``.time_to_first_token``, ``.time_per_output_token`` (a gateway's view)."""

    def __init__(self, meter: Meter) -> None:
        self.request_duration: Histogram = meter.create_histogram(
            sc.METRIC_SERVER_REQUEST_DURATION, unit="s",
            description="Generative AI server request duration such as time-to-last byte or last output token.",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self.time_to_first_token: Histogram = meter.create_histogram(
            sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN, unit="s", description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=list(sc.SERVER_TTFT_BUCKETS),
        )
        self.time_per_output_token: Histogram = meter.create_histogram(
            sc.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN, unit="s",
            description="Time per output token generated after the first token for successful responses.",
            explicit_bucket_boundaries_advisory=list(sc.SERVER_TPOT_BUCKETS),
        )

    def record(self, duration: float, ttft: float | None, per_token: float | None, succeeded: bool,
               attrs: MetricAttributes, context: "Context | None") -> None:
        self.request_duration.record(duration, attrs.base, context=context)
        if succeeded and ttft is not None:
            self.time_to_first_token.record(ttft, attrs.base)
        if succeeded and per_token is not None:
            self.time_per_output_token.record(per_token, attrs.base)

    def record_failure(self, duration: float, attrs: MetricAttributes, context: "Context | None") -> None:
        self.request_duration.record(duration, attrs.base, context=context)


# -- all of them ---------------------------------------------------------------------------------------

class Instruments:
    """Every metric instrument of one recorder, typed, chosen once (see module docs)."""

    def __init__(self, meter: Meter, *, latest_semconv: bool, server_metrics: bool,
                 base_attributes: Mapping[str, "AttributeValue"] | None = None) -> None:
        duration_buckets = list(sc.DURATION_BUCKETS)
        self.attributes = AttributeSets(base_attributes or {})
        self.duration: Histogram = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.usage: TokenUsage = LatestTokenUsage(meter) if latest_semconv else ClassicTokenUsage(meter)
        self.time_to_first_chunk: Histogram = meter.create_histogram(
            sc.METRIC_TIME_TO_FIRST_CHUNK, unit="s", description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.time_per_output_chunk: Histogram = meter.create_histogram(
            sc.METRIC_TIME_PER_OUTPUT_CHUNK, unit="s", description="Time between chunks of a streamed response, after the first.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.budget_exhausted: Counter = meter.create_counter(
            sc.METRIC_REASONING_BUDGET_EXHAUSTED, unit="{request}",
            description="Calls that ended with max_tokens used up by reasoning and no visible answer.",
        )
        self.server: NoServerHistograms = ServerHistograms(meter) if server_metrics else NoServerHistograms()

    def record_end(self, ended: EndedCall, attrs: MetricAttributes, context: "Context | None", *,
                   record_gaps: bool = True) -> None:
        """Record a finished call; with ``record_gaps=False`` the chunk gaps are left to :meth:`arecord_gaps`."""
        if ended.budget_exhausted:
            self.budget_exhausted.add(1, attrs.base)
        # The span's context makes the duration an exemplar: dashboards jump from latency to the trace.
        self.duration.record(ended.duration, attrs.base, context=context)
        self.usage.record(ended.outcome, attrs, ended.reasoning_tokens)
        if ended.time_to_first_chunk is not None:
            self.time_to_first_chunk.record(ended.time_to_first_chunk, attrs.base)
            if record_gaps:  # recorded at the end, not while the caller reads the stream
                for gap in ended.outcome.chunk_gaps:
                    self.time_per_output_chunk.record(gap, attrs.base)
        self.server.record(ended.duration, ended.time_to_first_chunk, ended.time_per_output_token,
                           ended.succeeded, attrs, context)

    def record_failure(self, duration: float, attrs: MetricAttributes, context: "Context | None") -> None:
        """Record a call that failed before it produced a result."""
        self.duration.record(duration, attrs.base, context=context)
        self.server.record_failure(duration, attrs, context)
        self.usage.record_failure(attrs)

    async def arecord_gaps(self, gaps: list[float], attributes: Attributes) -> None:
        """Record a stream's chunk gaps a slice at a time, letting the event loop run in between."""
        import anyio  # httpx's own dependency; works under asyncio and trio alike

        histogram = self.time_per_output_chunk
        done = 0
        try:
            while done < len(gaps):
                for gap in gaps[done:done + GAPS_PER_SLICE]:
                    histogram.record(gap, attributes)
                done += GAPS_PER_SLICE
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
