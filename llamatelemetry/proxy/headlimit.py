"""uvicorn's HTTP protocol with a bound on a request's head (request line plus headers).

uvicorn's C parser (httptools/llhttp) has no limit of its own on header size: a client sending an
endless header line makes the gateway hold it all (seen: a 50 MiB header was accepted and forwarded).
This protocol counts the bytes that arrive while a request's head is being read and, past
:data:`~.limits.MAX_HEADER_BYTES`, answers ``431`` and closes the connection. uvicorn's pure-Python
parser (h11, used when httptools is absent) has the same bound through ``h11_max_incomplete_event_size``.

Example::

    uvicorn.Config(app, http=http_protocol())
"""

from __future__ import annotations

import json
import logging

from .limits import MAX_HEADER_BYTES, human_bytes

log = logging.getLogger("llamatelemetry.proxy")

_MESSAGE = (f"llamatelemetry proxy: the request line and headers are larger than {human_bytes(MAX_HEADER_BYTES)}; "
            f"llama-server allows 8 KiB per header line")
_BODY = json.dumps({"error": {"code": 431, "message": _MESSAGE, "type": "invalid_request_error"}}).encode()
#: A raw response: the request was never parsed, so neither its path (dialect) nor a span exist.
RESPONSE_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def http_protocol() -> type | str:
    """The protocol class for ``uvicorn.Config(http=...)``: httptools with the bound, or h11 (bounded itself)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, bounded by h11_max_incomplete_event_size
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _reading_head = True
        _head_bytes = 0
        _refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:  # closing: what else arrives is dropped
                return
            if self._reading_head:
                # Counts every byte that arrives before the head is complete (a body's first bytes in
                # the same packet too): a bound, not an exact size.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEADER_BYTES:
                    log.debug("closed a connection whose request head passed %d bytes", MAX_HEADER_BYTES)
                    self._refused = True
                    self.transport.write(RESPONSE_431)
                    self.transport.close()
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._reading_head = True  # the next request on this connection starts with its head

    return BoundedHttpToolsProtocol
