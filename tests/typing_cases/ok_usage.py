"""Type-checked by tests/test_typing.py with ``mypy --strict``: every public method has its real type."""

from __future__ import annotations

from typing import assert_type

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors, types
from llamatelemetry.streaming import AsyncStream, Stream

HI = [{"role": "user", "content": "hi"}]


def sync_usage(client: LlamaCppClient, flag: bool) -> None:
    assert_type(client.chat.completions.create(messages=HI), types.ChatCompletion)
    assert_type(client.chat.completions.create(messages=HI, stream=False), types.ChatCompletion)
    stream = client.chat.completions.create(messages=HI, stream=True)
    assert_type(stream, Stream[types.ChatCompletionChunk])
    for chunk in stream:
        assert_type(chunk, types.ChatCompletionChunk)
    assert_type(stream.get_final_completion(), types.ChatCompletion)
    assert_type(client.chat.completions.create(messages=HI, stream=flag),
                types.ChatCompletion | Stream[types.ChatCompletionChunk])
    assert_type(client.chat_completion(messages=HI, max_tokens=8), types.ChatCompletion)
    assert_type(client.completions.create(prompt="x"), types.Completion)
    assert_type(client.completions.create(prompt="x", stream=True), Stream[types.Completion])
    assert_type(client.messages.create(messages=HI, max_tokens=8), types.Message)
    events = client.messages.create(messages=HI, max_tokens=8, stream=True)
    assert_type(events, Stream[types.MessageStreamEvent])
    assert_type(events.get_final_completion(), types.Message)
    assert_type(client.embeddings.create(input="x"), types.CreateEmbeddingResponse)
    assert_type(client.embed("x"), list[float])
    assert_type(client.tokenize("x"), list[int])
    assert_type(client.detokenize([1, 2]), str)
    assert_type(client.rerank("q", ["a"]), types.RerankResponse)
    assert_type(client.models.list(), types.ModelList)
    assert_type(client.models.load("coder"), bool)
    assert_type(client.models.unload("coder"), bool)
    status = client.models.list().data[0].status
    assert_type(status, types.ModelStatus | None)
    try:
        client.chat_completion(model="coder", messages=HI)
    except errors.RouterModelError as exc:
        assert_type(exc.model, str | None)
        assert_type(exc.model_status, types.ModelStatus | None)
    assert_type(client.props.get(), types.Props)
    assert_type(client.slots.list(), list[types.Slot])
    assert_type(client.lora.list(), list[types.LoraAdapter])
    assert_type(client.metrics.get(), str)
    assert_type(client.health.check(), types.Health)


async def async_usage(client: AsyncLlamaCppClient) -> None:
    assert_type(await client.chat.completions.create(messages=HI), types.ChatCompletion)
    stream = await client.chat.completions.create(messages=HI, stream=True)
    assert_type(stream, AsyncStream[types.ChatCompletionChunk])
    async for chunk in stream:
        assert_type(chunk, types.ChatCompletionChunk)
    assert_type(await stream.get_final_completion(), types.ChatCompletion)
    assert_type(await client.chat_completion(messages=HI), types.ChatCompletion)
    assert_type(await client.completions.create(prompt="x", stream=True), AsyncStream[types.Completion])
    assert_type(await client.messages.create(messages=HI, max_tokens=8), types.Message)
    assert_type(await client.embed("x"), list[float])
    assert_type(await client.tokenize("x"), list[int])
    assert_type(await client.models.list(), types.ModelList)
    assert_type(await client.models.load("coder"), bool)
    assert_type(await client.models.unload("coder"), bool)
    assert_type(await client.health.check(), types.Health)


def instrumented_clients_keep_their_type() -> None:
    import llamatelemetry

    client = llamatelemetry.instrument(LlamaCppClient(telemetry=False))
    assert_type(client, LlamaCppClient)
    assert_type(client.chat.completions.create(messages=HI), types.ChatCompletion)
    aclient = llamatelemetry.uninstrument(llamatelemetry.instrument(AsyncLlamaCppClient(telemetry=False)))
    assert_type(aclient, AsyncLlamaCppClient)
