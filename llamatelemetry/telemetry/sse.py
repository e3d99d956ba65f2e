"""The one reader of llama-server's server-sent events, for the client's streams and the gateway alike.

llama-server sends one ``data:`` line per event (Anthropic streams add an ``event:`` line before
it, which the JSON's own ``type`` repeats), ``: ping`` comment lines, ``data: [DONE]`` at the end
of an OpenAI-style stream, and an error as ``error:`` (or ``data:``) with an ``error`` object.
:func:`decode_sse_line` reads one line; :class:`SSEDecoder` reads raw bytes as they arrive (a
gateway relaying them), splitting lines across reads.

Example::

    decoder = SSEDecoder("/v1/chat/completions")
    events = [*decoder.feed(b'data: {"choices": []}\\n\\ndata: [DO'), *decoder.feed(b"NE]\\n\\n")]
    assert events == [{"choices": []}, DONE]
"""

from __future__ import annotations

import json
from typing import Any, Final, Iterator, Union

from .. import errors

__all__ = ["DONE", "Done", "SSEDecoder", "SSEEvent", "decode_sse_line"]


class Done:
    """The type of :data:`DONE`: the server's own end of an OpenAI-style stream (``data: [DONE]``)."""

    def __repr__(self) -> str:
        return "DONE"


#: What :func:`decode_sse_line` returns for ``data: [DONE]``.
DONE: Final = Done()

#: One decoded event: the JSON object of a ``data:`` line, or :data:`DONE`.
SSEEvent = Union[dict[str, Any], Done]


def decode_sse_line(line: str, path: str) -> SSEEvent | None:
    """The JSON object of one SSE line, :data:`DONE` for ``[DONE]``, or None for other lines.

    Raises :class:`~llamatelemetry.errors.ResponseDecodeError` for a payload that is not a JSON
    object, and :class:`~llamatelemetry.errors.APIStatusError` for an error event.

    Example::

        decode_sse_line('data: {"type": "message_stop"}', "/v1/messages")  # {"type": "message_stop"}
    """
    if not line.startswith("data:"):
        if line.startswith("error:"):
            line = "data:" + line[6:]
        else:
            return None  # blank separator, "event: ...", ": ping"
    payload = line[5:].strip()
    if payload == "[DONE]":
        return DONE
    try:
        data = json.loads(payload)
    except ValueError:
        raise errors.ResponseDecodeError(
            f"llama-server sent a malformed stream event on {path}: {payload[:200]!r}; "
            "check that base_url points at llama-server and no proxy rewrites the stream"
        ) from None
    if not isinstance(data, dict):
        raise errors.ResponseDecodeError(f"llama-server sent a stream event that is not a JSON object on {path}: {payload[:200]!r}")
    if "error" in data and "choices" not in data:
        err = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
        code = err.get("code")
        status = code if isinstance(code, int) else 500
        raise errors.APIStatusError(
            f"llama-server reported an error mid-stream on {path}: {err.get('message')}",
            status_code=status, url=path, body=data,
            code=status, type=err.get("type"), server_message=err.get("message"),
        )
    return data


class SSEDecoder:
    """Decodes SSE bytes as they arrive, keeping a partial line for the next read (see module docs)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._partial = b""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line held until its end arrives (callers bound it, e.g. the gateway's LineGuard)."""
        return len(self._partial)

    def feed(self, raw: bytes) -> Iterator[SSEEvent]:
        """The events completed by ``raw``, one at a time: an error event raises (as :func:`decode_sse_line`)
        only when reached, after the events before it."""
        lines = (self._partial + raw).split(b"\n")
        self._partial = lines.pop()  # now, not when iterated: the next read continues from here either way
        return self._events(lines)

    def _events(self, lines: list[bytes]) -> Iterator[SSEEvent]:
        for line in lines:
            event = decode_sse_line(line.decode("utf-8").rstrip("\r"), self.path)
            if event is not None:
                yield event
