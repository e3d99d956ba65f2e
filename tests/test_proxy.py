"""`llamatelemetry proxy` with the official openai and anthropic SDKs against a real llama-server.

Every count asserted here is the server's own (the SDK's ``usage``) or the scripted model's script
(``REASONING_TOKENS``: 22 reasoning tokens, its thinking markers included), read back from the
gateway's SERVER span.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

from llamatelemetry.provision.model import ANSWER_TEXT, REASONING_TOKENS, THINKING_COMPLETION_TOKENS
from llamatelemetry.telemetry import semconv as sc
from proxy_helpers import TcpTap, running_gateway

HI = [{"role": "user", "content": "Say hello."}]
REASONING = REASONING_TOKENS  # reasoning text plus its <think> markers


@pytest.fixture(scope="module")
def proxy(full_server):
    with running_gateway(full_server.base_url) as gw:
        yield gw


@pytest.fixture()
def fresh(proxy):
    proxy.exporter.clear()
    return proxy


def _oai(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-secret-never-recorded", max_retries=0)


def _anth(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-secret-never-recorded", max_retries=0)


def _no_secret_anywhere(spans) -> None:
    for span in spans:
        assert "sk-secret" not in json.dumps(dict(span.attributes), default=str)


def test_openai_chat(fresh):
    resp = _oai(fresh).chat.completions.create(model="scripted", messages=HI, max_tokens=64)
    assert resp.choices[0].message.content == ANSWER_TEXT
    span = fresh.wait_for_spans(1)[0]
    a = span.attributes
    assert span.kind == SpanKind.SERVER and span.name == "chat scripted"
    assert a[sc.USAGE_INPUT_TOKENS] == resp.usage.prompt_tokens
    assert a[sc.USAGE_OUTPUT_TOKENS] == resp.usage.completion_tokens == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == resp.usage.prompt_tokens_details.cached_tokens
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING
    assert a[sc.CLIENT_NAME] == "openai-python" and a[sc.USER_AGENT_ORIGINAL].startswith("OpenAI/Python")
    assert a[sc.RESPONSE_FINISH_REASONS] == ("stop",)
    assert sc.INPUT_MESSAGES not in a and sc.OUTPUT_MESSAGES not in a  # content capture is opt-in
    _no_secret_anywhere([span])
    assert fresh.histogram_count(sc.METRIC_SERVER_REQUEST_DURATION, **{sc.CLIENT_NAME: "openai-python"}) >= 1


def test_openai_stream_with_usage(fresh):
    stream = _oai(fresh).chat.completions.create(model="scripted", messages=HI, max_tokens=64, stream=True,
                                                 stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text == ANSWER_TEXT and usage.completion_tokens == THINKING_COMPLETION_TOKENS
    a = fresh.wait_for_spans(1)[0].attributes
    assert a[sc.REQUEST_STREAM] is True
    assert a[sc.USAGE_INPUT_TOKENS] == usage.prompt_tokens and a[sc.USAGE_OUTPUT_TOKENS] == usage.completion_tokens
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING
    assert 0 < a[sc.RESPONSE_TIME_TO_FIRST_CHUNK] < a[sc.TIME_TO_FIRST_CONTENT]
    assert a[sc.STREAM_CUT_SHORT] is False and a[sc.STREAM_CHUNKS] == len(chunks)
    assert fresh.histogram_count(sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN, **{sc.CLIENT_NAME: "openai-python"}) >= 1


def test_openai_stream_is_not_changed_by_the_proxy(fresh):
    """No include_usage asked: the gateway must not add one (it never changes a request)."""
    chunks = list(_oai(fresh).chat.completions.create(model="scripted", messages=HI, max_tokens=64, stream=True))
    assert all(c.usage is None for c in chunks)
    a = fresh.wait_for_spans(1)[0].attributes
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING and a[sc.STREAM_CUT_SHORT] is False
    # Token counts all the same, from the last chunk's llama.cpp timings.
    timings = chunks[-1].model_extra["timings"]
    assert a[sc.USAGE_OUTPUT_TOKENS] == timings["predicted_n"] == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_INPUT_TOKENS] == timings["prompt_n"] + timings["cache_n"]
    assert a[sc.USAGE_CACHE_READ_INPUT_TOKENS] == timings["cache_n"]


def test_anthropic_messages(fresh):
    msg = _anth(fresh).messages.create(model="scripted", max_tokens=64, messages=HI)
    assert [b.type for b in msg.content] == ["thinking", "text"] and msg.content[1].text == ANSWER_TEXT
    span = fresh.wait_for_spans(1)[0]
    a = span.attributes
    cached = msg.usage.cache_read_input_tokens or 0
    assert span.kind == SpanKind.SERVER and a[sc.CLIENT_NAME] == "anthropic-python"
    assert a[sc.USAGE_INPUT_TOKENS] == msg.usage.input_tokens + cached  # semconv input includes cache reads
    assert a[sc.USAGE_OUTPUT_TOKENS] == msg.usage.output_tokens
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING
    assert a[sc.RESPONSE_FINISH_REASONS] == ("end_turn",)
    _no_secret_anywhere([span])


def test_anthropic_messages_stream(fresh):
    with _anth(fresh).messages.stream(model="scripted", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER_TEXT
    a = fresh.wait_for_spans(1)[0].attributes
    assert a[sc.USAGE_OUTPUT_TOKENS] == final.usage.output_tokens == THINKING_COMPLETION_TOKENS
    assert a[sc.USAGE_INPUT_TOKENS] == final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING
    assert a[sc.STREAM_CUT_SHORT] is False and a[sc.RESPONSE_TIME_TO_FIRST_CHUNK] > 0
    assert fresh.histogram_count(sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN, **{sc.CLIENT_NAME: "anthropic-python"}) >= 1


def test_openai_embeddings(fresh):
    resp = _oai(fresh).embeddings.create(model="scripted", input="hello world")
    assert len(resp.data[0].embedding) > 0
    a = fresh.wait_for_spans(1)[0].attributes
    assert a[sc.OPERATION_NAME] == "embeddings" and a[sc.USAGE_INPUT_TOKENS] == resp.usage.prompt_tokens > 0


def test_context_overflow_400_passes_through_untouched(fresh, full_server):
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi " * 3000}], "max_tokens": 8}
    direct = httpx.post(full_server.base_url + "/v1/chat/completions", json=body)
    with pytest.raises(openai.BadRequestError) as caught:
        _oai(fresh).chat.completions.create(**body)
    assert caught.value.status_code == 400 == direct.status_code
    assert caught.value.response.content == direct.content  # byte for byte llama-server's error
    span = fresh.wait_for_spans(1)[0]
    # A context overflow is its own error.type (llama-server's), not just "400".
    overflow = "exceed_context_size_error"
    assert span.attributes[sc.ERROR_TYPE] == overflow and span.attributes[sc.CLIENT_NAME] == "openai-python"
    counted = [p for p in fresh.points("llamatelemetry.proxy.requests")
               if p.attributes.get(sc.ERROR_TYPE) == overflow and p.attributes.get(sc.CLIENT_NAME) == "openai-python"]
    assert counted and counted[0].attributes["http.response.status_code"] == 400
    recent = fresh.gateway.recent.newest(1)[0]
    assert recent.status == 400 and recent.error_type == overflow and recent.client == "openai-python"


def test_non_streamed_bodies_are_byte_identical(full_server):
    """What llama-server sent (seen on the wire by a TCP tap) is exactly what the client gets."""
    host, port = full_server.host, full_server.port
    with TcpTap(host, port) as tap, running_gateway(tap.url) as gw:
        cases = [
            ("POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 64}),
            ("POST", "/v1/messages", {"messages": HI, "max_tokens": 64}),
            ("POST", "/v1/embeddings", {"input": "hi"}),
            ("POST", "/tokenize", {"content": "Hello there"}),
            ("GET", "/props", None),
            ("GET", "/v1/models", None),
            ("GET", "/no/such/path?x=1&y=%20z", None),
        ]
        with httpx.Client(headers={"accept-encoding": "identity"}) as client:
            for method, path, body in cases:
                tap.reset()
                resp = client.request(method, gw.url + path, json=body)
                assert resp.content in tap.response_bodies(), path
        assert b"GET /no/such/path?x=1&y=%20z HTTP/1.1" in tap.to_server  # query string byte for byte


def test_unparseable_request_is_still_forwarded(fresh, full_server):
    garbage = b'{"messages": [ this is not json'
    headers = {"content-type": "application/json"}
    direct = httpx.post(full_server.base_url + "/v1/chat/completions", content=garbage, headers=headers)
    via = httpx.post(fresh.url + "/v1/chat/completions", content=garbage, headers=headers)
    assert via.status_code == direct.status_code >= 400 and via.content == direct.content
    span = fresh.wait_for_spans(1)[0]
    assert span.attributes[sc.ERROR_TYPE] == str(direct.status_code)


def test_joins_incoming_trace_and_passes_context_upstream(full_server):
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with TcpTap(full_server.host, full_server.port) as tap, running_gateway(tap.url) as gw:
        httpx.post(gw.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64},
                   headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "user-agent": "curl/8.5.0"})
        span = gw.wait_for_spans(1)[0]
        assert format(span.context.trace_id, "032x") == trace_id and format(span.parent.span_id, "016x") == parent_id
        assert span.attributes[sc.CLIENT_NAME] == "curl"
        sent = bytes(tap.to_server).decode("latin-1").lower()
        assert f"traceparent: 00-{trace_id}-{format(span.context.span_id, '016x')}-01" in sent
        assert parent_id not in sent  # replaced, not duplicated


def test_requests_without_a_model_are_named_by_the_server_model(full_server):
    """Like the client: a body without "model" gets the upstream's model (looked up once, in the background)."""
    with running_gateway(full_server.base_url) as gw:
        for sent in range(1, 30):  # the first request triggers the lookup; later ones use its answer
            httpx.post(gw.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64})
            span = gw.wait_for_spans(sent)[-1]
            if span.name != "chat":
                break
            time.sleep(0.1)
        assert span.name == "chat scripted" and span.attributes[sc.REQUEST_MODEL] == "scripted"


