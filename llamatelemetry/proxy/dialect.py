"""Errors the gateway itself produces, in the dialect of the endpoint that was called.

A client only understands errors shaped like its API's: the Anthropic SDK (Claude Code)
reads ``{"type": "error", "error": {"type", "message"}}``, the OpenAI SDK (aider, Continue)
reads ``{"error": {"message", "type", "code"}}`` — which is also llama-server's own shape, so
llama.cpp's native endpoints get it too. Errors llama-server sends are forwarded untouched;
these are only for what the gateway has to say itself (upstream down, upstream cut mid-stream).

Example::

    >>> error_body("/v1/messages", 502, "upstream http://127.0.0.1:8080 is down")
    b'{"type":"error","error":{"type":"api_error","message":"upstream http://127.0.0.1:8080 is down"}}'
"""

from __future__ import annotations

import json
from enum import Enum


class Dialect(str, Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def dialect_of(path: str) -> Dialect:
    """The API dialect of a request path (Anthropic's ``/v1/messages*``, else OpenAI/llama.cpp)."""
    return Dialect.ANTHROPIC if path.rstrip("/").startswith(("/v1/messages", "/messages")) else Dialect.OPENAI


def _error_object(dialect: Dialect, status: int, message: str) -> dict[str, object]:
    if dialect is Dialect.ANTHROPIC:
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    return {"error": {"code": status, "message": message, "type": "server_error" if status >= 500 else "invalid_request_error"}}


def error_body(path: str, status: int, message: str) -> bytes:
    """The JSON body of an error response for ``path`` (compact, UTF-8)."""
    return json.dumps(_error_object(dialect_of(path), status, message), separators=(",", ":"), ensure_ascii=False).encode()


def stream_error_event(path: str, status: int, message: str) -> bytes:
    """An SSE event that ends a stream with an error, as each SDK expects it mid-stream.

    The Anthropic SDK raises on an ``event: error``; the OpenAI SDK raises on a ``data:`` whose
    JSON has an ``error`` key.
    """
    dialect = dialect_of(path)
    data = json.dumps(_error_object(dialect, status, message), separators=(",", ":"), ensure_ascii=False)
    if dialect is Dialect.ANTHROPIC:
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()
