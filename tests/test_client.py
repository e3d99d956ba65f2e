"""LlamaCppClient against a real llama-server serving the scripted reasoning model."""

from __future__ import annotations

import pytest

from llamatelemetry import LlamaCppClient, errors, types
from llamatelemetry.provision.model import ANSWER_TEXT, REASONING_PIECES, REASONING_TEXT, THINKING_COMPLETION_TOKENS

HI = [{"role": "user", "content": "hi"}]
NO_THINKING = {"enable_thinking": False}


@pytest.fixture(scope="module")
def client(full_server):
    with LlamaCppClient(full_server.base_url, telemetry=False) as c:
        yield c


def test_chat_returns_exact_reasoning_content_and_counts(client):
    resp = client.chat.completions.create(messages=HI, max_tokens=64)
    choice = resp.choices[0]
    assert choice.message.content == ANSWER_TEXT
    assert choice.message.reasoning_content == REASONING_TEXT
    assert choice.finish_reason == "stop"
    assert resp.usage.completion_tokens == THINKING_COMPLETION_TOKENS
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details is not None and resp.usage.prompt_tokens_details.cached_tokens is not None
    assert resp.timings.predicted_n == THINKING_COMPLETION_TOKENS
    assert resp.timings.prompt_ms > 0
    assert resp.model == "scripted"


def test_chat_completion_is_the_same_call(client):
    short = client.chat_completion(messages=HI, max_tokens=64)
    assert short.choices[0].message.content == ANSWER_TEXT
    assert type(short) is types.ChatCompletion


def test_thinking_switched_off(client):
    resp = client.chat.completions.create(messages=HI, max_tokens=64, chat_template_kwargs=NO_THINKING)
    msg = resp.choices[0].message
    assert msg.content == ANSWER_TEXT
    assert not msg.reasoning_content
    assert resp.usage.completion_tokens == len(("Hello", " there", "!")) + 1  # answer + <|im_end|>


def test_reasoning_exhausts_max_tokens(client):
    resp = client.chat.completions.create(messages=HI, max_tokens=5)
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == ""
    assert choice.message.reasoning_content == "".join(REASONING_PIECES[:5])
    assert resp.usage.completion_tokens == 5


