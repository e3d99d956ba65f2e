"""The client's telemetry: a :class:`~llamatelemetry.telemetry.recorder.Recorder` for the client's server.

Everything per call lives in :class:`~llamatelemetry.telemetry.call.CallRecord`; turning a client's
telemetry on or off is :func:`llamatelemetry.instrument` / :func:`llamatelemetry.uninstrument`.
"""

from __future__ import annotations

from opentelemetry import metrics, trace

from .instruments import MetricAttributes
from .recorder import DEFAULT_CONTENT_LIMIT, Recorder, capture_content_from_env, server_address

__all__ = ["DEFAULT_CONTENT_LIMIT", "MetricAttributes", "Telemetry", "capture_content_from_env"]


class Telemetry(Recorder):
    """The recorder of one client: its server address and port come from the client's base URL.

    Example::

        telemetry = Telemetry("http://127.0.0.1:8080")
        record = telemetry.start("/v1/chat/completions", {"model": "m", "messages": []})
    """

    def __init__(
        self,
        base_url: str,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        content_limit: int = DEFAULT_CONTENT_LIMIT,
    ) -> None:
        host, port = server_address(base_url)
        super().__init__(server_address=host, server_port=port, tracer_provider=tracer_provider,
                         meter_provider=meter_provider, capture_content=capture_content, content_limit=content_limit)
