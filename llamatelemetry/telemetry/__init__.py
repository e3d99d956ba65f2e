"""OpenTelemetry spans and metrics for llamatelemetry clients and the gateway (see :mod:`.semconv` for every name)."""

from .configure import configure
from .instrumentation import Telemetry
from .recorder import Recorder

__all__ = ["Recorder", "Telemetry", "configure"]