def test_stream_yields_typed_deltas_and_final_completion(client):
    with client.chat.completions.create(messages=HI, max_tokens=64, stream=True) as stream:
        chunks = list(stream)
        final = stream.get_final_completion()
    reasoning = "".join(c.choices[0].delta.reasoning_content or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == REASONING_TEXT
    assert content == ANSWER_TEXT
    assert all(c.choices for c in chunks), "usage-only chunk must be hidden when the caller did not ask for it"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert final.choices[0].message.content == ANSWER_TEXT
    assert final.choices[0].message.reasoning_content == REASONING_TEXT
    assert final.usage.completion_tokens == THINKING_COMPLETION_TOKENS
    assert final.timings.predicted_n == THINKING_COMPLETION_TOKENS
    assert stream.response.is_closed


def test_stream_usage_chunk_shown_when_asked(client):
    chunks = list(client.chat.completions.create(messages=HI, max_tokens=64, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == THINKING_COMPLETION_TOKENS


def test_stream_without_usage_when_caller_says_no(client):
    stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True, stream_options={"include_usage": False})
    assert all(c.usage is None for c in stream)
    assert stream.get_final_completion().usage is None


def test_stream_break_closes_response(client):
    stream = client.chat.completions.create(messages=HI, max_tokens=64, stream=True)
    for _ in stream:
        break
    stream.close()
    assert stream.response.is_closed
    assert not stream.completed
    # the connection pool is still usable afterwards
    assert client.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == ANSWER_TEXT


def test_text_completion(client):
    resp = client.completions.create(prompt="hi", max_tokens=4)
    assert resp.choices[0].text == "\n" + "".join(REASONING_PIECES[:3])
    assert resp.usage.completion_tokens == 4
    assert resp.choices[0].finish_reason == "length"
    streamed = client.completions.create(prompt="hi", max_tokens=4, stream=True).get_final_completion()
    assert streamed.choices[0].text == resp.choices[0].text
    assert streamed.usage.completion_tokens == 4


def test_anthropic_messages(client):
    msg = client.messages.create(messages=HI, max_tokens=64)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.thinking == REASONING_TEXT
    assert msg.text == ANSWER_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == THINKING_COMPLETION_TOKENS


def test_anthropic_messages_stream(client):
    stream = client.messages.create(messages=HI, max_tokens=64, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    final = stream.get_final_completion()
    assert final.thinking == REASONING_TEXT
    assert final.text == ANSWER_TEXT
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == THINKING_COMPLETION_TOKENS


def test_anthropic_messages_exhausted(client):
    msg = client.messages.create(messages=HI, max_tokens=3)
    assert msg.stop_reason == "max_tokens"
    assert msg.text == ""
    assert msg.thinking == "".join(REASONING_PIECES[:3])


def test_embeddings_and_embed(client):
    resp = client.embeddings.create(input=["hello", "there"])
    assert len(resp.data) == 2
    assert len(resp.data[0].embedding) == 512
    vector = client.embed("hello")
    assert vector == pytest.approx(resp.data[0].embedding)


def test_tokenize_roundtrip(client):
    ids = client.tokenize(REASONING_TEXT)
    assert len(ids) == len(REASONING_PIECES)
    assert client.detokenize(ids) == REASONING_TEXT


def test_models_props_slots(client):
    models = client.models.list()
    assert models.data[0].id == "scripted"
    assert models.data[0].meta["n_ctx_train"] == 2048
    props = client.props.get()
    assert props.total_slots == 2
    assert props.n_ctx == 2048
    slots = client.slots.list()
    assert [s.id for s in slots] == [0, 1]
    assert all(isinstance(s.is_processing, bool) for s in slots)


def test_slot_save_restore_erase(client):
    client.chat_completion(messages=HI, max_tokens=64, extra_body={"id_slot": 0})  # slot 0 holds this conversation
    saved = client.slots.save(0, "slot0.bin")
    assert saved["filename"] == "slot0.bin" and saved["n_saved"] > 0
    restored = client.slots.restore(0, "slot0.bin")
    assert restored["n_restored"] == saved["n_saved"]
    erased = client.slots.erase(0)
    assert erased["id_slot"] == 0


def test_lora_list_empty(client):
    assert client.lora.list() == []


def test_metrics_raw_and_parsed(client):
    client.chat_completion(messages=HI, max_tokens=64)
    text = client.metrics.get()
    assert "llamacpp:tokens_predicted_total" in text
    families = {f.name: f for f in client.metrics.parse()}
    assert families["llamacpp:tokens_predicted_total"].samples[0].value >= THINKING_COMPLETION_TOKENS


def test_health(client):
    health = client.health.check()
    assert health.status == "ok" and health.ok
    assert client.health.wait_until_ready(timeout=5).ok


def test_repr_hides_api_key(full_server):
    c = LlamaCppClient(full_server.base_url, api_key="sk-secret-123", telemetry=False)
    assert "sk-secret-123" not in repr(c) and "sk-secret-123" not in repr(c._settings)
    c.close()


# --- a server without the optional endpoints ----------------------------------------------------

@pytest.fixture(scope="module")
def bare(bare_server):
    with LlamaCppClient(bare_server.base_url, telemetry=False) as c:
        yield c


@pytest.mark.parametrize(
    "call, flag",
    [
        (lambda c: c.metrics.get(), "--metrics"),
        (lambda c: c.embed("x"), "--embeddings"),
        (lambda c: c.slots.list(), "--slots (remove --no-slots)"),
        (lambda c: c.rerank("q", ["a", "b"]), "--rerank"),
    ],
    ids=["metrics", "embeddings", "slots", "rerank"],
)
def test_501_names_the_flag(bare, call, flag):
    with pytest.raises(errors.NotSupportedError) as info:
        call(bare)
    assert info.value.flag == flag
    assert flag.split()[0] in str(info.value)
    assert info.value.status_code == 501
    assert info.value.type == "not_supported_error"


def test_slot_save_needs_slot_save_path(bare_server):
    # --no-slots server answers 501 for the listing; a server without --slot-save-path refuses actions.
    with LlamaCppClient(bare_server.base_url, telemetry=False) as c:
        with pytest.raises(errors.NotSupportedError) as info:
            c.slots.save(0, "x.bin")
    assert info.value.flag in ("--slot-save-path", "--slots (remove --no-slots)")


def test_connection_refused_names_url_and_says_start_server():
    from llamatelemetry.provision.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with LlamaCppClient(url, max_retries=1, telemetry=False) as c:
        with pytest.raises(errors.APIConnectionError) as info:
            c.chat_completion(messages=HI)
        assert c.health.check().status == "unreachable"
    assert url in str(info.value) and "start llama-server" in str(info.value)


def test_api_key_server(llama_server_factory):
    server = llama_server_factory("--api-key", "sk-test-key")
    with LlamaCppClient(server.base_url, telemetry=False) as anonymous:
        with pytest.raises(errors.AuthenticationError) as info:
            anonymous.chat_completion(messages=HI, max_tokens=8)
        assert "--api-key" in str(info.value)
    with LlamaCppClient(server.base_url, api_key="sk-test-key", telemetry=False) as authed:
        assert authed.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == ANSWER_TEXT


def test_base_url_from_environment(full_server, monkeypatch):
    monkeypatch.setenv("LLAMA_SERVER_URL", full_server.base_url + "/v1")
    with LlamaCppClient(telemetry=False) as c:
        assert c.base_url == full_server.base_url
        assert c.health.check().ok


def test_default_base_url_is_the_shared_constant(monkeypatch):
    from llamatelemetry._defaults import DEFAULT_BASE_URL

    monkeypatch.delenv("LLAMA_SERVER_URL", raising=False)
    assert LlamaCppClient(telemetry=False).base_url == DEFAULT_BASE_URL == "http://127.0.0.1:8080"


def test_lora_list_and_apply(llama_server_factory, tmp_path):
    from llamatelemetry.provision.model import write_zero_lora

    adapter = write_zero_lora(tmp_path / "zero-lora.gguf")
    server = llama_server_factory("--lora", str(adapter))
    with LlamaCppClient(server.base_url, telemetry=False) as c:
        (listed,) = c.lora.list()
        assert listed.id == 0 and listed.path == str(adapter) and listed.scale == 1.0
        c.lora.apply({0: 0.5})
        assert c.lora.list()[0].scale == 0.5
        c.lora.apply([{"id": 0, "scale": 0.0}])
        assert c.lora.list()[0].scale == 0.0
        assert c.chat_completion(messages=HI, max_tokens=64).choices[0].message.content == ANSWER_TEXT


def test_rerank_on_a_rerank_server(llama_server_factory):
    # The scripted model has no attention, so every document scores the same: this checks the
    # endpoint, the typed result and the span, not the ranking quality.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    server = llama_server_factory("--rerank")
    with LlamaCppClient(server.base_url, tracer_provider=provider) as c:
        resp = c.rerank("hello", ["hello there", "friendly", "stop"], top_n=2)
    assert isinstance(resp, types.RerankResponse)
    assert len(resp.results) == 2 and {r.index for r in resp.results} <= {0, 1, 2}
    assert all(isinstance(r.relevance_score, float) for r in resp.results)
    assert resp.usage.prompt_tokens > 0
    (span,) = spans.get_finished_spans()
    assert span.name == "rerank scripted"
    assert span.attributes["gen_ai.usage.input_tokens"] == resp.usage.prompt_tokens
