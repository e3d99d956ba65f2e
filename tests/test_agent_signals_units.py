"""The pure extraction functions of llamatelemetry.telemetry.agent_signals, on the server's own JSON shapes.

The shapes are copied from llama-server b11434 (tools/server/server-task.cpp, server-common.cpp); the
real-server tests in tests/test_agent_signals.py check the same functions against live answers.
"""

from __future__ import annotations

from llamatelemetry.telemetry.accumulate import accumulator_for
from llamatelemetry.telemetry import agent_signals as ag

OVERFLOW = {"error": {"code": 400, "message": "request (600 tokens) exceeds the available context size (512 tokens), try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": 600, "n_ctx": 512}}


def test_queue_wait_is_wall_minus_slot_time() -> None:
    assert ag.queue_wait(1.25, {"prompt_ms": 200.0, "predicted_ms": 50.0}) == 1.0
    assert ag.queue_wait(0.1, {"prompt_ms": 200.0, "predicted_ms": 50.0}) == 0.0  # clamped, clocks differ
    assert ag.queue_wait(1.0, None) is None
    assert ag.queue_wait(1.0, {"prompt_ms": 1.0}) is None


def test_context_overflow_from_dict_text_and_bytes() -> None:
    import json

    want = ag.ContextOverflow(600, 512)
    assert ag.context_overflow(OVERFLOW) == want
    assert ag.context_overflow(json.dumps(OVERFLOW)) == want
    assert ag.context_overflow(json.dumps(OVERFLOW).encode()) == want
    assert ag.context_overflow(OVERFLOW["error"]) == want  # an SSE error event's object
    assert ag.context_overflow({"error": {"code": 400, "type": "invalid_request_error", "message": "x"}}) is None
    assert ag.context_overflow("not json") is None
    assert ag.context_overflow(None) is None


def test_parse_error_and_utilisation_and_drafts() -> None:
    msg = "The model produced output that does not match the expected Qwen3.5 format"
    assert ag.is_tool_parse_error({"error": {"code": 500, "message": msg, "type": "server_error"}})
    assert ag.is_tool_parse_error(msg)
    assert not ag.is_tool_parse_error({"error": {"code": 500, "message": "boom"}})
    assert ag.context_utilisation(1536, 2048) == 0.75
    assert ag.context_utilisation(None, 2048) is None and ag.context_utilisation(5, 0) is None
    assert ag.draft_counts({"draft_n": 40, "draft_n_accepted": 30}) == (40, 30)
    assert ag.draft_counts({"predicted_n": 4}) is None


def _chat(calls: list[dict[str, object]] | None, finish: str) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": ""}
    if calls is not None:
        message["tool_calls"] = calls
    return {"choices": [{"index": 0, "finish_reason": finish, "message": message}]}


