"""What the gateway records about each forwarded request, through the same recorder as the client.

The forwarding edge (:mod:`.forward`) reports what happened — request parsed, upstream
unreachable, body answered, SSE bytes relayed, stream ended — to an :class:`Exchange`; the
exchange feeds llamatelemetry's one recorder (:class:`~llamatelemetry.telemetry.recorder.Recorder`,
the same code :class:`~llamatelemetry.LlamaCppClient` uses), which owns every span attribute and
GenAI metric, here with a SERVER span joined to the caller's ``traceparent`` and the
``gen_ai.server.*`` histograms. The gateway adds only what is about the *request*: who called
(:mod:`.clients`), the route and status on its request counter, and a line in ``/api/recent``.

Telemetry never breaks or delays forwarding: every method here swallows its own errors, a
non-streamed body is parsed after the client has its answer, and the end of each inference
call (which may count reasoning tokens with a ``/tokenize`` call to the same llama-server)
runs in a background task.

Example::

    observer = Observer(tracer_provider=tp, meter_provider=mp, http=upstream_client())
    exchange = observer.begin(scope, "http://127.0.0.1:8080", parsed_body)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Coroutine, Mapping

import httpx
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind

from .. import _calls
from .._base import resolve_settings
from ..errors import APIConnectionError, APIStatusError, StreamInterruptedError
from ..streaming import _DONE, decode_sse_line
from ..telemetry import semconv as sc
from ..telemetry.recorder import (
    Accumulator, CallRecord, EndedCall, Recorder, accumulator_for, context_from_headers, operation_for,
)
from .clients import CLIENT_NAME_HEADER, client_name
from .endpoints import http_route
from .recent import RecentRequest, RecentRequests

log = logging.getLogger("llamatelemetry.proxy")

METRIC_PROXY_REQUESTS = sc.METRIC_PROXY_REQUESTS
ATTR_MAX_TOKENS_RAISED_FROM = sc.PROXY_MAX_TOKENS_RAISED_FROM
#: A reasoning-token count must not keep a finished request's telemetry waiting for long.
TOKEN_COUNT_TIMEOUT = 2.0
#: How often to retry a failed lookup of the upstream's model (for requests that name none).
MODEL_LOOKUP_RETRY_SECONDS = 30.0


def parse_json_body(path: str, body: bytes) -> dict[str, Any] | None:
    """The JSON object of an inference request, or None (other paths, or a body we cannot parse)."""
    if not body or operation_for(path) is None:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None  # forwarded all the same; llama-server will say what is wrong with it
    return parsed if isinstance(parsed, dict) else None


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    # Lower-case names, first value wins (enough for User-Agent, X-Client-Name, traceparent, Authorization).
    found: dict[str, str] = {}
    for key, value in scope["headers"]:
        found.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return found


class Observer:
    """Process-wide telemetry state of the gateway: one recorder per upstream, the counter, recent requests."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        http: httpx.AsyncClient,
        recent: RecentRequests | None = None,
        capture_content: bool | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.capture_content = capture_content
        self.http = http
        self.recent = recent if recent is not None else RecentRequests()
        from .. import __version__

        # The recorder's meter (same name, version and schema): one instrumentation scope for all our metrics.
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, __version__, meter_provider, schema_url=sc.SCHEMA_URL)
        self.requests = meter.create_counter(
            METRIC_PROXY_REQUESTS, unit="{request}", description="Requests the gateway forwarded, inference or not.",
        )
        self._recorders: dict[str, Recorder] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: upstream -> its model id (from /v1/models), for requests that name none (as the client does).
        self._default_models: dict[str, str] = {}
        self._model_lookup_at: dict[str, float] = {}

    def recorder_for(self, upstream: str) -> Recorder:
        """The recorder for one upstream (its address and port are span and metric attributes)."""
        found = self._recorders.get(upstream)
        if found is None:
            settings = resolve_settings(upstream, None, 0)
            found = Recorder(server_address=settings.host, server_port=settings.port, tracer_provider=self.tracer_provider,
                             meter_provider=self.meter_provider, capture_content=self.capture_content, server_metrics=True)
            self._recorders[upstream] = found
        return found

    def default_model(self, upstream: str, authorization: str | None) -> str | None:
        """The upstream's model for requests that name none; looked up once in the background (None until then)."""
        found = self._default_models.get(upstream)
        if found is None and time.monotonic() - self._model_lookup_at.get(upstream, -MODEL_LOOKUP_RETRY_SECONDS) >= MODEL_LOOKUP_RETRY_SECONDS:
            self._model_lookup_at[upstream] = time.monotonic()
            self.spawn(self._look_up_model(upstream, authorization))
        return found

    async def _look_up_model(self, upstream: str, authorization: str | None) -> None:
        headers = {"authorization": authorization} if authorization else {}
        try:
            response = await self.http.get(upstream + "/v1/models", headers=headers, timeout=TOKEN_COUNT_TIMEOUT)
            response.raise_for_status()
            model = response.json()["data"][0]["id"]
            if isinstance(model, str) and model:
                self._default_models[upstream] = model
        except Exception:  # noqa: BLE001 - spans are then named by operation only; retried later
            log.debug("could not look up the model of %s", upstream, exc_info=True)

    def begin(self, scope: Mapping[str, Any], upstream: str, body: dict[str, Any] | None, *,
              max_tokens_raised_from: int | None = None) -> "Exchange":
        """Start observing one request (its span, if it is an inference call, starts now)."""
        return Exchange(self, scope, upstream, body, max_tokens_raised_from)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run telemetry work in the background (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for background telemetry to finish, e.g. before shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


class Exchange:
    """One forwarded request's telemetry (see module docs)."""

    def __init__(self, observer: Observer, scope: Mapping[str, Any], upstream: str, body: dict[str, Any] | None,
                 max_tokens_raised_from: int | None) -> None:
        self.observer = observer
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.upstream = upstream
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        headers = _headers(scope)
        self.user_agent = headers.get("user-agent")
        self.client = client_name(self.user_agent, headers.get(CLIENT_NAME_HEADER))
        self.authorization = headers.get("authorization")
        self.body = body
        self.stream = bool(body and body.get("stream"))
        self.status: int | None = None
        self.record: CallRecord | None = None
        self.trace_headers: dict[str, str] = {}
        self.accumulator: Accumulator | None = None
        self._line_buffer = b""
        self._unreadable = False
        self._stream_error: BaseException | None = None
        if operation_for(self.path) is not None:
            self._start_record(headers, max_tokens_raised_from)

    def _start_record(self, headers: dict[str, str], raised_from: int | None) -> None:
        span_attributes: dict[str, Any] = {sc.CLIENT_NAME: self.client}
        if self.user_agent:
            span_attributes[sc.USER_AGENT_ORIGINAL] = self.user_agent
        if raised_from is not None:
            span_attributes[ATTR_MAX_TOKENS_RAISED_FROM] = raised_from
        default_model = None
        if not (self.body or {}).get("model"):
            default_model = self.observer.default_model(self.upstream, self.authorization)
        self.record = self.observer.recorder_for(self.upstream).start(
            self.path, self.body, stream=self.stream, kind=SpanKind.SERVER, parent=context_from_headers(headers),
            default_model=default_model,
            count_tokens=self._count_tokens, span_attributes=span_attributes,
            metric_attributes={sc.CLIENT_NAME: self.client}, on_end=self._ended,
        )
        if self.record is not None:
            self.trace_headers = self.record.trace_headers
            if self.stream:
                self.accumulator = accumulator_for(self.path)

    async def _count_tokens(self, text: str) -> int | None:
        call = _calls.tokenize(text, parse_special=False)
        headers = {"authorization": self.authorization} if self.authorization else {}
        for attempt in range(2):
            try:
                response = await self.observer.http.post(self.upstream + call.path, json=call.body, headers=headers,
                                                         timeout=TOKEN_COUNT_TIMEOUT)
                response.raise_for_status()
                return len(response.json()["tokens"])
            except httpx.RemoteProtocolError:
                # llama-server sometimes closes a keep-alive connection just after a streamed response (9 times
                # in 40 when /tokenize follows a stream at once): the pooled connection was already closing and
                # the request went unanswered. /tokenize is idempotent: send it once more, on a new connection.
                if attempt == 0:
                    continue
                log.debug("reasoning token count failed", exc_info=True)
            except Exception:  # noqa: BLE001 - a missing count is better than a broken span
                log.debug("reasoning token count failed", exc_info=True)
            return None
        return None

    # -- outcomes reported by the forwarding edge --

    def unreachable(self, exc: httpx.HTTPError) -> None:
        """No upstream response at all (down, refused, or the connection dropped before an answer)."""
        self._fail(None, APIConnectionError(f"upstream {self.upstream} unreachable: {exc!r}", url=self.upstream + self.path))

    def failed(self, status: int | None, error: BaseException) -> None:
        """The request failed with ``error`` (its class is the ``error.type``), answered ``status`` by the gateway."""
        self._fail(status, error)

    def client_left(self) -> None:
        """The client disconnected before the (non-streamed) answer came; the upstream request was closed."""
        self._fail(None, ConnectionAbortedError(f"the client disconnected before {self.upstream} answered"))

    def cut_short(self, status: int, exc: httpx.HTTPError) -> None:
        """A non-streamed body broke off mid-way."""
        self._fail(status, StreamInterruptedError(f"upstream {self.upstream} closed mid-response: {exc!r}"))

    def answered(self, status: int, headers: httpx.Headers, raw: bytes) -> None:
        """A complete non-streamed response was sent to the client."""
        self.status = status
        record = self.record
        try:
            if record is None:
                self._finish(str(status) if status >= 400 else None, None)
            elif status >= 400:
                record.fail_status(status, raw[:500].decode("utf-8", "replace"))  # on_end records the rest
            elif headers.get("content-encoding", "identity") != "identity":
                # Compressed: forwarded as is; not worth decompressing for telemetry.
                self.observer.spawn(record.aend({}))
            else:
                self.observer.spawn(record.aend(json.loads(raw)))
        except Exception:  # noqa: BLE001 - e.g. a 200 whose body is not JSON
            log.debug("telemetry could not read a response", exc_info=True)
            if record is not None:
                self.observer.spawn(record.aend({}))

    def chunk(self, raw: bytes) -> None:
        """Some SSE bytes were relayed: fold the complete events into the stream's accumulator."""
        acc = self.accumulator
        if acc is None or self._unreadable:
            return
        try:
            lines = (self._line_buffer + raw).split(b"\n")
            self._line_buffer = lines.pop()
            for line in lines:
                data = decode_sse_line(line.decode("utf-8").rstrip("\r"), self.path)
                if data is _DONE:
                    acc.finished = True
                elif data is not None:
                    acc.add(data)
        except APIStatusError as exc:  # llama-server reported an error inside the stream
            self._stream_error = exc
        except Exception:  # noqa: BLE001 - a stream we cannot read is still forwarded
            log.debug("could not read a stream event for telemetry", exc_info=True)
            self._unreadable = True

    def stream_ended(self, status: int, error: httpx.HTTPError | None, *, client_left: bool) -> None:
        """A relayed stream ended: finished, failed upstream, or abandoned by the client (cut short, no error)."""
        self.status = status
        failure: BaseException | None = self._stream_error
        if error is not None:
            failure = StreamInterruptedError(
                f"the stream from {self.upstream}{self.path} ended before llama-server finished it ({error!r})")
        record = self.record
        try:
            if record is None:
                self._finish(type(failure).__name__ if failure else (str(status) if status >= 400 else None), None)
            elif self.accumulator is None:  # an inference call answered with SSE it did not ask for
                if failure is not None:
                    record.fail(failure)
                else:
                    self.observer.spawn(record.aend({}))
            else:
                self.observer.spawn(record.aend_stream(self.accumulator, failure))
        except Exception:  # noqa: BLE001
            log.debug("telemetry failed at the end of a stream", exc_info=True)

    def _fail(self, status: int | None, error: BaseException) -> None:
        self.status = status
        if self.record is not None:
            self.record.fail(error)  # on_end records the rest
        else:
            self._finish(type(error).__name__, None)

    # -- the gateway's own records --

    def _ended(self, ended: EndedCall) -> None:
        """The recorder's on_end hook: the span ended and its metrics are recorded."""
        self._finish(ended.error_type, ended)

    def _finish(self, error_type: str | None, ended: EndedCall | None) -> None:
        try:
            self._count(error_type)
            self._remember(error_type, ended)
        except Exception:  # noqa: BLE001
            log.debug("could not record a finished request", exc_info=True)

    def _count(self, error_type: str | None) -> None:
        attributes: dict[str, Any] = {
            "http.request.method": self.method, "http.route": http_route(self.path), sc.CLIENT_NAME: self.client,
        }
        if self.status is not None:
            attributes["http.response.status_code"] = self.status
        if error_type:
            attributes[sc.ERROR_TYPE] = error_type
        self.observer.requests.add(1, attributes)

    def _remember(self, error_type: str | None, ended: EndedCall | None) -> None:
        model = (self.body or {}).get("model")
        item = RecentRequest(
            time=self.started_wall, client=self.client, method=self.method, endpoint=self.path, upstream=self.upstream,
            model=model if isinstance(model, str) else None, status=self.status, stream=self.stream,
            duration_s=time.monotonic() - self.started, error_type=error_type,
        )
        if ended is not None:
            out = ended.outcome
            item.model = ended.model or item.model
            item.input_tokens, item.output_tokens, item.cached_tokens = out.input_tokens, out.output_tokens, out.cached_tokens
            item.reasoning_tokens = ended.reasoning_tokens
            item.ttft_s, item.duration_s = ended.time_to_first_chunk, ended.duration
            item.budget_exhausted = ended.budget_exhausted
        self.observer.recent.add(item)
