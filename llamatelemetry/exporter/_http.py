"""A minimal asyncio HTTP/1.1 GET client: one short-lived connection per request, bounded reads.

Why not httpx here: per scrape the exporter makes a few tiny GETs to loopback llama-servers;
measured on 2 cores, ``httpx.AsyncClient`` spends ~2 ms per GET, this ~0.25 ms of CPU (about
half of it the kernel's loopback TCP work). And why
``Connection: close``: llama-server serves HTTP from a small thread pool (``n_parallel + 2``
threads by default) and an idle keep-alive connection pins one of those threads, so pooled
connections from the exporter would take capacity away from real clients.

Plain HTTP to an IP address drives a non-blocking socket from the loop's reader/writer
callbacks (:class:`_SocketGet`): one future per GET, no task. :func:`start_get` starts a GET at
once, so a caller can start every GET of a scrape and then await them one by one without
``gather``. HTTPS (and host names, which need DNS) use asyncio streams in a task.
Handles Content-Length, chunked and read-to-EOF bodies, and a byte cap.

Example::

    status, body = await http_get("http://127.0.0.1:8080/metrics", max_bytes=1 << 20)
    pending = start_get("http://127.0.0.1:8080/slots", max_bytes=1 << 20, deadline=loop.time() + 2)
    status, body = await pending
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import ssl
import time
from typing import Any, Callable, Coroutine, Generator, TypeVar
from urllib.parse import urlsplit

_MAX_HEADER_BYTES = 64 * 1024
T = TypeVar("T")


class HTTPFailure(Exception):
    """No usable HTTP answer (connection refused/reset, malformed answer)."""


class ResponseTooLarge(Exception):
    """The answer is bigger than the byte cap."""


_SSL_CONTEXT: ssl.SSLContext | None = None


def _ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:  # created once: building a default context costs ~10 ms
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], max_bytes: int) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        size = 0
        while True:
            line = await reader.readline()
            try:
                chunk = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPFailure("malformed chunked encoding") from None
            if chunk == 0:
                return b"".join(parts)
            size += chunk
            if size > max_bytes:
                raise ResponseTooLarge(f"response exceeded the {max_bytes}-byte cap")
            parts.append(await reader.readexactly(chunk))
            await reader.readexactly(2)  # CRLF after each chunk
    length = headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise HTTPFailure(f"bad Content-Length {length!r}")
        n = int(length)
        if n > max_bytes:
            raise ResponseTooLarge(f"response is {n} bytes, over the {max_bytes}-byte cap")
        return await reader.readexactly(n)
    body = await reader.read(max_bytes + 1)  # no length: read to EOF, one byte past the cap to detect it
    while len(body) <= max_bytes:
        more = await reader.read(max_bytes + 1 - len(body))
        if not more:
            return body
        body += more
    raise ResponseTooLarge(f"response exceeded the {max_bytes}-byte cap")


async def _http_get_streams(url: str, headers: dict[str, str] | None = None, *, max_bytes: int) -> tuple[int, bytes]:
    """The asyncio-streams implementation, used for HTTPS (TLS needs the transport machinery)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(host, port, ssl=_ssl_context() if https else None, limit=_MAX_HEADER_BYTES)
    try:
        host_header = f"[{host}]" if ":" in host else host
        lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            status_line = await reader.readline()
            fields = status_line.split(None, 2)
            if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
                raise HTTPFailure(f"not an HTTP answer: {status_line[:60]!r}" if status_line else "server closed the connection without answering")
            status = int(fields[1])
            resp_headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                resp_headers[name.strip().lower()] = value.strip()
            return status, await _read_body(reader, resp_headers, max_bytes)
        except (asyncio.LimitOverrunError, ValueError) as exc:  # a header line longer than the limit
            raise HTTPFailure(f"malformed HTTP answer ({exc})") from None
        except asyncio.IncompleteReadError:
            raise HTTPFailure("connection closed in the middle of the answer") from None
    finally:
        writer.close()