def test_client_name_header_overrides_user_agent(fresh):
    httpx.post(fresh.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64},
               headers={"user-agent": "OpenAI/Python 1.0", "x-client-name": "Aider"})
    assert fresh.wait_for_spans(1)[0].attributes[sc.CLIENT_NAME] == "aider"


def test_content_capture_is_opt_in(full_server):
    with running_gateway(full_server.base_url, capture_content=True) as gw:
        httpx.post(gw.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64})
        a = gw.wait_for_spans(1)[0].attributes
        assert "Say hello." in a[sc.INPUT_MESSAGES] and ANSWER_TEXT in a[sc.OUTPUT_MESSAGES]


def test_min_max_tokens_guard(full_server):
    small = {"messages": HI, "max_tokens": 8}
    with running_gateway(full_server.base_url) as gw:  # off by default: the budget runs out in the thinking
        resp = httpx.post(gw.url + "/v1/chat/completions", json=small).json()
        assert resp["choices"][0]["message"]["content"] == "" and resp["choices"][0]["finish_reason"] == "length"
        a = gw.wait_for_spans(1)[0].attributes
        assert a[sc.REASONING_BUDGET_EXHAUSTED] is True and "llamatelemetry.proxy.max_tokens_raised_from" not in a
        assert gw.wait_for_recent(1)[0].budget_exhausted is True
    with running_gateway(full_server.base_url, min_max_tokens=256) as gw:
        resp = httpx.post(gw.url + "/v1/chat/completions", json=small).json()
        assert resp["choices"][0]["message"]["content"] == ANSWER_TEXT
        msg = httpx.post(gw.url + "/v1/messages", json=small).json()
        assert msg["content"][-1]["text"] == ANSWER_TEXT
        spans = gw.wait_for_spans(2)
        for span in spans:
            assert span.attributes["llamatelemetry.proxy.max_tokens_raised_from"] == 8
            assert span.attributes[sc.REQUEST_MAX_TOKENS] == 256
        big = httpx.post(gw.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 300}).json()
        assert big["choices"][0]["message"]["content"] == ANSWER_TEXT
        assert "llamatelemetry.proxy.max_tokens_raised_from" not in gw.wait_for_spans(3)[-1].attributes


