"""What the gateway records about each forwarded request, through the same recorder as the client.

The forwarding edge (:mod:`.forward`) reports what happened — request parsed, upstream
unreachable, body answered, SSE bytes relayed, stream ended — to an :class:`Exchange`; the
exchange feeds llamatelemetry's one recorder (:mod:`llamatelemetry.telemetry`), which owns
every span attribute and GenAI metric. The gateway adds only what is about the *request*:
who called (:mod:`.clients`), the route, the status, and a line in ``/api/recent``.

Telemetry never breaks or delays forwarding: every method here swallows its own errors, body
parsing happens after the client has its answer, and the reasoning-token count (a
``/tokenize`` call to the same llama-server) runs in a background task.

Example::

    observer = Observer(tracer_provider=tp, meter_provider=mp, http=upstream_client())
    exchange = observer.begin(scope, "http://127.0.0.1:8080", parsed_body)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Coroutine

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace

from .. import _calls
from .._accumulate import Accumulator
from .._base import Call, Settings, resolve_settings, status_error
from ..errors import APIConnectionError, StreamInterruptedError
from ..streaming import _DONE, decode_sse_line
from ..telemetry import semconv as sc
from ..telemetry._record import CallRecord
from ..telemetry.instrumentation import Telemetry
from .clients import CLIENT_NAME_HEADER, client_name
from .endpoints import InferenceEndpoint, http_route, inference_endpoint
from .recent import RecentRequest, RecentRequests

log = logging.getLogger("llamatelemetry.proxy")

#: The gateway's own counter: every forwarded request, inference or not.
METRIC_PROXY_REQUESTS = "llamatelemetry.proxy.requests"
#: A reasoning-token count must not keep a finished request's telemetry waiting for long.
TOKEN_COUNT_TIMEOUT = 2.0


def parse_json_body(path: str, body: bytes) -> dict[str, Any] | None:
    """The JSON object of an inference request, or None (other paths, or a body we cannot parse)."""
    if not body or inference_endpoint(path) is None:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None  # forwarded all the same; llama-server will say what is wrong with it
    return parsed if isinstance(parsed, dict) else None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Observer:
    """Process-wide telemetry state of the gateway: recorders per upstream, counter, recent requests."""

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
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, meter_provider=meter_provider, schema_url=sc.SCHEMA_URL)
        self.requests = meter.create_counter(
            METRIC_PROXY_REQUESTS, unit="{request}", description="Requests the gateway forwarded, inference or not.",
        )
        self._telemetry: dict[str, Telemetry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def telemetry_for(self, upstream: str) -> Telemetry:
        """The recorder for one upstream (its address and port are span and metric attributes)."""
        found = self._telemetry.get(upstream)
        if found is None:
            found = Telemetry(resolve_settings(upstream, None, 0), tracer_provider=self.tracer_provider,
                              meter_provider=self.meter_provider, capture_content=self.capture_content)
            self._telemetry[upstream] = found
        return found

    def begin(self, scope: dict[str, Any], upstream: str, body: dict[str, Any] | None, *,
              max_tokens_raised_from: int | None = None) -> "Exchange":
        return Exchange(self, scope, upstream, body, max_tokens_raised_from)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run telemetry work in the background (kept referenced until done)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (bounded) for background telemetry to finish, e.g. before shutdown or in tests."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


class Exchange:
    """One forwarded request's telemetry (see module docs)."""

    def __init__(self, observer: Observer, scope: dict[str, Any], upstream: str, body: dict[str, Any] | None,
                 max_tokens_raised_from: int | None) -> None:
        self.observer = observer
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.upstream = upstream
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        self.user_agent = _header(scope, b"user-agent")
        self.client = client_name(self.user_agent, _header(scope, CLIENT_NAME_HEADER.encode()))
        self.body = body
        self.authorization = _header(scope, b"authorization")
        self.endpoint: InferenceEndpoint | None = inference_endpoint(self.path)
        self.stream = bool(body and body.get("stream"))
        self.record: CallRecord | None = None
        self.trace_headers: dict[str, str] = {}
        self.accumulator: Accumulator | None = None
        self._line_buffer = b""
        self._done = False
        if self.endpoint is not None:
            self._start_record(scope, max_tokens_raised_from)

    # -- start --

    def _start_record(self, scope: dict[str, Any], raised_from: int | None) -> None:
        assert self.endpoint is not None
        telemetry = self.observer.telemetry_for(self.upstream)
        call = Call(self.method, self.path, self.endpoint.parse, body=self.body or {},
                    operation=self.endpoint.operation, stream=self.stream)
        # Join the caller's trace: its traceparent becomes our span's parent.
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        token = otel_context.attach(propagate.extract(carrier))
        try:
            self.record = telemetry.start(call, None, self._count_tokens)
        finally:
            otel_context.detach(token)
        if self.record is None:
            return
        self.trace_headers = self.record.trace_headers
        try:
            if self.record.recording:
                span = self.record.span
                span.set_attribute(ATTR_CLIENT_NAME, self.client)
                if self.user_agent:
                    span.set_attribute(ATTR_USER_AGENT, self.user_agent)
                if raised_from is not None:
                    span.set_attribute(ATTR_MAX_TOKENS_RAISED_FROM, raised_from)
        except Exception:  # noqa: BLE001 - telemetry must never break forwarding
            log.debug("could not set gateway attributes", exc_info=True)
        if self.stream:
            self.accumulator = self.endpoint.new_accumulator()

    async def _count_tokens(self, text: str) -> int | None:
        call = _calls.tokenize(text, parse_special=False)
        headers = {"authorization": self.authorization} if self.authorization else {}
        try:
            response = await self.observer.http.post(self.upstream + call.path, json=call.body, headers=headers,
                                                     timeout=TOKEN_COUNT_TIMEOUT)
            response.raise_for_status()
            return len(response.json()["tokens"])
        except Exception:  # noqa: BLE001 - a missing count is better than a broken span
            log.debug("reasoning token count failed", exc_info=True)
            return None

    # -- outcomes reported by the forwarding edge --

    def unreachable(self, exc: httpx.HTTPError) -> None:
        """No upstream response at all (down, refused, connection dropped)."""
        error = APIConnectionError(f"upstream {self.upstream} unreachable: {exc!r}", url=self.upstream + self.path)
        self._fail(None, error)

    def cut_short(self, status: int, exc: httpx.HTTPError) -> None:
        """A non-streamed body broke off mid-way."""
        self._fail(status, StreamInterruptedError(f"upstream {self.upstream} closed mid-response: {exc!r}"))

    def answered(self, status: int, headers: httpx.Headers, raw: bytes) -> None:
        """A complete non-streamed response was sent to the client."""
        try:
            if self.record is None or self.endpoint is None:
                self._count(status, _status_error_type(status))
                self._remember(status, None)
                return
            if status >= 400:
                settings = self.observer.telemetry_for(self.upstream).settings
                self._fail(status, status_error(status, raw, settings, self.path))
                return
            if headers.get("content-encoding", "identity") != "identity":
                result = None  # compressed: forwarded as is, not worth decompressing for telemetry
            else:
                result = self.endpoint.parse(json.loads(raw))
            self.observer.spawn(self._end(status, result))
        except Exception:  # noqa: BLE001
            log.debug("telemetry failed on a response", exc_info=True)
            self._fail(status, None)

    async def _end(self, status: int, result: Any) -> None:
        assert self.record is not None
        if result is not None:
            await self.record.aend(result)
        else:
            self.record._give_up()
        self._count(status, None)
        self._remember(status, None)

    def chunk(self, raw: bytes) -> None:
        """Some SSE bytes were relayed: fold the complete events into the stream's accumulator."""
        acc = self.accumulator
        if acc is None or self._done:
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
        except Exception:  # noqa: BLE001 - a stream we cannot read is still forwarded
            log.debug("could not read a stream event for telemetry", exc_info=True)
            self._done = True

    def stream_ended(self, status: int, error: httpx.HTTPError | None, *, client_left: bool) -> None:
        """A relayed stream ended: finished, failed upstream, or abandoned by the client."""
        try:
            if self.record is None or self.accumulator is None:
                error_type = type(StreamInterruptedError()).__name__ if error is not None else _status_error_type(status)
                if self.record is not None:  # a span but no accumulator (e.g. an error answered as SSE)
                    self.record.fail(StreamInterruptedError(repr(error))) if error else self.record._give_up()
                self._count(status, error_type)
                self._remember(status, error_type)
                return
            failure = StreamInterruptedError(
                f"the stream from {self.upstream}{self.path} ended before llama-server finished it ({error!r})"
            ) if error is not None else None
            self.observer.spawn(self._end_stream(status, failure))
        except Exception:  # noqa: BLE001
            log.debug("telemetry failed at the end of a stream", exc_info=True)

    async def _end_stream(self, status: int, failure: BaseException | None) -> None:
        assert self.record is not None and self.accumulator is not None
        await self.record.aend_stream(self.accumulator, failure)
        error_type = type(failure).__name__ if failure is not None else None
        self._count(status, error_type)
        self._remember(status, error_type)

    def _fail(self, status: int | None, error: BaseException | None) -> None:
        error_type = type(error).__name__ if error is not None else None
        try:
            if self.record is not None:
                if error is not None:
                    self.record.fail(error)
                else:
                    self.record._give_up()
            if self.record is not None and status is not None and self.record.recording:
                pass
        except Exception:  # noqa: BLE001
            log.debug("telemetry failed on an error", exc_info=True)
        self._count(status, error_type)
        self._remember(status, error_type)

    # -- the gateway's own records --

    def _count(self, status: int | None, error_type: str | None) -> None:
        attributes: dict[str, Any] = {
            "http.request.method": self.method, "http.route": http_route(self.path), ATTR_CLIENT_NAME: self.client,
        }
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type:
            attributes[sc.ERROR_TYPE] = error_type
        try:
            self.observer.requests.add(1, attributes)
        except Exception:  # noqa: BLE001
            log.debug("could not count a request", exc_info=True)

    def _remember(self, status: int | None, error_type: str | None) -> None:
        attributes: dict[str, Any] = {}
        record = self.record
        if record is not None and record.recording:
            attributes = dict(getattr(record.span, "attributes", None) or {})
        ttft = attributes.get(sc.RESPONSE_TIME_TO_FIRST_CHUNK)
        model = attributes.get(sc.REQUEST_MODEL) or (self.body or {}).get("model")
        self.observer.recent.add(RecentRequest(
            time=self.started_wall, client=self.client, method=self.method, endpoint=self.path,
            upstream=self.upstream, model=model if isinstance(model, str) else None, status=status, stream=self.stream,
            input_tokens=attributes.get(sc.USAGE_INPUT_TOKENS), output_tokens=attributes.get(sc.USAGE_OUTPUT_TOKENS),
            reasoning_tokens=attributes.get(sc.USAGE_REASONING_OUTPUT_TOKENS),
            cached_tokens=attributes.get(sc.USAGE_CACHE_READ_INPUT_TOKENS),
            ttft_s=ttft, duration_s=time.monotonic() - self.started,
            budget_exhausted=bool(attributes.get(sc.REASONING_BUDGET_EXHAUSTED, False)),
            error_type=error_type or attributes.get(sc.ERROR_TYPE),
        ))


def _status_error_type(status: int | None) -> str | None:
    """The client's exception name for an HTTP error status (same error.type vocabulary everywhere)."""
    if status is None or status < 400:
        return None
    settings = Settings(base_url="", host="", port=0, api_key=None, max_retries=0)
    return type(status_error(status, b"", settings, "")).__name__


ATTR_CLIENT_NAME = "llamatelemetry.client.name"
ATTR_USER_AGENT = "user_agent.original"
ATTR_MAX_TOKENS_RAISED_FROM = "llamatelemetry.proxy.max_tokens_raised_from"