def _request_bytes(host: str, port: int, target: str, headers: dict[str, str] | None) -> bytes:
    host_header = f"[{host}]" if ":" in host else host
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, _, rest = head.partition(b"\r\n")
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise HTTPFailure(f"not an HTTP answer: {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for line in rest.decode("latin-1").split("\r\n"):  # one decode for the whole head
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(fields[1]), headers


def _dechunk(data: bytes, max_bytes: int) -> bytes:
    out: list[bytes] = []
    size = pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise HTTPFailure("connection closed in the middle of a chunked answer")
        try:
            n = int(data[pos:end].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HTTPFailure("malformed chunked encoding") from None
        if n == 0:
            return b"".join(out)
        size += n
        if size > max_bytes:
            raise ResponseTooLarge(f"response exceeded the {max_bytes}-byte cap")
        chunk = data[end + 2 : end + 2 + n]
        if len(chunk) < n:
            raise HTTPFailure("connection closed in the middle of a chunked answer")
        out.append(chunk)
        pos = end + 2 + n + 2


class PendingGet:
    """A GET that is already under way; ``await`` it for ``(status, body)``.

    ``finished`` is the ``time.perf_counter()`` at which the answer (or the failure) came, so a
    caller awaiting many GETs one after the other still sees when each one really ended (0.0
    until the loop ran the future's callbacks: see :meth:`finished_at`).
    Errors: HTTPFailure, ResponseTooLarge, OSError, or ``asyncio.TimeoutError`` past the deadline.
    """

    def __init__(self, future: "asyncio.Future[tuple[int, bytes]]", deadline: float | None) -> None:
        self.future = future
        self.deadline = deadline
        self.finished = 0.0
        future.add_done_callback(self._stamp)

    def _stamp(self, _: object) -> None:
        self.finished = time.perf_counter()

    def finished_at(self) -> float:
        """When the GET ended; "now" if it failed so early that no callback has run yet."""
        return self.finished or time.perf_counter()

    def discard(self) -> None:
        """Stop caring about this GET (e.g. the scrape was cancelled) without leaving an
        un-retrieved exception for asyncio to complain about."""
        if not self.future.cancel() and not self.future.cancelled():
            self.future.exception()

    def __await__(self) -> Generator[Any, None, tuple[int, bytes]]:
        return self.future.__await__()


class _SocketGet:
    """One plain-HTTP GET on a non-blocking socket, driven by the loop's reader/writer callbacks.

    Why not ``loop.sock_connect`` / ``sock_sendall`` / ``sock_recv``: each of those awaits
    builds a future and registers the descriptor again, and the caller needs a task per GET to
    run them concurrently; on the exporter's scrape path that was ~0.4 ms of CPU per GET. Here
    one future per GET is all the asyncio machinery, and the deadline is one timer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int, address: tuple, request: bytes,
                 max_bytes: int, deadline: float | None) -> None:
        self._loop = loop
        self.future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._request = request
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._status = 0
        self._headers: dict[str, str] | None = None  # set once the head is parsed
        self._length: int | None = None
        self._watching: str | None = None  # "reader" / "writer": what the loop watches the socket for
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._fd = self._sock.fileno()
        self._sock.setblocking(False)
        self._timer = loop.call_at(deadline, self._timed_out) if deadline is not None else None
        self.future.add_done_callback(self._cleanup)  # also runs when the caller cancels
        try:
            self._sock.connect(address)
        except BlockingIOError:  # the usual case, even on loopback: wait until writable
            self._watch_writable(self._on_connected)
        except OSError as exc:
            self._fail(exc)
        else:
            self._send()

    # -- completion -----------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def _done(self, body: bytes) -> None:
        if not self.future.done():
            self.future.set_result((self._status, body))

    def _timed_out(self) -> None:
        self._fail(asyncio.TimeoutError())

    def _cleanup(self, _: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._unwatch()
        self._sock.close()

    # -- the descriptor's registration: tracked, because removing an unregistered one is not free
    def _watch_writable(self, callback: Callable[[], None]) -> None:
        self._loop.add_writer(self._fd, callback)
        self._watching = "writer"

    def _unwatch(self) -> None:
        if self._watching == "writer":
            self._loop.remove_writer(self._fd)
        elif self._watching == "reader":
            self._loop.remove_reader(self._fd)
        self._watching = None

    # -- connect and send ---------------------------------------------------------------------------
    def _on_connected(self) -> None:
        self._unwatch()
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(ConnectionRefusedError(err, os.strerror(err)) if err == errno.ECONNREFUSED else OSError(err, os.strerror(err)))
        else:
            self._send()

    def _send(self) -> None:
        try:
            sent = self._sock.send(self._request)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fail(exc)
            return
        self._request = self._request[sent:]
        if self._request:  # a request of a few hundred bytes almost never needs this
            self._watch_writable(self._on_writable)
        else:
            self._loop.add_reader(self._fd, self._on_readable)
            self._watching = "reader"

    def _on_writable(self) -> None:
        self._unwatch()
        self._send()

    # -- receive ------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        try:
            self._feed(data)
        except (HTTPFailure, ResponseTooLarge) as exc:
            self._fail(exc)

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._headers is None:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                if not data:
                    raise HTTPFailure("server closed the connection without answering" if not buf else "connection closed in the middle of the answer")
                if len(buf) > _MAX_HEADER_BYTES:
                    raise HTTPFailure("malformed HTTP answer (headers too long)")
                return
            self._status, self._headers = _parse_head(bytes(buf[:head_end]))
            del buf[: head_end + 4]
            self._length = _declared_length(self._headers, self._max_bytes)
        length = self._length
        if length is not None and len(buf) >= length:
            self._done(bytes(buf[:length]))
        elif not data:  # EOF
            self._done(_body_at_eof(buf, length, self._headers, self._max_bytes))
        elif len(buf) > self._max_bytes + (self._max_bytes // 8 + 1024 if length is None else 0):
            # chunk framing adds a little; allow for it before declaring the answer too large
            raise ResponseTooLarge(f"response exceeded the {self._max_bytes}-byte cap")


def _declared_length(headers: dict[str, str], max_bytes: int) -> int | None:
    """The Content-Length to read up to, or None when the body is chunked or runs to EOF."""
    declared = headers.get("content-length")
    if declared is None or "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    if not declared.isdigit():
        raise HTTPFailure(f"bad Content-Length {declared!r}")
    length = int(declared)
    if length > max_bytes:
        raise ResponseTooLarge(f"response is {length} bytes, over the {max_bytes}-byte cap")
    return length


def _body_at_eof(buf: bytearray, length: int | None, headers: dict[str, str], max_bytes: int) -> bytes:
    if length is not None:
        raise HTTPFailure("connection closed in the middle of the answer")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(bytes(buf), max_bytes)
    if len(buf) > max_bytes:
        raise ResponseTooLarge(f"response exceeded the {max_bytes}-byte cap")
    return bytes(buf)


async def _resolved_get(host: str, port: int, request: bytes, max_bytes: int) -> tuple[int, bytes]:
    """Resolve a host name (in the loop's executor, so DNS never blocks the loop), then GET."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    return await _SocketGet(loop, family, address, request, max_bytes, None).future


async def _with_deadline(coro: Coroutine[Any, Any, T], deadline: float | None) -> T:
    if deadline is None:
        return await coro
    return await asyncio.wait_for(coro, max(0.0, deadline - asyncio.get_running_loop().time()))


def start_get(url: str, headers: dict[str, str] | None = None, *, max_bytes: int, deadline: float | None = None) -> PendingGet:
    """Start a GET of ``url`` now and return it; ``deadline`` is in ``loop.time()`` seconds.

    Must be called on the running loop. Plain HTTP to an IP address (the usual sidecar
    case) costs one future and a few callbacks; a host name or HTTPS runs as a task.
    """
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if https:
        return PendingGet(asyncio.ensure_future(_with_deadline(_http_get_streams(url, headers, max_bytes=max_bytes), deadline)), deadline)
    request = _request_bytes(host, port, target, headers)
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return PendingGet(asyncio.ensure_future(_with_deadline(_resolved_get(host, port, request, max_bytes), deadline)), deadline)
    return PendingGet(_SocketGet(loop, family, (host, port), request, max_bytes, deadline).future, deadline)


async def http_get(url: str, headers: dict[str, str] | None = None, *, max_bytes: int) -> tuple[int, bytes]:
    """GET ``url`` and return ``(status, body)``; raises HTTPFailure, ResponseTooLarge or OSError."""
    return await start_get(url, headers, max_bytes=max_bytes)
