"""Faults a real llama-server will not produce on demand, through httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, errors

BASE = "http://llama.test:8080"
HI = [{"role": "user", "content": "hi"}]
OK_BODY = {"id": "c1", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def sync_client(handler, **kw) -> LlamaCppClient:
    return LlamaCppClient(BASE, http_client=httpx.Client(transport=httpx.MockTransport(handler)), telemetry=False, **kw)


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def test_malformed_json_is_a_clear_error():
    c = sync_client(lambda req: httpx.Response(200, content=b"<html>proxy error</html>"))
    with pytest.raises(errors.ResponseDecodeError, match="malformed JSON.*proxy"):
        c.chat_completion(messages=HI)


def test_garbage_sse_is_a_clear_error():
    c = sync_client(lambda req: httpx.Response(200, content=sse('{"choices": [{"delta": {"content": "a"}}]}', "{not json")))
    stream = c.chat.completions.create(messages=HI, stream=True)
    with pytest.raises(errors.ResponseDecodeError, match="malformed stream event"):
        list(stream)
    assert stream.response.is_closed


def test_truncated_stream_raises_interrupted():
    c = sync_client(lambda req: httpx.Response(200, content=sse('{"choices": [{"delta": {"content": "a"}}]}')))
    with pytest.raises(errors.StreamInterruptedError, match="ended before"):
        list(c.chat.completions.create(messages=HI, stream=True))


def test_error_event_mid_stream_is_surfaced():
    body = sse('{"choices": [{"delta": {"content": "a"}}]}', '{"error": {"code": 500, "message": "kv cache full", "type": "server_error"}}')
    c = sync_client(lambda req: httpx.Response(200, content=body))
    with pytest.raises(errors.APIStatusError, match="kv cache full") as info:
        list(c.chat.completions.create(messages=HI, stream=True))
    assert info.value.type == "server_error"


def test_500_surfaces_server_error_json():
    body = {"error": {"code": 500, "message": "failed to decode", "type": "server_error"}}
    c = sync_client(lambda req: httpx.Response(500, json=body), max_retries=3)
    with pytest.raises(errors.InternalServerError) as info:
        c.chat_completion(messages=HI)
    assert info.value.server_message == "failed to decode" and info.value.code == 500 and info.value.type == "server_error"
    assert "failed to decode" in str(info.value)


def test_retries_dropped_connection_before_response():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json=OK_BODY)

    c = sync_client(handler, max_retries=2)
    assert c.chat_completion(messages=HI).choices[0].message.content == "ok"
    assert len(calls) == 3


def test_retries_are_bounded():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    c = sync_client(handler, max_retries=2)
    with pytest.raises(errors.APIConnectionError, match="start llama-server"):
        c.chat_completion(messages=HI)
    assert len(calls) == 3


def test_503_loading_is_retried_then_reported():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, json={"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                              headers={"retry-after": "0"})

    c = sync_client(handler, max_retries=2)
    with pytest.raises(errors.ModelLoadingError, match="loading"):
        c.chat_completion(messages=HI)
    assert len(calls) == 3
    assert c.health.check().status == "loading"


def test_no_retry_after_response_started():
    calls = []

    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield b'{"id": '
            raise httpx.RemoteProtocolError("peer closed connection")

    def handler(request):
        calls.append(1)
        return httpx.Response(200, stream=Broken())

    c = sync_client(handler, max_retries=3)
    with pytest.raises(errors.APIConnectionError):
        c.chat_completion(messages=HI)
    assert len(calls) == 1


def test_timeout_says_what_to_do():
    def handler(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(errors.APITimeoutError, match="timeout="):
        sync_client(handler).chat_completion(messages=HI)


def test_api_key_sent_as_bearer_and_model_default():
    seen = {}

    def handler(request):
        seen["auth"] = request.headers.get("authorization")
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json=OK_BODY)

    sync_client(handler, api_key="sk-abc").chat_completion(messages=HI, temperature=0.2, extra_body={"cache_prompt": False})
    assert seen["auth"] == "Bearer sk-abc"
    assert seen["body"] == {"messages": HI, "temperature": 0.2, "cache_prompt": False}


def test_async_faults_match_sync():
    async def main():
        def handler(request):
            return httpx.Response(200, content=b"not json")

        async with AsyncLlamaCppClient(BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)), telemetry=False) as c:
            with pytest.raises(errors.ResponseDecodeError):
                await c.chat_completion(messages=HI)

        def truncated(request):
            return httpx.Response(200, content=sse('{"choices": [{"delta": {"content": "a"}}]}'))

        async with AsyncLlamaCppClient(BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(truncated)), telemetry=False) as c:
            stream = await c.chat.completions.create(messages=HI, stream=True)
            with pytest.raises(errors.StreamInterruptedError):
                async for _ in stream:
                    pass

    asyncio.run(main())


def test_async_retries_match_sync():
    async def main():
        calls = []

        def handler(request):
            calls.append(1)
            if len(calls) == 1:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            if len(calls) == 2:
                return httpx.Response(503, json={"error": {"message": "Loading model"}}, headers={"retry-after": "0"})
            return httpx.Response(200, json=OK_BODY)

        async with AsyncLlamaCppClient(BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                                       max_retries=2, telemetry=False) as c:
            assert (await c.chat_completion(messages=HI)).choices[0].message.content == "ok"
        assert len(calls) == 3

        def loading(request):
            return httpx.Response(503, json={"error": {"message": "Loading model"}}, headers={"retry-after": "0"})

        async with AsyncLlamaCppClient(BASE, http_client=httpx.AsyncClient(transport=httpx.MockTransport(loading)),
                                       max_retries=1, telemetry=False) as c:
            with pytest.raises(errors.ModelLoadingError):
                await c.chat_completion(messages=HI)

    asyncio.run(main())
