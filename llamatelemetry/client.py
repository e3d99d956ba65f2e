"""``LlamaCppClient`` and ``AsyncLlamaCppClient``: typed clients for every llama-server endpoint.

Both clients share every request builder, parser, error mapping and retry rule; only the
line that sends bytes differs. Telemetry (an OpenTelemetry span and metrics per inference
call) is built in and uses the application's tracer and meter providers.

Example::

    from llamatelemetry import LlamaCppClient

    with LlamaCppClient("http://127.0.0.1:8080") as client:
        resp = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
        print(resp.choices[0].message.content, resp.usage.total_tokens)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from . import _calls, errors, types
from .telemetry.accumulate import Accumulator, accumulator_for
from ._base import (
    DEFAULT_LIMITS, DEFAULT_TIMEOUT, Call, RetryPolicy, Settings, decode_json, default_headers, resolve_settings,
    transport_error,
)
from ._resources import (
    AsyncChat, AsyncClientMethods, AsyncCompletions, AsyncEmbeddings, AsyncLora, AsyncMessages, AsyncMetrics, AsyncModels,
    AsyncProps, AsyncResource, AsyncSlots, Chat, ClientMethods, Completions, Embeddings, Lora, Messages, Metrics, Models,
    Props, Resource, Slots,
)
from .streaming import AsyncStream, Stream
from .telemetry.finisher import CLOSE_TIMEOUT, TaskFinisher, ThreadFinisher
from .telemetry.instrumentation import Telemetry
from .telemetry.lookups import AsyncLookups, Lookups, ServerModel
from .telemetry.recorder import AsyncSideRequests, CallRecord, SideRequests, SyncSideRequests

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider


__all__ = ["AsyncLlamaCppClient", "LlamaCppClient", "instrument", "uninstrument"]

logger = logging.getLogger("llamatelemetry")
TimeoutTypes = float | httpx.Timeout | None


def _accumulator_for(call: "Call[Any]") -> Accumulator:
    return accumulator_for(call.path, show_usage_chunk=call.caller_wants_usage, show_timings=call.caller_wants_timings)


#: Health probes answer fast or not at all.
HEALTH_TIMEOUT = 5.0


def _not_ready(base_url: str, timeout: float, health: types.Health) -> errors.APITimeoutError:
    return errors.APITimeoutError(
        f"llama-server at {base_url} not ready after {timeout:.0f}s (last status: {health.status}: "
        f"{health.message}); check that it is running and its model loads", url=base_url + "/health",
    )


def _health_from(status_code: int | None, body: bytes, error: str = "") -> types.Health:
    """Tell ok / loading / unreachable / error apart from one GET /health."""
    if status_code is None:
        return types.Health(status="unreachable", message=error)
    if status_code == 200:
        return types.Health(status="ok", message="ok", http_status=200)
    message = body[:300].decode("utf-8", "replace")
    if status_code == 503:
        return types.Health(status="loading", message=f"model loading: {message}", http_status=503)
    return types.Health(status="error", message=message, http_status=status_code)


# --- health (differs between the clients: it never raises) ----------------------------------

class _Health(Resource):
    def check(self) -> types.Health:
        """Probe ``GET /health``: status ``ok``, ``loading`` (503), ``unreachable`` or ``error``. Never raises.

        Example::

            if client.health.check().status == "loading": ...
        """
        return self._client._probe_health()

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> types.Health:
        """Poll ``/health`` until the model is loaded; raise :class:`~llamatelemetry.errors.APITimeoutError` after ``timeout`` s.

        Example::

            client.health.wait_until_ready(timeout=120)
        """
        deadline = time.monotonic() + timeout
        while True:
            health = self.check()
            if health.ok:
                return health
            if time.monotonic() >= deadline:
                raise _not_ready(self._client.base_url, timeout, health)
            time.sleep(interval)


class _ClientBase:
    """Settings, telemetry and the default-model cache shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        max_retries: int | None,
        telemetry: bool,
        tracer_provider: "TracerProvider | None",
        meter_provider: "MeterProvider | None",
        capture_content: bool | None,
    ) -> None:
        self._settings: Settings = resolve_settings(base_url, api_key, max_retries)
        self._headers = default_headers(self._settings)
        #: The server's model, for spans of calls that name none (looked up once, before such a call).
        self._model = ServerModel()
        self._telemetry: Telemetry | None = None
        if telemetry:
            self._telemetry = Telemetry(
                self._settings.base_url, tracer_provider=tracer_provider, meter_provider=meter_provider, capture_content=capture_content,
            )

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._settings.base_url!r})"

    def _side_requests(self, model: str | None) -> SideRequests:
        """The telemetry's requests to this client's server for a call of ``model`` (its tokenizer and context
        size behind a router), and the finisher that makes them off the caller's path."""
        raise NotImplementedError

    def _start_record(self, call: "Call[Any]") -> CallRecord | None:
        if call.operation is None or self._telemetry is None:
            return None
        model = (call.body or {}).get("model")
        model = model if isinstance(model, str) else None
        record = self._telemetry.start(call.path, call.body, stream=call.stream, operation=call.operation,
                                       default_model=self._model.model, side_requests=self._side_requests(model))
        if record is not None:
            _calls.request_token_positions(call)  # only when telemetry records: nobody else needs them
        return record

    def _needs_default_model(self, call: "Call[Any]") -> bool:
        return (
            call.operation is not None and self._telemetry is not None
            and isinstance(call.body, dict) and "model" not in call.body
            and self._model.due()  # last: it marks the lookup as made
        )

    def _url(self, path: str) -> str:
        return self._settings.base_url + path

    @staticmethod
    def _model_status_from(exc: errors.RouterModelError, call: "Call[Any]", models: object | None) -> None:
        """Fill a router error's model (named by the call) and its state (from the router's ``/v1/models``)."""
        if exc.model is None:
            named = (call.body or {}).get("model") or (call.params or {}).get("model")
            exc.model = named if isinstance(named, str) else None
        if exc.model is None or not isinstance(models, dict):
            return
        try:
            for model in types.ModelList.from_dict(models).data:
                if exc.model == model.id or exc.model in (model.aliases or []):
                    exc.model_status = model.status
        except Exception:  # noqa: BLE001 - the error itself matters more than its detail
            pass

    def _parse(self, call: "Call[Any]", content: bytes) -> Any:
        if call.raw_text:
            return call.parse(content.decode("utf-8", "replace"))
        return call.parse(decode_json(content, call.path))