def test_admin_endpoints(fresh):
    # A stream too: the time-to-first-token histogram exists only once a stream was served (not left to other tests).
    for _ in _oai(fresh).chat.completions.create(model="scripted", messages=HI, max_tokens=64, stream=True):
        pass
    httpx.get(fresh.url + "/health", headers={"user-agent": "curl/8.5.0"})
    _oai(fresh).chat.completions.create(model="scripted", messages=HI, max_tokens=64)
    fresh.wait_for_spans(2)
    assert httpx.get(fresh.admin_url + "/health").text == "ok"
    items = httpx.get(fresh.admin_url + "/api/recent", params={"limit": 2}).json()["requests"]
    assert len(items) == 2
    newest, older = items
    assert set(newest) == {"time", "client", "method", "endpoint", "upstream", "model", "status", "stream", "input_tokens",
                           "output_tokens", "reasoning_tokens", "cached_tokens", "ttft_s", "duration_s",
                           "budget_exhausted", "error_type", "max_tokens_raised_from"}
    assert newest["client"] == "openai-python" and newest["endpoint"] == "/v1/chat/completions"
    assert newest["output_tokens"] == THINKING_COMPLETION_TOKENS and newest["reasoning_tokens"] == REASONING
    assert newest["status"] == 200 and newest["error_type"] is None and newest["time"] >= older["time"]
    assert older["client"] == "curl" and older["endpoint"] == "/health" and older["input_tokens"] is None
    text = httpx.get(fresh.admin_url + "/metrics").text
    for name in ("gen_ai_server_request_duration_seconds_bucket", "gen_ai_server_time_to_first_token_seconds_bucket",
                 "gen_ai_server_time_per_output_token_seconds_bucket", "gen_ai_client_token_usage_bucket",
                 "gen_ai_client_operation_duration_seconds_bucket", "llamatelemetry_proxy_requests_total"):
        assert name in text, name
    assert 'http_route="/health"' in text and 'llamatelemetry_client_name="curl"' in text
    assert httpx.get(fresh.admin_url + "/api/recent", params={"limit": "x"}).status_code == 400
