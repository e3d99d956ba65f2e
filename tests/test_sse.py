"""The one SSE decoder (client streams and the gateway): events split across reads, [DONE], pings, errors."""

from __future__ import annotations

import pytest

from llamatelemetry import errors
from llamatelemetry.telemetry.sse import DONE, SSEDecoder, decode_sse_line


def test_events_split_across_reads_come_out_whole_and_in_order():
    decoder = SSEDecoder("/v1/chat/completions")
    got = [*decoder.feed(b'data: {"a": 1}\r\n\r\n: ping\n\ndata: {"b"'), *decoder.feed(b': 2}\n\ndata: [DO'),
           *decoder.feed(b"NE]\n\n")]
    assert got == [{"a": 1}, {"b": 2}, DONE]


def test_an_error_event_raises_after_the_events_before_it():
    decoder = SSEDecoder("/v1/messages")
    events = decoder.feed(b'event: x\ndata: {"type": "ping"}\n\nerror: {"error": {"code": 400, "message": "too long"}}\n\n')
    assert next(events) == {"type": "ping"}
    with pytest.raises(errors.APIStatusError) as info:
        next(events)
    assert info.value.status_code == 400


@pytest.mark.parametrize("line", ["data: [1, 2]", "data: {not json"])
def test_a_payload_that_is_not_a_json_object_is_a_decode_error(line):
    with pytest.raises(errors.ResponseDecodeError):
        decode_sse_line(line, "/v1/chat/completions")
