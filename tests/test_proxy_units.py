"""The gateway's pure parts: client identification, dialect errors, the max_tokens guard, headers, routes."""

from __future__ import annotations

import json

import pytest

from llamatelemetry.proxy.clients import KNOWN_CLIENTS, client_name
from llamatelemetry.proxy.dialect import error_body, stream_error_event
from llamatelemetry.proxy.endpoints import http_route
from llamatelemetry.proxy.guard import raise_max_tokens
from llamatelemetry.proxy.headers import request_headers, response_headers
from llamatelemetry.proxy.recent import RecentRequest, RecentRequests


@pytest.mark.parametrize("user_agent, expected", [
    ("claude-cli/2.0.14 (external, cli)", "claude-code"),
    ("Aider/0.86", "aider"),
    ("Continue/1.2.8", "continue"),
    ("OpenAI/Python 1.99.1", "openai-python"),
    ("AsyncOpenAI/Python 1.99.1", "openai-python"),
    ("Anthropic/Python 0.69.0", "anthropic-python"),
    ("AsyncAnthropic/Python 0.69.0", "anthropic-python"),
    ("curl/8.5.0", "curl"),
    ("Mozilla/5.0", "other"),
    (None, "other"),
])
def test_client_name_from_user_agent(user_agent, expected):
    assert client_name(user_agent) == expected
    assert expected in KNOWN_CLIENTS


def test_client_name_header_overrides_only_with_a_name():
    assert client_name("OpenAI/Python 1.0", "Aider") == "aider"
    assert client_name("OpenAI/Python 1.0", "my-agent.v2") == "my-agent.v2"
    # free text would explode metric cardinality: ignored, the User-Agent decides
    assert client_name("OpenAI/Python 1.0", "DROP TABLE users; --") == "openai-python"
    assert client_name("curl/8", "x" * 41) == "curl"


def test_error_bodies_in_each_dialect():
    anthropic = json.loads(error_body("/v1/messages", 502, "upstream http://u:1 down"))
    assert anthropic == {"type": "error", "error": {"type": "api_error", "message": "upstream http://u:1 down"}}
    assert json.loads(error_body("/v1/messages/count_tokens", 502, "m"))["type"] == "error"
    openai = json.loads(error_body("/v1/chat/completions", 502, "m"))
    assert openai == {"error": {"code": 502, "message": "m", "type": "server_error"}}
    assert "error" in json.loads(error_body("/slots", 502, "m"))


def test_stream_error_events_in_each_dialect():
    event = stream_error_event("/v1/messages", 502, "cut").decode()
    assert event.startswith("event: error\ndata: ") and event.endswith("\n\n")
    assert json.loads(event.split("data: ", 1)[1])["error"]["message"] == "cut"
    event = stream_error_event("/v1/chat/completions", 502, "cut").decode()
    assert event.startswith("data: ") and json.loads(event[6:])["error"]["code"] == 502


@pytest.mark.parametrize("path, body, floor, raised_from, after", [
    ("/v1/chat/completions", {"max_tokens": 64}, 1500, 64, {"max_tokens": 1500}),
    ("/v1/chat/completions", {"max_completion_tokens": 10}, 100, 10, {"max_completion_tokens": 100}),
    ("/v1/messages", {"max_tokens": 64}, 1500, 64, {"max_tokens": 1500}),
    ("/v1/chat/completions", {"max_tokens": 2000}, 1500, None, {"max_tokens": 2000}),  # already enough
    ("/v1/chat/completions", {}, 1500, None, {}),  # absent: no limit, leave it
    ("/v1/completions", {"max_tokens": 8}, 1500, None, {"max_tokens": 8}),  # not chat
    ("/v1/chat/completions", {"max_tokens": True}, 1500, None, {"max_tokens": True}),  # not a number
])
def test_min_max_tokens_guard(path, body, floor, raised_from, after):
    assert raise_max_tokens(body, path, floor) == raised_from
    assert body == after


def test_hop_by_hop_headers_stay_on_their_hop():
    incoming = [(b"Host", b"proxy:8089"), (b"Connection", b"keep-alive, X-Secret-Hop"), (b"X-Secret-Hop", b"1"),
                (b"Content-Length", b"2"), (b"Authorization", b"Bearer k"), (b"X-Multi", b"a"), (b"X-Multi", b"b"),
                (b"TE", b"trailers"), (b"Expect", b"100-continue")]
    assert request_headers(incoming) == [(b"authorization", b"Bearer k"), (b"x-multi", b"a"), (b"x-multi", b"b")]
    upstream = [(b"Server", b"llama.cpp"), (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"),
                (b"Content-Type", b"text/event-stream"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    assert response_headers(upstream) == [(b"server", b"llama.cpp"), (b"content-type", b"text/event-stream"),
                                          (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


@pytest.mark.parametrize("path, route", [
    ("/v1/chat/completions", "/v1/chat/completions"), ("/v1/messages/", "/v1/messages"),
    ("/slots/3", "/slots/{id_slot}"), ("/slots", "/slots"), ("/health", "/health"),
    ("/wp-admin/setup.php", "other"), ("/v1/unknown", "other"),
])
def test_http_route_is_bounded(path, route):
    assert http_route(path) == route


def test_recent_requests_ring_buffer():
    recent = RecentRequests(limit=3)
    for i in range(5):
        recent.add(RecentRequest(time=float(i), client="curl", method="GET", endpoint=f"/{i}", upstream="u"))
    assert [r.endpoint for r in recent.newest()] == ["/4", "/3", "/2"]
    assert [r["endpoint"] for r in recent.as_json(2)["requests"]] == ["/4", "/3"]
    with pytest.raises(ValueError):
        RecentRequests(limit=0)
