"""The recorder as a gateway uses it: raw JSON in, SERVER spans joined to an incoming trace, against a real llama-server."""

from __future__ import annotations

import json

import httpx
import pytest
from opentelemetry.trace import SpanKind

from llamatelemetry.provision.model import REASONING_TOKENS, THINKING_COMPLETION_TOKENS
from llamatelemetry.telemetry import semconv as sc
from llamatelemetry.telemetry.recorder import (
    EndedCall, Recorder, SyncSideRequests, accumulator_for, context_from_headers, model_label, operation_for,
)

from telemetry_helpers import Telemetry

HI = [{"role": "user", "content": "hi"}]
INCOMING_TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CLIENT = {sc.CLIENT_NAME: "aider"}


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


def _recorder(server, tel: Telemetry, **kw) -> Recorder:
    return Recorder(server_address="127.0.0.1", server_port=server.port, server_metrics=True, **tel.providers, **kw)


def _count_with(server):
    def count(text: str) -> int | None:
        r = httpx.post(server.base_url + "/tokenize", json={"content": text, "parse_special": False}, timeout=2)
        return len(r.json()["tokens"])
    return count


def _sse_events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            yield json.loads(line[5:])


def test_non_streamed_json_gives_a_server_span_in_the_incoming_trace(full_server, tel):
    recorder = _recorder(full_server, tel)
    ended: list[EndedCall] = []
    body = {"messages": HI, "max_tokens": 64}
    record = recorder.start(
        "/v1/chat/completions", body, kind=SpanKind.SERVER, parent=context_from_headers({"traceparent": INCOMING_TRACE}),
        default_model="scripted", side_requests=SyncSideRequests(_count_with(full_server)),
        span_attributes={sc.USER_AGENT_ORIGINAL: "aider/0.80", **CLIENT}, metric_attributes=CLIENT, on_end=ended.append,
    )
    assert record is not None
    assert record.trace_headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    data = httpx.post(full_server.base_url + "/v1/chat/completions", json=body, headers=record.trace_headers, timeout=30).json()
    record.end(data)
    span = tel.only_span()
    assert span.kind == SpanKind.SERVER and span.name == "chat scripted"
    assert f"{span.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    a = span.attributes
    assert a[sc.USER_AGENT_ORIGINAL] == "aider/0.80" and a[sc.CLIENT_NAME] == "aider"
    assert a[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS == data["usage"]["completion_tokens"]
    assert a[sc.USAGE_REASONING_OUTPUT_TOKENS] == REASONING_TOKENS
    for name in (sc.METRIC_OPERATION_DURATION, sc.METRIC_SERVER_REQUEST_DURATION, sc.METRIC_SERVER_TIME_PER_OUTPUT_TOKEN):
        assert tel.histogram_count(name, **CLIENT) == 1, name
    assert tel.histogram_sum(sc.METRIC_TOKEN_USAGE, **{**CLIENT, sc.TOKEN_TYPE: "reasoning"}) == REASONING_TOKENS
    assert not tel.points(sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN), "not observable without a stream"
    (call,) = ended
    assert call.outcome.output_tokens == THINKING_COMPLETION_TOKENS and call.reasoning_tokens == REASONING_TOKENS
    assert call.error_type is None and call.duration > 0 and call.metric_attributes[sc.CLIENT_NAME] == "aider"


def test_sse_event_dicts_one_by_one_and_no_counter_means_no_guess(full_server, tel):
    recorder = _recorder(full_server, tel)
    body = {"messages": HI, "max_tokens": 64, "stream": True}
    record = recorder.start("/v1/chat/completions", body, stream=True, kind=SpanKind.SERVER,
                            metric_attributes=CLIENT)
    acc = accumulator_for("/v1/chat/completions")
    with httpx.stream("POST", full_server.base_url + "/v1/chat/completions",
                      json={**body, "stream_options": {"include_usage": True}}, timeout=30) as response:
        for event in _sse_events(response):
            acc.add(event)
    acc.finished = True
    record.end_stream(acc, None)
    a = tel.only_span().attributes
    assert a[sc.USAGE_OUTPUT_TOKENS] == THINKING_COMPLETION_TOKENS and a[sc.STREAM_CUT_SHORT] is False
    assert sc.USAGE_REASONING_OUTPUT_TOKENS not in a, "no token counter: the count is omitted, never guessed"
    assert tel.histogram_count(sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN, **CLIENT) == 1
    assert 0 < tel.histogram_sum(sc.METRIC_SERVER_TIME_TO_FIRST_TOKEN) < tel.histogram_sum(sc.METRIC_SERVER_REQUEST_DURATION)


def test_upstream_error_status_is_the_error_type(full_server, tel):
    recorder = _recorder(full_server, tel)
    body = {"messages": HI, "max_tokens": -5, "n_probs": "x"}
    record = recorder.start("/v1/chat/completions", body, kind=SpanKind.SERVER, metric_attributes=CLIENT)
    response = httpx.post(full_server.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    record.fail_status(response.status_code, response.json()["error"]["message"])
    record.fail_status(response.status_code)  # a second end is ignored
    span = tel.only_span()
    assert span.attributes[sc.ERROR_TYPE] == "400" and span.status.status_code.name == "ERROR"
    assert tel.histogram_count(sc.METRIC_SERVER_REQUEST_DURATION, **{sc.ERROR_TYPE: "400", **CLIENT}) == 1
    assert tel.histogram_count(sc.METRIC_OPERATION_DURATION, **{sc.ERROR_TYPE: "400"}) == 1


def test_unparsed_body_and_unknown_path_still_record(tel):
    recorder = Recorder(server_address="127.0.0.1", server_port=1, **tel.providers)
    record = recorder.start("/v1/messages?beta=true", None)
    assert record is not None
    record.end({"unexpected": True})
    assert tel.only_span().name == "chat"
    assert operation_for("/slots") is None and operation_for("/v1/embeddings") == "embeddings"


def test_model_label_is_alias_or_basename():
    assert model_label("/home/me/models/Qwen3-4B-Q4_K_M.gguf") == "Qwen3-4B-Q4_K_M.gguf"
    assert model_label("C:\\models\\gemma.gguf") == "gemma.gguf"
    assert model_label("scripted") == "scripted"


def test_server_without_alias_spans_and_labels_use_the_file_basename(llama_server_factory, scripted_model, tel):
    from llamatelemetry import LlamaCppClient

    server = llama_server_factory(alias=None)
    with LlamaCppClient(server.base_url, **tel.providers) as c:
        model_id = c.models.list().data[0].id
        assert "/" in model_id, "llama-server names the model by its path when there is no --alias"
        c.chat_completion(messages=HI, max_tokens=64)
    span = tel.only_span()
    assert span.name == f"chat {scripted_model.name}"
    assert span.attributes[sc.REQUEST_MODEL] == scripted_model.name
    assert span.attributes[sc.RESPONSE_MODEL] == model_id, "the full id stays on the span"
    (point,) = tel.points(sc.METRIC_OPERATION_DURATION)
    assert point.attributes[sc.REQUEST_MODEL] == point.attributes[sc.RESPONSE_MODEL] == scripted_model.name
