"""Server-sent-event streams: :class:`Stream` (sync) and :class:`AsyncStream`.

A stream is an iterator of typed chunks and a context manager. It always closes the HTTP
response and ends its telemetry exactly once: when exhausted, on ``break`` + ``close()`` /
leaving ``with``, on an error, or when an abandoned stream is garbage-collected.

Example::

    with client.chat.completions.create(messages=msgs, stream=True) as stream:
        for chunk in stream:
            print(chunk.choices[0].delta.content or "", end="")
        completion = stream.get_final_completion()
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Generic, Iterator, TypeVar, overload

import httpx

from . import errors, types
from .telemetry.accumulate import Accumulator
from .telemetry.sse import Done, decode_sse_line

if TYPE_CHECKING:
    from .telemetry.recorder import CallRecord

T = TypeVar("T")


class _StreamBase(Generic[T]):
    def __init__(self, response: httpx.Response, accumulator: Accumulator, path: str, record: "CallRecord | None") -> None:
        self.response = response
        self._acc = accumulator
        self._path = path
        self._record = record
        self._closed = False
        self._error: BaseException | None = None
        #: Closed by the garbage collector: telemetry must not make network calls.
        self._finalizing = False

    def _handle(self, line: str) -> tuple[bool, T | None]:
        """Process one line: (stream finished?, chunk to hand to the caller or None)."""
        data = decode_sse_line(line, self._path)
        if data is None:
            return False, None
        if isinstance(data, Done):
            self._acc.finished = True
            return True, None
        visible = self._acc.add(data)
        if self._acc.finished:  # message_stop
            return True, self._acc.chunk_type.from_dict(data) if visible else None  # type: ignore[return-value]
        return False, self._acc.chunk_type.from_dict(data) if visible else None  # type: ignore[return-value]

    def _interrupted(self, exc: BaseException | None) -> errors.StreamInterruptedError:
        why = f" ({exc!r})" if exc else ""
        return errors.StreamInterruptedError(
            f"the stream from {self._path} ended before llama-server finished it{why}; "
            f"received {self._acc.chunks} chunks. The server may have crashed or been restarted; check its log"
        )

    @property
    def completed(self) -> bool:
        """True once the server's end-of-stream marker was received."""
        return self._acc.finished


class Stream(_StreamBase[T]):
    """A synchronous stream of chunks (see module docs)."""

    def __init__(self, response: httpx.Response, accumulator: Accumulator, path: str, record: "CallRecord | None") -> None:
        super().__init__(response, accumulator, path, record)
        self._iterator = self._iterate()

    def _iterate(self) -> Iterator[T]:
        try:
            for line in self.response.iter_lines():
                done, chunk = self._handle(line)
                if chunk is not None:
                    yield chunk
                if done:
                    break
            if not self._acc.finished:
                raise self._interrupted(None)
        except httpx.HTTPError as exc:
            self._error = self._interrupted(exc)
            raise self._error from exc
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._iterator)

    @overload
    def get_final_completion(self: "Stream[types.ChatCompletionChunk]") -> types.ChatCompletion: ...
    @overload
    def get_final_completion(self: "Stream[types.Completion]") -> types.Completion: ...
    @overload
    def get_final_completion(self: "Stream[types.MessageStreamEvent]") -> types.Message: ...

    def get_final_completion(self) -> Any:
        """Read the rest of the stream and return the accumulated final result (e.g. a ``ChatCompletion``)."""
        for _ in self:
            pass
        return self._acc.final()

    def close(self) -> None:
        """Close the HTTP response and end telemetry; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            self.response.close()
        finally:
            if self._record is not None:
                self._record.end_stream(self._acc, self._error, finalizing=self._finalizing)

    def __enter__(self) -> "Stream[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream still ends its span (marked as cut short) and frees its connection.
        if not getattr(self, "_closed", True):
            self._finalizing = True
            self.close()


#: Closes of abandoned async responses still running (kept referenced so they are not collected mid-way).
_pending_closes: set["asyncio.Task[None]"] = set()


def _close_abandoned(response: httpx.Response) -> None:
    """Runs on the stream's event loop: close an abandoned response so its pooled connection is released."""
    task = asyncio.get_running_loop().create_task(response.aclose())
    _pending_closes.add(task)
    task.add_done_callback(_pending_closes.discard)


class AsyncStream(_StreamBase[T]):
    """An asynchronous stream of chunks (``async for``; ``async with``)."""

    def __init__(self, response: httpx.Response, accumulator: Accumulator, path: str, record: "CallRecord | None") -> None:
        super().__init__(response, accumulator, path, record)
        self._lines: AsyncIterator[str] | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (e.g. trio): an abandoned stream's connection is left to httpx
            self._loop = None

    def __aiter__(self) -> "AsyncStream[T]":
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        try:
            while True:
                try:
                    line = await self._lines.__anext__()
                except StopAsyncIteration:
                    if not self._acc.finished:
                        raise self._interrupted(None) from None
                    raise
                done, chunk = self._handle(line)
                if done:
                    await self.aclose()
                    if chunk is not None:
                        return chunk
                    raise StopAsyncIteration
                if chunk is not None:
                    return chunk
        except StopAsyncIteration:
            await self.aclose()
            raise
        except httpx.HTTPError as exc:
            self._error = self._interrupted(exc)
            await self.aclose()
            raise self._error from exc
        except BaseException as exc:
            self._error = exc
            await self.aclose()
            raise

    @overload
    async def get_final_completion(self: "AsyncStream[types.ChatCompletionChunk]") -> types.ChatCompletion: ...
    @overload
    async def get_final_completion(self: "AsyncStream[types.Completion]") -> types.Completion: ...
    @overload
    async def get_final_completion(self: "AsyncStream[types.MessageStreamEvent]") -> types.Message: ...

    async def get_final_completion(self) -> Any:
        """Read the rest of the stream and return the accumulated final result (e.g. a ``ChatCompletion``)."""
        async for _ in self:
            pass
        return self._acc.final()

    async def aclose(self) -> None:
        """Close the HTTP response and end telemetry; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.response.aclose()
        finally:
            if self._record is not None:
                await self._record.aend_stream(self._acc, self._error)

    async def __aenter__(self) -> "AsyncStream[T]":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # A finalizer cannot await: end the span without network calls, and hand the close of
        # the response to the stream's event loop. Without that close, httpx's pool keeps the
        # connection checked out forever (a stream dropped before its first read never frees it).
        if not getattr(self, "_closed", True):
            self._closed = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(_close_abandoned, self.response)
                except RuntimeError:  # the loop closed meanwhile
                    pass
            if self._record is not None:
                self._record.end_stream(self._acc, self._error, finalizing=True)
