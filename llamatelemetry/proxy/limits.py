"""What the gateway accepts from clients and keeps in memory: the limits, and reading a body within them.

The gateway is the one component every agent's traffic passes through, so no client may make it
grow: a request body is read only up to ``max_body_bytes`` (checked on ``Content-Length`` before a
byte is read, and again while a chunked body arrives); past it the client gets a ``413`` in its
dialect and the upstream request is never started. At most ``max_concurrent`` requests are
handled at once (past it a ``503`` in dialect). Both are flags of ``llamatelemetry proxy``
(``--max-body-size``, ``--max-concurrent``).

The default body limit is llama-server's own: cpp-httplib's ``CPPHTTPLIB_PAYLOAD_MAX_LENGTH``
(``100 * 1024 * 1024``, in ``vendor/cpp-httplib/httplib.h`` of the pinned b11434 source; the
server never calls ``set_payload_max_length``), so the gateway refuses exactly what llama-server
would refuse, before the bytes cross a second socket.

Example::

    gate = ConcurrencyGate(2)
    with gate.slot() as admitted:
        ...  # admitted is False when two requests are already in flight
    body = await read_body(scope, receive, limit=DEFAULT_MAX_BODY_BYTES)  # raises BodyTooLargeError
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # only types: the CLI imports this module's defaults without the [proxy] extra
    from starlette.types import Receive, Scope

#: llama-server's own request-body limit (cpp-httplib ``CPPHTTPLIB_PAYLOAD_MAX_LENGTH``, 100 MiB).
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
#: Requests handled at once. Far above what llama-server's slots serve (each agent keeps a few
#: connections), low enough that a flood cannot hold thousands of half-read bodies.
DEFAULT_MAX_CONCURRENT = 1024
#: A non-streamed answer up to this size is held to be parsed for telemetry (a real one is a few KiB;
#: embeddings of a large batch a few MiB). A larger one is relayed as it arrives, not accounted.
MAX_ACCOUNTED_BODY_BYTES = 16 * 1024 * 1024
#: An SSE line (one event's ``data:``) longer than this is not decoded for telemetry: the stream is
#: still relayed byte for byte, the span ends without the stream's usage. Real events are < 10 KiB.
MAX_SSE_LINE_BYTES = 1024 * 1024
#: Request line plus headers of one request. cpp-httplib allows 8 KiB per line
#: (``CPPHTTPLIB_HEADER_MAX_LENGTH``) and 100 header fields; 1 MiB is far above any real client.
MAX_HEADER_BYTES = 1024 * 1024

__all__ = [
    "BodyTooLargeError", "ClientLeftError", "ConcurrencyGate", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONCURRENT", "GatewayBusyError",
    "MAX_ACCOUNTED_BODY_BYTES", "MAX_HEADER_BYTES", "MAX_SSE_LINE_BYTES", "LineGuard", "human_bytes", "read_body",
]


class BodyTooLargeError(Exception):
    """A request body over ``--max-body-size`` (its ``error.type``); the gateway answered 413."""

    def __init__(self, limit: int, declared: int | None) -> None:
        self.limit = limit
        self.declared = declared
        size = f"of {human_bytes(declared)} " if declared is not None else ""
        super().__init__(f"the request body {size}is larger than the gateway's limit of {human_bytes(limit)} "
                         f"({limit} bytes, llama-server's own default); raise it with --max-body-size "
                         f"or LLAMATELEMETRY_PROXY_MAX_BODY_SIZE")


class ClientLeftError(Exception):
    """The client disconnected while sending its request body."""


class GatewayBusyError(Exception):
    """More than ``--max-concurrent`` requests at once (its ``error.type``); the gateway answered 503."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the gateway is handling its maximum of {limit} concurrent requests; retry shortly, "
                         f"or raise --max-concurrent (LLAMATELEMETRY_PROXY_MAX_CONCURRENT)")


def human_bytes(n: int) -> str:
    """``104857600`` -> ``'100 MiB'`` (exact binary units when they fit, else bytes).

    Example::

        >>> human_bytes(100 * 1024 * 1024), human_bytes(1500)
        ('100 MiB', '1500 bytes')
    """
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def declared_length(scope: "Scope") -> int | None:
    """The request's ``Content-Length`` (None when absent or not a number: then the body is chunked or empty)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(scope: "Scope", receive: "Receive", *, limit: int) -> bytes:
    """The whole request body, or :class:`BodyTooLargeError` as soon as it is known to exceed ``limit``.

    Raises :class:`ClientLeftError` if the client leaves while sending it.
    """
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLargeError(limit, declared)  # before reading a byte
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientLeftError()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:  # a chunked body (or one longer than it declared): stop at the limit
                raise BodyTooLargeError(limit, declared)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ConcurrencyGate:
    """Counts requests in flight across every route of one gateway (one event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Yield True (and hold a place) when under the limit, else False."""
        if self.in_flight >= self.limit:
            yield False
            return
        self.in_flight += 1
        try:
            yield True
        finally:
            self.in_flight -= 1


class LineGuard:
    """Tells whether relayed SSE bytes may still go to telemetry: not once one line exceeds ``cap``.

    The telemetry buffers a partial line until its newline; an upstream line that never ends would
    grow that buffer without bound. The relay itself never stops.

    Example::

        >>> guard = LineGuard(cap=8)
        >>> guard.admit(b"data: 1\\n"), guard.admit(b"x" * 9), guard.admit(b"\\n")
        (True, False, False)
    """

    def __init__(self, cap: int = MAX_SSE_LINE_BYTES) -> None:
        self.cap = cap
        self.open_line = 0
        self.gave_up = False

    def admit(self, chunk: bytes) -> bool:
        if self.gave_up:
            return False
        newline = chunk.rfind(b"\n")
        self.open_line = len(chunk) - newline - 1 if newline >= 0 else self.open_line + len(chunk)
        if self.open_line > self.cap:
            self.gave_up = True
        return not self.gave_up
