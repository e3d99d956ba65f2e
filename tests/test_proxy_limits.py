"""Hostile and oversized input from clients: the gateway refuses it in the client's dialect, before
forwarding, and its memory stays bounded (measured on a real ``llamatelemetry proxy`` process in
front of a real llama-server; a TCP tap shows what reached llama-server)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from gateway_process import GatewayProcess
from llamatelemetry.proxy import limits
from llamatelemetry.proxy.cli import DEFAULT_MAX_BODY_BYTES, byte_size
from llamatelemetry.telemetry import semconv as sc
from proxy_helpers import TcpTap, running_gateway

HI = [{"role": "user", "content": "Say hello."}]
MIB = 1 << 20


@pytest.fixture(scope="module")
def server(llama_server_factory):
    return llama_server_factory(parallel=2)


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _send_body(url: str, path: str, size: int, *, chunked: bool = False) -> httpx.Response:
    """POST ``size`` bytes (a JSON-looking prefix, then filler) without holding them in memory."""
    block = b" " * MIB

    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [], "pad": "'
        sent = len(b'{"messages": [], "pad": "')
        while sent < size:
            piece = block[: min(MIB, size - sent)]
            sent += len(piece)
            yield piece

    headers = {"content-type": "application/json"}
    if not chunked:
        headers["content-length"] = str(size)
    return httpx.post(url + path, content=chunks(), headers=headers, timeout=120)


def test_default_limit_is_llama_servers_own():
    # cpp-httplib's CPPHTTPLIB_PAYLOAD_MAX_LENGTH in the pinned source: (100 * 1024 * 1024)
    assert limits.DEFAULT_MAX_BODY_BYTES == DEFAULT_MAX_BODY_BYTES == 100 * MIB
    assert byte_size("100MiB") == byte_size("100m") == 100 * MIB and byte_size("4096") == 4096
    with pytest.raises(Exception):
        byte_size("lots")


def test_three_concurrent_400mib_bodies_are_refused_with_bounded_memory(server):
    """The issue's own case: an agent loop sends huge bodies; the gateway must not read them into memory."""
    with TcpTap(*_host_port(server.base_url)) as tap:
        gateway = GatewayProcess(tap.url)
        try:
            assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200  # warm: one request served
            tap.reset()
            rss_before, _ = gateway.memory_kib()
            paths = ["/v1/chat/completions", "/v1/messages", "/v1/chat/completions"]
            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda p: _send_body(gateway.url, p, 400 * MIB), paths))
            _, peak = gateway.memory_kib()
            growth_mib = (peak - rss_before) / 1024
            print(f"gateway RSS {rss_before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB: +{growth_mib:.1f} MiB")
            assert [a.status_code for a in answers] == [413, 413, 413]
            assert growth_mib < 150, f"the gateway grew by {growth_mib:.0f} MiB for three refused bodies"
            openai_error, anthropic_error = answers[0].json(), answers[1].json()
            assert openai_error["error"]["code"] == 413 and "--max-body-size" in openai_error["error"]["message"]
            assert "100 MiB" in openai_error["error"]["message"]
            assert anthropic_error["type"] == "error" and "--max-body-size" in anthropic_error["error"]["message"]
            # (the gateway's own lookup of the default model, a GET /v1/models, may pass)
            assert b"POST" not in tap.to_server, "a refused request reached llama-server"
            recent = gateway.wait_recorded(4)
            refused = [r for r in recent if r["status"] == 413]
            assert len(refused) == 3 and {r["error_type"] for r in refused} == {"BodyTooLargeError"}
            # and the gateway still forwards normally
            reply = httpx.post(gateway.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64}, timeout=30)
            assert reply.status_code == 200 and b"POST" in tap.to_server
        finally:
            gateway.stop()


