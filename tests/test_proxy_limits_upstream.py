"""What an upstream sends can't grow the gateway either: a client that never reads its stream, an SSE
line that never ends, a JSON answer far larger than any real one. A real llama-server produces none
of these, so a raw-socket peer plays it (the one place the gateway's tests use a fake upstream); the
gateway is a real ``llamatelemetry proxy`` process whose memory is read from /proc."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Callable

import httpx

from gateway_process import GatewayProcess

MIB = 1 << 20


class Peer:
    """A one-answer-per-connection HTTP server on a raw socket; ``answer(conn)`` writes the response."""

    def __init__(self, answer: Callable[["Peer", socket.socket], None]) -> None:
        self.answer = answer
        self.sent = 0  # bytes of body written so far (all connections)
        self.finished = threading.Event()  # an answer ended: written completely, or its connection closed
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            # Read the whole request body: closing a socket with unread bytes sends a reset, which can
            # discard the end of our own answer still in flight.
            head_part, _, body = head.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head_part.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                data = conn.recv(65536)
                if not data:
                    return
                body += data
            if head.startswith(b"GET "):
                # The gateway's own side requests: the default model (/v1/models), router detection (/props) and
                # its upstream health check (/health). Only the inference request gets the hostile answer.
                body = b'{"data":[{"id":"peer"}]}' if head.startswith(b"GET /v1/models") else b'{"status":"ok"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                return
            self.answer(self, conn)
        except OSError:
            pass
        finally:
            conn.close()
            self.finished.set()

    def write(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        self.listener.close()


def _endless_events(peer: Peer, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 1000 + b'"}}]}\n\n'
    block = event * 64
    while True:
        peer.write(conn, block)


def _endless_line(peer: Peer, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: ")
    block = b"y" * MIB
    for _ in range(300):  # 300 MiB, no newline
        peer.write(conn, block)


def _enormous_json(peer: Peer, conn: socket.socket) -> None:
    size = 300 * MIB
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                 + str(size).encode() + b"\r\n\r\n")
    peer.write(conn, b'{"choices":[],"pad":"')
    block = b"z" * MIB
    while peer.sent < size - 2:
        peer.write(conn, block[: min(MIB, size - 2 - peer.sent)])
    peer.write(conn, b'"}')


CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def _growth_mib(gateway: GatewayProcess, before_kib: int) -> float:
    return (gateway.memory_kib()[1] - before_kib) / 1024


def test_a_client_that_never_reads_its_stream_holds_no_memory():
    peer = Peer(_endless_events)
    gateway = GatewayProcess(peer.url)
    try:
        before, _ = gateway.memory_kib()
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            body = b'{"messages":[{"role":"user","content":"hi"}],"stream":true}'
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(1.0)
            stalled_at = peer.sent
            time.sleep(2.0)  # we read nothing: the gateway must stop reading upstream, not buffer
            growth = _growth_mib(gateway, before)
            print(f"client never reads: upstream wrote {peer.sent / MIB:.1f} MiB, gateway RSS +{growth:.1f} MiB")
            assert peer.sent < 32 * MIB, "the gateway kept reading an upstream its client does not read"
            assert peer.sent - stalled_at < 4 * MIB, "upstream writes did not stall"
            assert growth < 50
        assert peer.finished.wait(10), "the upstream connection stayed open after the client left"
        recent = gateway.wait_recorded(1)
        assert recent[0]["stream"] is True
    finally:
        gateway.stop()
        peer.close()


def test_an_sse_line_that_never_ends_is_relayed_but_not_buffered():
    peer = Peer(_endless_line)
    gateway = GatewayProcess(peer.url)
    try:
        before, _ = gateway.memory_kib()
        received = 0
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=CHAT, timeout=120) as response:
            for chunk in response.iter_raw():
                received += len(chunk)
        growth = _growth_mib(gateway, before)
        print(f"300 MiB SSE line relayed ({received / MIB:.0f} MiB), gateway RSS +{growth:.1f} MiB")
        assert received == len(b"data: ") + 300 * MIB  # every byte relayed
        assert growth < 60, f"the gateway grew by {growth:.0f} MiB relaying one endless line"
        item = gateway.wait_recorded(1)[0]  # the request is still recorded (its span ended)
        assert item["endpoint"] == "/v1/chat/completions" and item["status"] == 200
    finally:
        gateway.stop()
        peer.close()


def test_an_enormous_json_answer_is_relayed_whole_without_being_held():
    peer = Peer(_enormous_json)
    gateway = GatewayProcess(peer.url)
    try:
        before, _ = gateway.memory_kib()
        digest = hashlib.sha256()
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={"messages": []}, timeout=120) as response:
            assert response.headers["content-length"] == str(300 * MIB)
            for chunk in response.iter_raw():
                digest.update(chunk)
        growth = _growth_mib(gateway, before)
        expected = hashlib.sha256(b'{"choices":[],"pad":"' + b"z" * (300 * MIB - len(b'{"choices":[],"pad":"') - 2) + b'"}')
        print(f"300 MiB JSON answer relayed, gateway RSS +{growth:.1f} MiB")
        assert digest.hexdigest() == expected.hexdigest(), "the body was not relayed byte for byte"
        assert growth < 80, f"the gateway grew by {growth:.0f} MiB relaying one large answer"
        item = gateway.wait_recorded(1)[0]
        assert item["status"] == 200 and item["error_type"] is None
    finally:
        gateway.stop()
        peer.close()
