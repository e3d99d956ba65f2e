"""The recorder: one span and its GenAI metrics per inference call, for the client and the gateway alike.

Everything here works on parsed JSON: a request path and body, then either a response body
(dict or typed result) or the stream's events one by one (dicts), then an end. The client
(:class:`~llamatelemetry.LlamaCppClient`) and ``llamatelemetry proxy`` feed exactly this code,
so a fix to an attribute or a count lands once. The pieces: :mod:`.outcome` (what a call
produced), :mod:`.attributes` (span attributes), :mod:`.instruments` (metrics), :mod:`.call`
(one call's lifecycle).

Example (what a gateway does for one request)::

    recorder = Recorder(server_address="127.0.0.1", server_port=8080, server_metrics=True)
    record = recorder.start("/v1/chat/completions", body, stream=True, kind=SpanKind.SERVER,
                            side_requests=AsyncSideRequests(lookups.count_tokens),
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
from urllib.parse import urlsplit
from typing import Any, Callable, Mapping

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from .._defaults import VERSION
from .accumulate import Accumulator, accumulator_for
from . import semconv as sc
from .agent_record import AgentInstruments
from .attributes import ContentCapture
from .call import AsyncSideRequests, CallRecord, SideRequests, SyncSideRequests
from .instruments import Instruments, MetricAttributes
from .outcome import EndedCall, Outcome, error_type_of, model_label, outcome_of_json

__all__ = [
    "Accumulator", "AsyncSideRequests", "CallRecord", "EndedCall", "MetricAttributes", "Outcome", "Recorder",
    "SideRequests", "SyncSideRequests", "accumulator_for", "context_from_headers", "server_address", "error_type_of", "model_label", "operation_for",
    "outcome_of_json",
]

logger = logging.getLogger("llamatelemetry.telemetry")

#: Default size limit for captured prompt/response content (characters per attribute).
DEFAULT_CONTENT_LIMIT = 16_384

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


def server_address(url: str) -> tuple[str, int]:
    """The host and port of a server URL, for the ``server.address``/``server.port`` attributes.

    Example::

        server_address("http://127.0.0.1:8080/v1")  # ("127.0.0.1", 8080)
    """
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def context_from_headers(headers: Mapping[str, str]) -> Context:
    """The trace context an incoming request carries (``traceparent``/``tracestate``), for ``parent=``.

    Example::

        record = recorder.start(path, body, kind=SpanKind.SERVER, parent=context_from_headers(request.headers))
    """
    return propagate.extract(headers)


def capture_content_from_env() -> bool:
    """True when ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` opts in to recording content.

    Example::

        recorder = Recorder(server_address="127.0.0.1", server_port=8080, capture_content=capture_content_from_env())
    """
    value = os.environ.get(sc.CAPTURE_CONTENT_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on", "span_only", "span_and_event")


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
        self.tracer = trace.get_tracer(sc.INSTRUMENTATION_NAME, VERSION, tracer_provider, schema_url=sc.SCHEMA_URL)
        # Attributes known once per target: computed here, not per call.
        self.base_attributes: dict[str, AttributeValue] = {
            sc.PROVIDER: sc.PROVIDER_NAME,
            sc.SERVER_ADDRESS: server_address,
            sc.SERVER_PORT: server_port,
        }
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, VERSION, meter_provider, schema_url=sc.SCHEMA_URL)
        self.instruments = Instruments(meter, latest_semconv=self.latest_semconv, server_metrics=server_metrics,
                                       base_attributes=self.base_attributes)
        #: Queue wait, context, tool calls, drafts, prompt cache (llamatelemetry.telemetry.agent_record).
        self.agent = AgentInstruments(meter)

    def start(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        stream: bool = False,
        operation: str | None = None,
        default_model: str | None = None,
        side_requests: SideRequests | None = None,
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
            side_requests: the requests the telemetry may make to the server (made with
                :mod:`.lookups`): count text tokens with its tokenizer, look up the model's context size
                (``n_ctx``), and optionally the finisher to make them in; sync (:class:`SyncSideRequests`) or
                async (:class:`AsyncSideRequests`). None: counts that need a request are left out, and the
                context utilisation is recorded only once an overflow told ``n_ctx``.
            kind: CLIENT for the client; SERVER for a gateway's own request.
            parent: the context to start the span in (a gateway: :func:`context_from_headers`).
            span_attributes: extra attributes set at span start (e.g. ``user_agent.original``).
            metric_attributes: extra low-cardinality attributes put on every metric of this call.
            on_end: called once with an :class:`EndedCall` after the span ended and metrics were recorded.
        """
        try:
            return CallRecord(
                tracer=self.tracer, instruments=self.instruments, base_attributes=self.base_attributes,
                capture=ContentCapture(self.content_limit) if self.capture_content else None,
                path=path, body=body if isinstance(body, Mapping) else None, stream=stream,
                operation=operation or operation_for(path) or "unknown", default_model=default_model,
                side_requests=side_requests, kind=kind, parent=parent, span_attributes=span_attributes,
                metric_attributes=metric_attributes, on_end=on_end, agent=self.agent,
            )
        except Exception:  # noqa: BLE001 - telemetry must never break the call
            logger.debug("llamatelemetry: could not start telemetry for %s", path, exc_info=True)
            return None