def test_tool_calls_openai_json() -> None:
    good = {"type": "function", "id": "a", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    bad = {"type": "function", "id": "b", "function": {"name": "get_weather", "arguments": '{"city":'}}
    path = "/v1/chat/completions"
    assert ag.tool_calls_of_json(path, _chat([good], "tool_calls")) == ag.ToolCalls(1, ())
    assert ag.tool_calls_of_json(path, _chat([good, bad], "tool_calls")) == ag.ToolCalls(2, ("invalid_arguments",))
    assert ag.tool_calls_of_json(path, _chat(None, "tool_calls")) == ag.ToolCalls(0, ("missing_call",))
    assert ag.tool_calls_of_json(path, _chat(None, "stop")) == ag.ToolCalls(0, ())
    assert ag.tool_calls_of_json("/v1/completions", {"choices": []}) is None


def test_tool_calls_anthropic_json() -> None:
    use = {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Paris"}}
    path = "/v1/messages?beta=true"
    assert ag.tool_calls_of_json(path, {"content": [use], "stop_reason": "tool_use"}) == ag.ToolCalls(1, ())
    assert ag.tool_calls_of_json(path, {"content": [{"type": "text", "text": "x"}], "stop_reason": "tool_use"}) == \
        ag.ToolCalls(0, ("missing_call",))


def test_tool_calls_of_streams() -> None:
    acc = accumulator_for("/v1/chat/completions")
    acc.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}}]})
    acc.add({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]})
    acc.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "b", "function": {"name": "f", "arguments": "{nope"}}]}, "finish_reason": "tool_calls"}]})
    assert ag.tool_calls_of_stream(acc) == ag.ToolCalls(2)  # not finished: no verdict on the arguments
    acc.finished = True
    assert ag.tool_calls_of_stream(acc) == ag.ToolCalls(2, ("invalid_arguments",))

    msgs = accumulator_for("/v1/messages")
    for event in (
        {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Par'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": 'is"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ):
        msgs.add(event)
    assert ag.tool_calls_of_stream(msgs) == ag.ToolCalls(1, ())
    assert ag.tool_calls_of_stream(accumulator_for("/v1/completions")) is None


def test_top_cache_hit_ratio_column_per_client() -> None:
    """`top`'s CLIENTS panel: prompt tokens served from the cache / all prompt tokens, over the window."""
    from llamatelemetry.top.model import Model
    from llamatelemetry.top.render import CLIENT_COLUMNS, client_cells
    from llamatelemetry.top.sources import Metrics, Reading, Snapshot

    def snap(t: float, prompt: int, cached: int) -> Snapshot:
        page = (f'llamatelemetry_prompt_tokens_total{{llamatelemetry_client_name="aider"}} {prompt}\n'
                f'llamatelemetry_prompt_cached_tokens_total{{llamatelemetry_client_name="aider"}} {cached}\n'
                'llamatelemetry_prompt_tokens_total{llamatelemetry_client_name="curl"} 5\n'
                f'llamatelemetry_proxy_requests_total{{llamatelemetry_client_name="aider"}} {t}\n'
                f'llamatelemetry_proxy_requests_total{{llamatelemetry_client_name="curl"}} {t}\n')
        return Snapshot(t, t, Reading("e", error="down"), Reading("g", metrics=Metrics.parse(page)))

    model = Model(window_seconds=60)
    model.update(snap(0, 1000, 100))
    view = model.update(snap(10, 3000, 1600))  # 2000 prompt tokens in the window, 1500 of them cached
    rows = {row.client: row for row in view.clients}
    assert rows["aider"].cache_hit_ratio == 0.75
    assert rows["curl"].cache_hit_ratio is None  # no prompt tokens in the window: no ratio
    assert CLIENT_COLUMNS[-1] == "cache" and str(client_cells(rows["aider"])[-1]) == "75%"


def test_recorder_counts_a_server_parse_error_as_a_malformed_tool_call() -> None:
    """llama-server's chat parser rejecting the output (500) — not reproducible with the scripted models (the
    lazy tool grammar keeps their output parseable), so the server's exact error body is fed to the recorder,
    as the client (an APIStatusError) and the gateway (the raw body) hand it over."""
    import json

    from llamatelemetry import errors
    from llamatelemetry.telemetry import semconv as sc
    from llamatelemetry.telemetry.recorder import Recorder
    from telemetry_helpers import Telemetry

    body = {"error": {"code": 500, "type": "server_error",
                      "message": "The model produced output that does not match the expected Qwen3.5 format"}}
    tel = Telemetry()
    recorder = Recorder(server_address="127.0.0.1", server_port=9, **tel.providers)
    client_side = recorder.start("/v1/chat/completions", {"model": "m", "messages": []})
    gateway_side = recorder.start("/v1/chat/completions", {"model": "m", "messages": []})
    assert client_side is not None and gateway_side is not None
    client_side.fail(errors.APIStatusError("mid-stream error", status_code=500, url="/v1/chat/completions", body=body))
    gateway_side.fail_status(500, json.dumps(body))
    for span in tel.spans():
        assert span.attributes[sc.ERROR_TYPE] == "500" and span.attributes[sc.TOOL_CALLS_MALFORMED_COUNT] == 1
        assert [dict(e.attributes) for e in span.events] == [{sc.TOOL_CALL_MALFORMED_REASON: "parse_error"}]
    points = [p for p in tel.points(sc.METRIC_TOOL_CALLS_MALFORMED) if p.attributes[sc.TOOL_CALL_MALFORMED_REASON] == "parse_error"]
    assert sum(p.value for p in points) == 2
