"""OpenTelemetry spans and metrics for llamatelemetry clients (see :mod:`.semconv` for every name)."""

from .configure import configure
from .instrumentation import Telemetry, instrument, uninstrument

__all__ = ["Telemetry", "configure", "instrument", "uninstrument"]
