"""The recorder: one span and its GenAI metrics per inference call, for the client and the gateway alike.

Everything here works on parsed JSON: a request path and body, then either a response body
(dict or typed result) or the stream's events one by one (dicts), then an end. The client
(:class:`~llamatelemetry.LlamaCppClient`) and ``llamatelemetry proxy`` feed exactly this code,
so a fix to an attribute or a count lands once.

Example (what a gateway does for one request)::

    recorder = Recorder(server_address="127.0.0.1", server_port=8080, server_metrics=True)
    record = recorder.start("/v1/chat/completions", body, stream=True, kind=SpanKind.SERVER,
                            parent=context_from_headers(request.headers),
                            span_attributes={"user_agent.original": ua, "llamatelemetry.client.name": "aider"},
                            metric_attributes={"llamatelemetry.client.name": "aider"})
    upstream_headers = {**headers, **record.trace_headers} if record else headers
    acc = accumulator_for("/v1/chat/completions")
    for event in sse_events:           # dicts, as llama-server sent them
        acc.add(event)
    await record.aend_stream(acc, None)  # or record.fail_status(400) / record.fail(exc)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Union

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from .._accumulate import Accumulator, accumulator_for
from . import semconv as sc
from .agent_record import AgentInstruments
from ._record import CallRecord, EndedCall, Outcome, error_type_of, model_label, outcome_of_json

__all__ = [
    "Accumulator", "CallRecord", "EndedCall", "MetricAttributes", "Outcome", "Recorder", "TokenCounter",
    "accumulator_for", "context_from_headers", "error_type_of", "model_label", "operation_for", "outcome_of_json",
]

logger = logging.getLogger("llamatelemetry.telemetry")

#: Default size limit for captured prompt/response content (characters per attribute).
DEFAULT_CONTENT_LIMIT = 16_384
#: Bound on cached attribute sets (distinct operation/model/error/extra combinations).
_MAX_CACHED_ATTRIBUTE_SETS = 512

#: Counts the tokens of a text with the server's tokenizer (None when it cannot); sync or async.
TokenCounter = Union[Callable[[str], "int | None"], Callable[[str], Awaitable["int | None"]]]

#: Inference endpoints and their GenAI operation (OpenAI paths with and without ``/v1``, Anthropic).
_OPERATIONS = {
    "/v1/chat/completions": "chat", "/chat/completions": "chat", "/v1/messages": "chat",
    "/v1/completions": "text_completion", "/completions": "text_completion",
    "/v1/embeddings": "embeddings", "/embeddings": "embeddings",
    "/v1/rerank": "rerank", "/rerank": "rerank", "/v1/reranking": "rerank", "/reranking": "rerank",
}


def operation_for(path: str) -> str | None:
    """The GenAI operation of an inference endpoint, or None for any other path (query string ignored).

    Example::

        operation_for("/v1/messages?beta=true")  # "chat"
    """
    return _OPERATIONS.get(path.split("?", 1)[0].rstrip("/") or "/")


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context an incoming request carries (``traceparent``/``tracestate``), for ``parent=``.

    Example::

        record = recorder.start(path, body, kind=SpanKind.SERVER, parent=context_from_headers(request.headers))
    """
    return propagate.extract(headers)


@dataclass(frozen=True, slots=True)
class MetricAttributes:
    """The attribute sets one kind of call records its metrics with (built once, then reused)."""

    base: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any]
    reasoning: dict[str, Any]
    #: The newer conventions' usage counters carry gen_ai.token.modality (and no error.type).
    usage: dict[str, Any]