def test_a_chunked_body_is_cut_at_the_limit_while_reading(server):
    with TcpTap(*_host_port(server.base_url)) as tap, running_gateway(tap.url, max_body_bytes=MIB) as gw:
        answer = _send_body(gw.url, "/v1/chat/completions", 8 * MIB, chunked=True)
        assert answer.status_code == 413 and answer.headers["connection"] == "close"
        assert "1 MiB" in answer.json()["error"]["message"]
        span = gw.wait_for_spans(1)[0]
        assert span.attributes[sc.ERROR_TYPE] == "BodyTooLargeError"
        assert b"POST" not in tap.to_server
        # a body within the limit is forwarded (llama-server says what it thinks of it)
        ok = httpx.post(gw.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 64, "pad": " " * (MIB // 2)},
                        timeout=30)
        assert ok.status_code == 200 and b"POST" in tap.to_server


def test_a_body_llama_server_refuses_is_reported_as_refused_not_down(server):
    """With the gateway's limit raised past llama-server's, llama-server refuses the body itself: the
    client must hear that llama-server closed the connection (check its log), not that it is down."""
    with running_gateway(server.base_url, max_body_bytes=300 * MIB) as gw:
        answer = _send_body(gw.url, "/v1/chat/completions", 150 * MIB)
        if answer.status_code == 413:  # llama-server's own 413 (an empty body) arrived: passed through untouched
            assert b"llamatelemetry" not in answer.content
        else:
            message = answer.json()["error"]["message"]
            assert answer.status_code == 502, answer.text
            assert "closed the connection" in message and "check its log" in message, message
            assert "could not reach" not in message and "150 MiB" in message and "100 MiB" in message
            span = gw.wait_for_spans(1)[0]
            assert span.attributes[sc.ERROR_TYPE] == "UpstreamClosedError"
        assert httpx.get(server.base_url + "/health").status_code == 200


def _reset_after_request() -> tuple[str, socket.socket]:
    """A peer that accepts, reads the request head, and resets the connection (a crashing server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # linger 0: RST

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", listener


def test_upstream_reset_is_not_reported_as_down():
    url, listener = _reset_after_request()
    try:
        with running_gateway(url) as gw:
            with pytest.raises(anthropic.APIStatusError) as caught:
                anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0).messages.create(
                    model="m", max_tokens=8, messages=HI)
            assert caught.value.status_code == 502 and caught.value.body["type"] == "error"
            assert "closed the connection" in caught.value.message and "could not reach" not in caught.value.message
            assert gw.wait_for_spans(1)[0].attributes[sc.ERROR_TYPE] == "UpstreamClosedError"
    finally:
        listener.close()


def _trickler(url: str, path: str = "/v1/chat/completions") -> socket.socket:
    """A client that announces a body and sends only its first byte."""
    sock = socket.create_connection(_host_port(url))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 100000\r\n\r\n{{".encode())
    return sock


def test_past_the_concurrency_limit_a_503_in_dialect(server):
    with running_gateway(server.base_url, max_concurrent=3) as gw:
        holders = [_trickler(gw.url) for _ in range(3)]
        try:
            deadline = time.monotonic() + 10
            while _in_flight(gw) < 3:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.APIStatusError) as oai:
                openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                    model="m", messages=HI)
            assert oai.value.status_code == 503 and "--max-concurrent" in oai.value.message
            assert oai.value.response.headers["retry-after"] == "1"
            with pytest.raises(anthropic.APIStatusError) as anth:
                anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0).messages.create(
                    model="m", max_tokens=8, messages=HI)
            assert anth.value.status_code == 503 and anth.value.body["type"] == "error"
            assert {s.attributes[sc.ERROR_TYPE] for s in gw.wait_for_spans(2)} == {"GatewayBusyError"}
        finally:
            for sock in holders:
                sock.close()
        deadline = time.monotonic() + 10
        while _in_flight(gw):  # the abandoned bodies free their places
            assert time.monotonic() < deadline, "places held by clients that left were not freed"
            time.sleep(0.02)
        reply = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="m", messages=HI, max_tokens=64)
        assert reply.choices[0].finish_reason == "stop"


def _in_flight(gw) -> int:  # noqa: ANN001
    return gw.gateway.gate.in_flight


def test_normal_requests_are_served_while_200_clients_trickle_bodies(server):
    with running_gateway(server.base_url) as gw:
        tricklers = [_trickler(gw.url, "/v1/messages" if i % 2 else "/v1/chat/completions") for i in range(200)]
        stop = threading.Event()

        def trickle() -> None:  # one more byte from each, every half second
            while not stop.wait(0.5):
                for sock in tricklers:
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        try:
            deadline = time.monotonic() + 20
            while _in_flight(gw) < 200:
                assert time.monotonic() < deadline, f"only {_in_flight(gw)} of 200 trickling bodies arrived"
                time.sleep(0.05)
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)
            for _ in range(3):
                started = time.monotonic()
                reply = client.chat.completions.create(model="m", messages=HI, max_tokens=64)
                took = time.monotonic() - started
                print(f"served in {took * 1000:.0f} ms beside 200 trickling clients")
                assert reply.choices[0].message.content and took < 5.0
        finally:
            stop.set()
            for sock in tricklers:
                sock.close()


def test_huge_headers_are_refused_with_bounded_memory(server):
    with TcpTap(*_host_port(server.base_url)) as tap:
        gateway = GatewayProcess(tap.url)
        try:
            rss_before, _ = gateway.memory_kib()

            def flood(_: int) -> bytes:
                sock = socket.create_connection(_host_port(gateway.url))
                sock.settimeout(30)
                try:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    try:
                        for _ in range(200):  # up to 200 MiB of one header line
                            sock.sendall(b"a" * MIB)
                    except OSError:
                        pass  # the gateway closed the connection
                    answer = b""
                    try:
                        while chunk := sock.recv(65536):
                            answer += chunk
                    except OSError:
                        pass
                    return answer
                finally:
                    sock.close()

            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(flood, range(3)))
            _, peak = gateway.memory_kib()
            growth_mib = (peak - rss_before) / 1024
            print(f"three 200 MiB header floods: gateway RSS +{growth_mib:.1f} MiB")
            assert growth_mib < 50
            assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), [a[:40] for a in answers]
            # Only the gateway's own upstream health checks (every 10 s) may reach llama-server;
            # nothing of the floods does.
            requests_upstream = bytes(tap.to_server).split(b"\r\n\r\n")
            assert b"X-Big" not in tap.to_server and b"aaaa" not in tap.to_server
            assert all(r.startswith(b"GET /health ") for r in requests_upstream if r), requests_upstream
            assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
        finally:
            gateway.stop()


def test_help_names_the_limits():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "llamatelemetry.cli", "proxy", "--help"], capture_output=True,
                         text=True, timeout=60).stdout
    for text in ("--max-body-size", "100 MiB", "LLAMATELEMETRY_PROXY_MAX_BODY_SIZE", "--max-concurrent",
                 "LLAMATELEMETRY_PROXY_MAX_CONCURRENT"):
        assert text in out


def test_env_vars_set_the_limits(monkeypatch: pytest.MonkeyPatch):
    import argparse

    from llamatelemetry.proxy import cli

    monkeypatch.setenv(cli.ENV_MAX_BODY_SIZE, "2MiB")
    monkeypatch.setenv(cli.ENV_MAX_CONCURRENT, "7")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.max_body_size, args.max_concurrent) == (2 * MIB, 7)
    assert json.dumps(vars(parser.parse_args(["--max-body-size", "1KiB"]))["max_body_size"]) == "1024"
