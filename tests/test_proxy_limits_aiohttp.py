"""Both upstream clients — httpx's (the default) and aiohttp's (``LLAMATELEMETRY_PROXY_UPSTREAM_CLIENT=aiohttp``),
compared in ``benchmarks/bench_proxy.py --aiohttp`` — keep the behaviours the gateway's tests pin, against a
real llama-server: byte-identical bodies, SSE event by event, a client's disconnect frees the slot, 502s
in dialect that tell "down" from "closed"."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from llamatelemetry.provision.model import ANSWER_TEXT
from llamatelemetry.provision.server import free_port
from llamatelemetry.proxy.forward import UPSTREAM_CLIENT_ENV
from llamatelemetry.telemetry import semconv as sc
from proxy_helpers import TcpTap, running_gateway

HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(params=["aiohttp", "httpx"])
def aiohttp_upstream(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    monkeypatch.setenv(UPSTREAM_CLIENT_ENV, request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def server(llama_server_factory):
    return llama_server_factory(parallel=2)


def test_bodies_byte_identical_and_streams_event_by_event(aiohttp_upstream, server):
    host, port = server.base_url.removeprefix("http://").split(":")
    with TcpTap(host, int(port)) as tap, running_gateway(tap.url) as gw:
        from llamatelemetry.proxy.aiohttp_upstream import AiohttpTransport

        transport = gw.gateway._servers[0].config.app.transport  # noqa: SLF001
        assert isinstance(transport, AiohttpTransport) == (aiohttp_upstream == "aiohttp")
        tap.reset()
        got = httpx.post(gw.url + "/v1/chat/completions", json={"model": "scripted", "messages": HI, "max_tokens": 64},
                         timeout=30)
        # The tap also sees the gateway's own side requests (router detection's /props, the /health check).
        answers = [b for b in tap.response_bodies() if b'"choices"' in b]
        assert got.status_code == 200 and answers == [got.content]
        body = {"messages": HI, "max_tokens": 300, "ignore_eos": True, "stream": True}
        reads = 0
        with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=60) as resp:
            for _ in resp.iter_raw():
                reads += 1
        assert reads > 50, "events should arrive as they are generated"
        a = gw.wait_for_spans(2)[-1].attributes
        assert a[sc.USAGE_OUTPUT_TOKENS] == 300
        tap.reset()
        odd = "/no/such/path?x=%7e&y=a+b&z=%2F&w=%zz&v=~"
        assert httpx.get(gw.url + odd).status_code == 404
        assert f"GET {odd} HTTP/1.1".encode() in tap.to_server, "the path and query must go out byte for byte"
        reply = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="scripted", messages=HI, max_tokens=64)
        assert reply.choices[0].message.content == ANSWER_TEXT


def test_disconnect_frees_the_slot(aiohttp_upstream, server):
    with running_gateway(server.base_url) as gw:
        body = {"messages": HI, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", gw.url + "/v1/chat/completions", json=body) as resp:
                chunks = resp.iter_raw()
                for _ in range(5):
                    next(chunks)
        left_at = time.monotonic()
        while any(s["is_processing"] for s in httpx.get(server.base_url + "/slots").json()):
            assert time.monotonic() - left_at < 5.0, "the slot is still generating after the client left"
            time.sleep(0.02)


def test_502_in_dialect_says_down(aiohttp_upstream):
    down = f"http://127.0.0.1:{free_port()}"
    with running_gateway(down) as gw:
        with pytest.raises(anthropic.APIStatusError) as anth:
            anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0).messages.create(
                model="m", max_tokens=8, messages=HI)
        assert anth.value.status_code == 502 and "could not reach" in anth.value.message
        assert anth.value.body["type"] == "error"
        assert gw.wait_for_spans(1)[0].attributes[sc.ERROR_TYPE] == "APIConnectionError"
