"""Defaults shared by every part of llamatelemetry, so no two parts disagree (e.g. on the port)."""

#: llamatelemetry's version (``llamatelemetry.__version__``; the instrumentation scope's version).
VERSION = "0.1.0"

#: Where llama-server listens unless told otherwise (its own default: 127.0.0.1:8080).
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: Environment variable read for the llama-server URL when none is passed.
BASE_URL_ENV = "LLAMA_SERVER_URL"
#: Environment variable read for the API key (the same one llama-server itself reads for ``--api-key``).
API_KEY_ENV = "LLAMA_API_KEY"
#: The sidecar exporter's default listen address and port.
EXPORTER_DEFAULT_HOST = "127.0.0.1"
EXPORTER_DEFAULT_PORT = 9183
#: The tracing gateway (``llamatelemetry proxy``): where agent tools point, and its admin port
#: (Prometheus /metrics, /api/recent, /health). 8089, not 8080: llama-server's own default.
PROXY_DEFAULT_HOST = "127.0.0.1"
PROXY_DEFAULT_PORT = 8089
PROXY_ADMIN_DEFAULT_PORT = 9184
