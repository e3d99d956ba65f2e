"""The client's telemetry: a :class:`~llamatelemetry.telemetry.recorder.Recorder` for the client's server.

Everything per call lives in :class:`~llamatelemetry.telemetry.recorder.CallRecord`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from .instruments import MetricAttributes
from .recorder import DEFAULT_CONTENT_LIMIT, Recorder, capture_content_from_env

if TYPE_CHECKING:
    from .._base import Settings

__all__ = ["DEFAULT_CONTENT_LIMIT", "MetricAttributes", "Telemetry", "capture_content_from_env", "instrument", "uninstrument"]

logger = logging.getLogger("llamatelemetry.telemetry")


class Telemetry(Recorder):
    """The recorder of one client: its server address and port come from the client's settings."""

    def __init__(
        self,
        settings: "Settings",
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        content_limit: int = DEFAULT_CONTENT_LIMIT,
    ) -> None:
        super().__init__(server_address=settings.host, server_port=settings.port, tracer_provider=tracer_provider,
                         meter_provider=meter_provider, capture_content=capture_content, content_limit=content_limit,
                         server_url=settings.base_url, api_key=settings.api_key)
        self.settings = settings


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
