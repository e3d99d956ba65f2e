"""Mistakes ``mypy --strict`` must reject: each line marked ``# error`` has to produce an error."""

from __future__ import annotations

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, types

HI = [{"role": "user", "content": "hi"}]


def sync_mistakes(client: LlamaCppClient) -> None:
    streamed: types.ChatCompletion = client.chat.completions.create(messages=HI, stream=True)  # error
    client.chat.completions.create(messages=HI, max_tokens="many")  # error
    client.chat.completions.create(mesages=HI)  # error
    client.tokenize(42)  # error
    text: int = client.detokenize([1])  # error
    print(streamed, text)


async def async_mistakes(client: AsyncLlamaCppClient) -> None:
    forgot_await: types.ChatCompletion = client.chat.completions.create(messages=HI)  # error
    print(forgot_await.choices)
    for chunk in await client.chat.completions.create(messages=HI, stream=True):  # error
        print(chunk)
    ids: list[int] = client.tokenize("x")  # error
    print(ids)
    client.models.load(model=7)  # error
    loaded: bool = client.models.unload("coder")  # error
    print(loaded)


def instrumented_mistakes() -> None:
    import llamatelemetry

    wrong: AsyncLlamaCppClient = llamatelemetry.instrument(LlamaCppClient(telemetry=False))  # error
    llamatelemetry.instrument("http://127.0.0.1:8080")  # error
    print(wrong)