class LlamaCppClient(_ClientBase, ClientMethods):
    """Synchronous client for llama-server.

    Args:
        base_url: server URL; else ``$LLAMA_SERVER_URL``; else ``http://127.0.0.1:8080``.
        api_key: sent as ``Authorization: Bearer`` (for ``--api-key`` servers); else ``$LLAMA_API_KEY``.
        timeout: seconds or an ``httpx.Timeout`` (default: 600 s, 5 s to connect).
        max_retries: retries for connection failures before any response byte and for 503
            "loading model" answers (default 2, exponential backoff). Never after a response started.
        http_client: your own ``httpx.Client`` (not closed by :meth:`close`).
        telemetry: create an OpenTelemetry span and metrics per inference call (default on;
            cheap until the application configures an OpenTelemetry SDK; see the README benchmarks).
        tracer_provider / meter_provider: providers to use instead of the global ones.
        capture_content: record prompts and responses on spans (default: off, or
            ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).

    Example::

        client = LlamaCppClient("http://127.0.0.1:8080")
        print(client.chat_completion(messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        http_client: httpx.Client | None = None,
        telemetry: bool = True,
        tracer_provider: "TracerProvider | None" = None,
        meter_provider: "MeterProvider | None" = None,
        capture_content: bool | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, telemetry, tracer_provider, meter_provider, capture_content)
        self._owns_http = http_client is None
        # Our own pool carries the default headers, so requests don't merge them on every call.
        self._http = http_client or httpx.Client(timeout=timeout, headers=self._headers, limits=DEFAULT_LIMITS)
        self._request_headers = None if self._owns_http else self._headers
        self._lookups = Lookups(self._http, self._settings.base_url, self._request_headers)
        self._finisher = ThreadFinisher()
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.messages = Messages(self)
        self.embeddings = Embeddings(self)
        self.models = Models(self)
        self.props = Props(self)
        self.slots = Slots(self)
        self.lora = Lora(self)
        self.metrics = Metrics(self)
        self.health = _Health(self)


    # -- plumbing --

    def _send(self, call: "Call[Any]", trace_headers: dict[str, str] | None) -> httpx.Response:
        headers = self._request_headers
        if trace_headers:
            headers = {**headers, **trace_headers} if headers else trace_headers
        request = self._http.build_request(call.method, self._url(call.path), json=call.body, params=call.params, headers=headers)
        retry = RetryPolicy(self._settings, call.path)
        while True:
            try:
                response = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                time.sleep(retry.after_transport_error(exc))
                continue
            if response.status_code < 400:
                return response
            try:
                content = response.read()
            except httpx.HTTPError:
                content = b""
            finally:
                response.close()
            time.sleep(retry.after_status(response.status_code, content, response.headers))

    def _read(self, response: httpx.Response, path: str) -> bytes:
        try:
            return response.read()
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._settings, path) from exc
        finally:
            response.close()

    def _execute(self, call: "Call[Any]") -> Any:
        if self._needs_default_model(call):
            self._lookup_default_model()
        record = self._start_record(call)
        # The span is current while the request runs: httpx-level spans and log records nest under it.
        token = record.attach() if record is not None else None
        try:
            response = self._send(call, record.trace_headers if record is not None else None)
            if call.stream:
                return Stream(response, _accumulator_for(call), call.path, record)
            result = self._parse(call, self._read(response, call.path))
        except BaseException as exc:
            if record is not None:
                record.fail(exc)
            if isinstance(exc, errors.RouterModelError):
                self._model_status_from(exc, call, self._lookups.models())
            raise
        finally:
            if record is not None:
                record.detach(token)
        if record is not None:
            record.end(result)
        return call.unwrap(result) if call.unwrap is not None else result

    def _lookup_default_model(self) -> None:
        self._model.remember(self._lookups.model())

    def _count_tokens(self, text: str, model: str | None = None) -> int | None:
        """Exact token count of ``text`` by the server's tokenizer (telemetry; None on any failure)."""
        return self._lookups.count_tokens(text, model)

    def _probe_health(self) -> types.Health:
        try:
            response = self._http.get(self._url("/health"), headers=self._request_headers, timeout=HEALTH_TIMEOUT)
        except httpx.HTTPError as exc:
            return _health_from(None, b"", str(transport_error(exc, self._settings, "/health")))
        return _health_from(response.status_code, response.content)

    def _side_requests(self, model: str | None) -> SideRequests:
        count = self._count_tokens if model is None else functools.partial(self._count_tokens, model=model)
        return SyncSideRequests(count, defer=self._finisher.submit,
                                context_size=functools.partial(self._lookups.context_size, model))

    def flush_telemetry(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait until the telemetry of finished calls is recorded; True if nothing is left pending.

        A call whose reasoning-token count needs a ``/tokenize`` request returns its result at
        once; that request and the span's end run on a background thread. Call this before
        reading spans right after a call (tests, short scripts). ``close()`` and the
        interpreter's exit wait too (bounded by ``timeout`` / 5 s).

        Example::

            resp = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
            client.flush_telemetry()  # the call's span has ended, reasoning count included
        """
        return self._finisher.flush(timeout)

    def close(self) -> None:
        """Wait (at most 5 s) for pending telemetry, then close the connection pool (unless you passed your own ``http_client``)."""
        self._finisher.flush(CLOSE_TIMEOUT)
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> "LlamaCppClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- async --------------------------------------------------------------------------------------

class _AsyncHealth(AsyncResource):
    async def check(self) -> types.Health:
        """Probe ``GET /health`` (see :meth:`LlamaCppClient.health.check`)."""
        return await self._client._probe_health()

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.25) -> types.Health:
        """Poll ``/health`` until the model is loaded; raise ``APITimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            health = await self.check()
            if health.ok:
                return health
            if time.monotonic() >= deadline:
                raise _not_ready(self._client.base_url, timeout, health)
            await asyncio.sleep(interval)


class AsyncLlamaCppClient(_ClientBase, AsyncClientMethods):
    """Asynchronous client for llama-server; the same surface as :class:`LlamaCppClient`, awaited.

    Example::

        async with AsyncLlamaCppClient() as client:
            resp = await client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
            async for chunk in await client.chat.completions.create(messages=msgs, stream=True): ...
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        max_retries: int | None = None,
        http_client: httpx.AsyncClient | None = None,
        telemetry: bool = True,
        tracer_provider: "TracerProvider | None" = None,
        meter_provider: "MeterProvider | None" = None,
        capture_content: bool | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, telemetry, tracer_provider, meter_provider, capture_content)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout, headers=self._headers, limits=DEFAULT_LIMITS)
        self._request_headers = None if self._owns_http else self._headers
        self._lookups = AsyncLookups(self._http, self._settings.base_url, self._request_headers)
        self._finisher = TaskFinisher()
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.messages = AsyncMessages(self)
        self.embeddings = AsyncEmbeddings(self)
        self.models = AsyncModels(self)
        self.props = AsyncProps(self)
        self.slots = AsyncSlots(self)
        self.lora = AsyncLora(self)
        self.metrics = AsyncMetrics(self)
        self.health = _AsyncHealth(self)


    async def _send(self, call: "Call[Any]", trace_headers: dict[str, str] | None) -> httpx.Response:
        headers = self._request_headers
        if trace_headers:
            headers = {**headers, **trace_headers} if headers else trace_headers
        request = self._http.build_request(call.method, self._url(call.path), json=call.body, params=call.params, headers=headers)
        retry = RetryPolicy(self._settings, call.path)
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                await asyncio.sleep(retry.after_transport_error(exc))
                continue
            if response.status_code < 400:
                return response
            try:
                content = await response.aread()
            except httpx.HTTPError:
                content = b""
            finally:
                await response.aclose()
            await asyncio.sleep(retry.after_status(response.status_code, content, response.headers))

    async def _read(self, response: httpx.Response, path: str) -> bytes:
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._settings, path) from exc
        finally:
            await response.aclose()

    async def _execute(self, call: "Call[Any]") -> Any:
        if self._needs_default_model(call):
            await self._lookup_default_model()
        record = self._start_record(call)
        token = record.attach() if record is not None else None
        try:
            response = await self._send(call, record.trace_headers if record is not None else None)
            if call.stream:
                return AsyncStream(response, _accumulator_for(call), call.path, record)
            result = self._parse(call, await self._read(response, call.path))
        except BaseException as exc:
            if record is not None:
                record.fail(exc)
            if isinstance(exc, errors.RouterModelError):
                self._model_status_from(exc, call, await self._lookups.models())
            raise
        finally:
            if record is not None:
                record.detach(token)
        if record is not None:
            await record.aend(result)
        return call.unwrap(result) if call.unwrap is not None else result

    async def _lookup_default_model(self) -> None:
        self._model.remember(await self._lookups.model())

    async def _count_tokens(self, text: str, model: str | None = None) -> int | None:
        """Exact token count of ``text`` by the server's tokenizer (telemetry; None on any failure)."""
        return await self._lookups.count_tokens(text, model)

    async def _probe_health(self) -> types.Health:
        try:
            response = await self._http.get(self._url("/health"), headers=self._request_headers, timeout=HEALTH_TIMEOUT)
        except httpx.HTTPError as exc:
            return _health_from(None, b"", str(transport_error(exc, self._settings, "/health")))
        return _health_from(response.status_code, response.content)

    def _side_requests(self, model: str | None) -> SideRequests:
        count = self._count_tokens if model is None else functools.partial(self._count_tokens, model=model)
        return AsyncSideRequests(count, defer=self._finisher.submit,
                                 context_size=functools.partial(self._lookups.context_size, model))

    async def flush_telemetry(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait until the telemetry of finished calls is recorded; True if nothing is left pending.

        A call whose reasoning-token count needs a ``/tokenize`` request returns its result at
        once; that request and the span's end run in a background task. Await this before
        reading spans right after a call; ``close()`` awaits it too (bounded by ``timeout`` / 5 s).

        Example::

            resp = await client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
            await client.flush_telemetry()
        """
        return await self._finisher.flush(timeout)

    async def close(self) -> None:
        """Wait (at most 5 s) for pending telemetry, then close the connection pool (unless you passed your own ``http_client``)."""
        await self._finisher.flush(CLOSE_TIMEOUT)
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncLlamaCppClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# --- turning telemetry on and off for an existing client -----------------------------------------

#: Either client: :func:`instrument` returns the very type it was given.
ClientT = TypeVar("ClientT", LlamaCppClient, AsyncLlamaCppClient)


def instrument(
    client: ClientT,
    *,
    tracer_provider: "TracerProvider | None" = None,
    meter_provider: "MeterProvider | None" = None,
    capture_content: bool | None = None,
) -> ClientT:
    """Turn on (or re-configure) telemetry for an existing client, sync or async; returns it, typed as it was.

    Example::

        client = llamatelemetry.instrument(LlamaCppClient(telemetry=False), tracer_provider=provider)
    """
    client._telemetry = Telemetry(client.base_url, tracer_provider=tracer_provider, meter_provider=meter_provider,
                                  capture_content=capture_content)
    return client


def uninstrument(client: ClientT) -> ClientT:
    """Turn telemetry off for a client; returns it.

    Example::

        llamatelemetry.uninstrument(client)  # no spans or metrics from its next call on
    """
    client._telemetry = None
    return client
