"""Which headers cross the gateway (RFC 9110 §7.6.1: hop-by-hop headers stay on their hop)."""

from __future__ import annotations

from typing import Iterable

#: Headers that describe one connection, not the message: never forwarded, either way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
})
# Also not forwarded upstream: httpx sets Host and Content-Length for the upstream request
# itself (the body may be re-encoded by --min-max-tokens), and "Expect: 100-continue" was
# already answered by our own server when it read the body.
_NOT_UPSTREAM = HOP_BY_HOP | {b"host", b"content-length", b"expect"}

RawHeaders = list[tuple[bytes, bytes]]


def _listed_in_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names a sender declared hop-by-hop in its ``Connection`` header."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return names


def request_headers(incoming: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """The client's headers as sent upstream (order and repeats kept, names lower-case)."""
    incoming = list(incoming)
    drop = _NOT_UPSTREAM | _listed_in_connection(incoming)
    return [(name.lower(), value) for name, value in incoming if name.lower() not in drop]


def response_headers(upstream: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """llama-server's response headers as sent to the client (order and repeats kept)."""
    upstream = list(upstream)
    drop = HOP_BY_HOP | _listed_in_connection(upstream)
    return [(name.lower(), value) for name, value in upstream if name.lower() not in drop]
