"""The per-client telemetry object: tracer, meter and instruments, created once per client.

Everything per call lives in :class:`~llamatelemetry.telemetry._record.CallRecord`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import os
from typing import TYPE_CHECKING, Any, Callable

from opentelemetry import metrics, trace

from . import semconv as sc

if TYPE_CHECKING:
    from .._base import Call, Settings
    from ._record import CallRecord

logger = logging.getLogger("llamatelemetry.telemetry")

#: Default size limit for captured prompt/response content (characters per attribute).
DEFAULT_CONTENT_LIMIT = 16_384


def capture_content_from_env() -> bool:
    value = os.environ.get(sc.CAPTURE_CONTENT_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on", "span_only", "span_and_event")


@dataclass(frozen=True, slots=True)
class MetricAttributes:
    """The attribute sets one kind of call records its metrics with (built once, then reused)."""

    base: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    reasoning: dict[str, Any]


#: Bound on cached attribute sets (distinct operation/model/error combinations).
_MAX_CACHED_ATTRIBUTE_SETS = 512


class Telemetry:
    """Creates spans and records metrics for one client. Never raises into the caller."""

    def __init__(
        self,
        settings: "Settings",
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        content_limit: int = DEFAULT_CONTENT_LIMIT,
    ) -> None:
        self.settings = settings
        self.capture_content = capture_content_from_env() if capture_content is None else capture_content
        self.content_limit = content_limit
        self.tracer = trace.get_tracer(sc.INSTRUMENTATION_NAME, _version(), tracer_provider, schema_url=sc.SCHEMA_URL)
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, _version(), meter_provider, schema_url=sc.SCHEMA_URL)
        self.duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self.token_usage = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE, unit="{token}", description="Number of input, output and reasoning tokens used.",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
        )
        self.time_to_first_chunk = meter.create_histogram(
            sc.METRIC_TIME_TO_FIRST_CHUNK, unit="s", description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self.time_per_output_chunk = meter.create_histogram(
            sc.METRIC_TIME_PER_OUTPUT_CHUNK, unit="s", description="Time between chunks of a streamed response, after the first.",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self.budget_exhausted = meter.create_counter(
            sc.METRIC_REASONING_BUDGET_EXHAUSTED, unit="{request}",
            description="Calls that ended with max_tokens used up by reasoning and no visible answer.",
        )
        self._attribute_cache: dict[tuple[Any, ...], MetricAttributes] = {}
        # Attributes known once per client: computed here, not per call.
        self.base_attributes: dict[str, Any] = {
            sc.PROVIDER: sc.PROVIDER_NAME,
            sc.SERVER_ADDRESS: settings.host,
            sc.SERVER_PORT: settings.port,
        }

    def metric_attributes(self, operation: str, request_model: str | None, response_model: str | None,
                          error_type: str | None) -> MetricAttributes:
        """Low-cardinality metric attributes for a call, cached: no per-call dict building."""
        key = (operation, request_model, response_model, error_type)
        found = self._attribute_cache.get(key)
        if found is None:
            base: dict[str, Any] = {sc.OPERATION_NAME: operation, **self.base_attributes}
            if request_model:
                base[sc.REQUEST_MODEL] = request_model
            if response_model:
                base[sc.RESPONSE_MODEL] = response_model
            if error_type:
                base[sc.ERROR_TYPE] = error_type
            found = MetricAttributes(
                base, {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_INPUT}, {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_OUTPUT},
                {**base, sc.TOKEN_TYPE: sc.TOKEN_TYPE_REASONING},
            )
            if len(self._attribute_cache) >= _MAX_CACHED_ATTRIBUTE_SETS:
                self._attribute_cache.clear()
            self._attribute_cache[key] = found
        return found

    def start(self, call: "Call", default_model: str | None, count_tokens: Callable[[str], Any]) -> "CallRecord | None":
        """Open the span for ``call``; return None (no telemetry) if anything goes wrong."""
        from ._record import CallRecord

        try:
            return CallRecord(self, call, default_model, count_tokens)
        except Exception:  # noqa: BLE001 - telemetry must never break the call
            logger.debug("llamatelemetry: could not start telemetry for %s", call.path, exc_info=True)
            return None


def _version() -> str:
    from .. import __version__

    return __version__


def instrument(
    client: Any,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    capture_content: bool | None = None,
) -> Any:
    """Turn on (or re-configure) telemetry for an existing client, sync or async; returns it.

    Example::

        client = llamatelemetry.instrument(LlamaCppClient(telemetry=False), tracer_provider=provider)
    """
    client._telemetry = Telemetry(client._settings, tracer_provider=tracer_provider, meter_provider=meter_provider,
                                  capture_content=capture_content)
    return client


def uninstrument(client: Any) -> Any:
    """Turn telemetry off for a client; returns it."""
    client._telemetry = None
    return client