def capture_content_from_env() -> bool:
    value = os.environ.get(sc.CAPTURE_CONTENT_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on", "span_only", "span_and_event")


def _version() -> str:
    from .. import __version__

    return __version__


class Recorder:
    """Tracer, meter and instruments for one llama-server target; starts a :class:`CallRecord` per call.

    Args:
        server_address / server_port: the llama-server the calls go to (``server.*`` attributes).
        tracer_provider / meter_provider: providers to use instead of the global ones.
        capture_content: record prompts and responses (default: off, or
            ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).
        server_metrics: also record ``gen_ai.server.request.duration``, ``.time_to_first_token`` and
            ``.time_per_output_token`` (what a gateway in front of llama-server measures).
        latest_semconv: emit the newer GenAI conventions' token metrics (default:
            ``$OTEL_SEMCONV_STABILITY_OPT_IN`` contains ``gen_ai_latest_experimental``).

    Never raises into the caller once constructed: :meth:`start` returns None if it cannot start.

    Example::

        recorder = Recorder(server_address="127.0.0.1", server_port=8080)
        record = recorder.start("/v1/chat/completions", {"model": "m", "messages": []})
    """

    def __init__(
        self,
        *,
        server_address: str,
        server_port: int,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        content_limit: int = DEFAULT_CONTENT_LIMIT,
        server_metrics: bool = False,
        latest_semconv: bool | None = None,
    ) -> None:
        self.capture_content = capture_content_from_env() if capture_content is None else capture_content
        self.content_limit = content_limit
        self.latest_semconv = sc.latest_experimental() if latest_semconv is None else latest_semconv
        self.tracer = trace.get_tracer(sc.INSTRUMENTATION_NAME, _version(), tracer_provider, schema_url=sc.SCHEMA_URL)
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, _version(), meter_provider, schema_url=sc.SCHEMA_URL)
        duration_buckets = list(sc.DURATION_BUCKETS)
        self.duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.token_usage: Any = None
        self.usage_counters: dict[str, Any] = {}
        self.operation_tokens: dict[str, Any] = {}
        if self.latest_semconv:
            for key, name, what in (
                ("input", sc.METRIC_INFERENCE_USAGE_INPUT_TOKENS, "input (prompt) tokens used, including cached tokens"),
                ("output", sc.METRIC_INFERENCE_USAGE_OUTPUT_TOKENS, "output tokens used, including reasoning tokens"),
                ("cached", sc.METRIC_INFERENCE_USAGE_CACHE_READ_INPUT_TOKENS, "input tokens served from the prompt cache"),
                ("reasoning", sc.METRIC_INFERENCE_USAGE_REASONING_OUTPUT_TOKENS, "output tokens used for reasoning"),
            ):
                self.usage_counters[key] = meter.create_counter(name, unit="{token}", description=f"The number of {what}.")
            for key, name in (("input", sc.METRIC_INFERENCE_OPERATION_INPUT_TOKENS),
                              ("output", sc.METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS)):
                self.operation_tokens[key] = meter.create_histogram(
                    name, unit="{token}", description=f"The number of {key} tokens used per inference operation.",
                    explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
                )
        else:
            self.token_usage = meter.create_histogram(
                sc.METRIC_TOKEN_USAGE, unit="{token}", description="Number of input, output and reasoning tokens used.",
                explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
            )
        self.time_to_first_chunk = meter.create_histogram(
            sc.METRIC_TIME_TO_FIRST_CHUNK, unit="s", description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.time_per_output_chunk = meter.create_histogram(
            sc.METRIC_TIME_PER_OUTPUT_CHUNK, unit="s", description="Time between chunks of a streamed response, after the first.",
            explicit_bucket_boundaries_advisory=duration_buckets,
        )
        self.budget_exhausted = meter.create_counter(
            sc.METRIC_REASONING_BUDGET_EXHAUSTED, unit="{request}",
            description="Calls that ended with max_tokens used up by reasoning and no visible answer.",
        )
        self.server_request_duration: Any = None
        self.server_time_to_first_token: Any = None
        self.server_time_per_output_token: Any = None
        if server_metrics:
            self.server_request_duration = meter.create_histogram(
                sc.METRIC_SERVER_REQUEST_DURATION, unit="s",
                description="Generative AI server request duration such as time-to-last byte or last output token.",
                explicit_bucket_boundaries_advisory=duration_buckets,
            )
            self.server_time_to_first_token = meter.create_histogram(
                sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN, unit="s", description="Time to generate first token for successful responses.",
                explicit_bucket_boundaries_advisory=list(sc.SERVER_TTFT_BUCKETS),
            )
            self.server_time_per_output_token = meter.create_histogram(
                sc.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN, unit="s",
                description="Time per output token generated after the first token for successful responses.",
                explicit_bucket_boundaries_advisory=list(sc.SERVER_TPOT_BUCKETS),
            )
        #: Queue wait, context, tool calls, drafts, prompt cache (llamatelemetry.telemetry.agent_record).
        self.agent = AgentInstruments(meter, server_url=f"http://{server_address}:{server_port}")
        self._attribute_cache: dict[tuple[Any, ...], MetricAttributes] = {}
        # Attributes known once per target: computed here, not per call.
        self.base_attributes: dict[str, Any] = {
            sc.PROVIDER: sc.PROVIDER_NAME,
            sc.SERVER_ADDRESS: server_address,
            sc.SERVER_PORT: server_port,
        }

    def metric_attributes(self, operation: str, request_model: str | None, response_model: str | None,
                          error_type: str | None, extra: tuple[tuple[str, Any], ...] = ()) -> MetricAttributes:
        """Low-cardinality metric attributes for a call, cached: no per-call dict building."""
        key = (operation, request_model, response_model, error_type, extra)
        found = self._attribute_cache.get(key)
        if found is None:
            base: dict[str, Any] = {sc.OPERATION_NAME: operation, **self.base_attributes, **dict(extra)}
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
            if len(self._attribute_cache) >= _MAX_CACHED_ATTRIBUTE_SETS:
                self._attribute_cache.clear()
            self._attribute_cache[key] = found
        return found

    def start(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        stream: bool = False,
        operation: str | None = None,
        default_model: str | None = None,
        count_tokens: TokenCounter | None = None,
        kind: SpanKind = SpanKind.CLIENT,
        parent: Context | None = None,
        span_attributes: Mapping[str, AttributeValue] | None = None,
        metric_attributes: Mapping[str, AttributeValue] | None = None,
        on_end: Callable[[EndedCall], None] | None = None,
    ) -> CallRecord | None:
        """Open the span of one inference call; None (no telemetry) if anything goes wrong.

        Args:
            path: the endpoint (``/v1/chat/completions``, ``/v1/messages``...); decides the operation
                (see :func:`operation_for`) unless ``operation`` is given.
            body: the parsed JSON request body, or None when it could not be parsed.
            stream: the call streams its answer (``gen_ai.request.stream``).
            default_model: the model to name when the body names none (the server's model).
            count_tokens: counts text tokens with the server's tokenizer; None: counts that need it are left out.
            kind: CLIENT for the client; SERVER for a gateway's own request.
            parent: the context to start the span in (a gateway: :func:`context_from_headers`).
            span_attributes: extra attributes set at span start (e.g. ``user_agent.original``).
            metric_attributes: extra low-cardinality attributes put on every metric of this call.
            on_end: called once with an :class:`EndedCall` after the span ended and metrics were recorded.
        """
        try:
            return CallRecord(
                self, path, body if isinstance(body, Mapping) else None, stream=stream,
                operation=operation or operation_for(path) or "unknown", default_model=default_model,
                count_tokens=count_tokens, kind=kind, parent=parent, span_attributes=span_attributes,
                metric_attributes=metric_attributes, on_end=on_end,
            )
        except Exception:  # noqa: BLE001 - telemetry must never break the call
            logger.debug("llamatelemetry: could not start telemetry for %s", path, exc_info=True)
            return None
