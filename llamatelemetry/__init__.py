"""llamatelemetry: observability for llama.cpp's llama-server.

* :class:`LlamaCppClient` / :class:`AsyncLlamaCppClient`: typed clients for every endpoint,
  with an OpenTelemetry span and metrics per inference call built in.
* :func:`configure`: set up OTLP export; :func:`instrument`: (re)configure a client's telemetry.
* ``llamatelemetry exporter``: the sidecar Prometheus exporter (see ``llamatelemetry.exporter``).

Example::

    import llamatelemetry
    llamatelemetry.configure(service_name="my-app")          # optional: OTLP export
    client = llamatelemetry.LlamaCppClient("http://127.0.0.1:8080")
    print(client.chat_completion(messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)
"""

from . import errors, types
from ._defaults import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, VERSION
from .client import AsyncLlamaCppClient, LlamaCppClient, instrument, uninstrument
from .streaming import AsyncStream, Stream
from .telemetry import configure

__version__ = VERSION

__all__ = [
    "API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL", "AsyncLlamaCppClient", "AsyncStream", "LlamaCppClient",
    "Stream", "configure", "errors", "instrument", "types", "uninstrument", "__version__",
]
