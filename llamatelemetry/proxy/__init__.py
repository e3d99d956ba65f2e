"""The tracing gateway (``llamatelemetry proxy``): agent tools talk to it instead of llama-server.

Every request is forwarded unchanged (:mod:`.forward`); inference calls get the same span and
GenAI metrics as :class:`~llamatelemetry.LlamaCppClient` produces, from the same recorder
(:mod:`.observe`), tagged with the calling tool (:mod:`.clients`). The admin port serves
Prometheus ``/metrics``, ``/api/recent`` and ``/health`` (:mod:`.admin`).

Needs ``pip install 'llamatelemetry[proxy]'``.

Example::

    from llamatelemetry.proxy import Gateway, GatewayConfig, Route

    with Gateway(GatewayConfig(routes=[Route(8089, "http://127.0.0.1:8080")])) as gateway:
        ...  # point clients at gateway.urls[0]
"""

from .clients import KNOWN_CLIENTS, client_name
from .gateway import Gateway, GatewayConfig, Route

__all__ = ["Gateway", "GatewayConfig", "KNOWN_CLIENTS", "Route", "client_name"]
