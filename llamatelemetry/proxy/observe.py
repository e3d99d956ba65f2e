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
call (which may count reasoning tokens with a ``/tokenize`` call to the same llama-server,
:mod:`llamatelemetry.telemetry.lookups`) runs in a background task of the recorder's one
finisher (:class:`~llamatelemetry.telemetry.finisher.TaskFinisher`): bounded, and when full
the call's span ends at once without the side request, as the client's do.

Example::

    observer = Observer(tracer_provider=tp, meter_provider=mp, http=upstream_client())
    exchange = observer.begin(scope, "http://127.0.0.1:8080", parsed_body)
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, Callable, Coroutine, Mapping

import httpx
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind

from .._defaults import VERSION
from ..errors import APIConnectionError, APIStatusError, StreamInterruptedError
from ..telemetry import semconv as sc
from ..telemetry.finisher import CLOSE_TIMEOUT, TaskFinisher
from ..telemetry.lookups import AsyncLookups, ServerModel
from ..telemetry.recorder import (
    Accumulator, AsyncSideRequests, CallRecord, EndedCall, Recorder, accumulator_for, context_from_headers, operation_for,
    server_address,
)
from ..telemetry.sse import Done, SSEDecoder
from .clients import CLIENT_NAME_HEADER, client_name
from .endpoints import http_route
from .recent import RecentRequest, RecentRequests
from .routing import ColdStart, Routers, router_error
from .upstreams import UpstreamHealth

log = logging.getLogger("llamatelemetry.proxy")

METRIC_PROXY_REQUESTS = sc.METRIC_PROXY_REQUESTS
ATTR_MAX_TOKENS_RAISED_FROM = sc.PROXY_MAX_TOKENS_RAISED_FROM


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
        upstreams: UpstreamHealth | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.capture_content = capture_content
        self.http = http
        self.recent = recent if recent is not None else RecentRequests()
        self.upstreams = upstreams if upstreams is not None else UpstreamHealth(())
        # The recorder's meter (same name, version and schema): one instrumentation scope for all our metrics.
        meter = metrics.get_meter(sc.INSTRUMENTATION_NAME, VERSION, meter_provider, schema_url=sc.SCHEMA_URL)
        self.requests = meter.create_counter(
            METRIC_PROXY_REQUESTS, unit="{request}", description="Requests the gateway forwarded, inference or not.",
        )
        # Router mode: which upstreams are routers, and how long requests waited for their model to load.
        self.routers = Routers(http)
        self.load_waits = meter.create_histogram(
            sc.METRIC_MODEL_LOAD_WAIT, unit="s", explicit_bucket_boundaries_advisory=list(sc.MODEL_LOAD_WAIT_BUCKETS),
            description="How long requests to a llama-server router waited for their model to load or wake (cold starts).",
        )
        self._recorders: dict[str, Recorder] = {}
        #: Runs the end of each call's telemetry (and the model lookups) off the forwarding path.
        self.finisher = TaskFinisher()
        #: upstream -> its model (from /v1/models), for requests that name none (as the client does).
        self._models: dict[str, ServerModel] = {}

    def recorder_for(self, upstream: str) -> Recorder:
        """The recorder for one upstream (its address and port are span and metric attributes)."""
        found = self._recorders.get(upstream)
        if found is None:
            host, port = server_address(upstream)
            found = Recorder(server_address=host, server_port=port, tracer_provider=self.tracer_provider,
                             meter_provider=self.meter_provider, capture_content=self.capture_content, server_metrics=True)
            self._recorders[upstream] = found
        return found

    def lookups(self, upstream: str, authorization: str | None) -> AsyncLookups:
        """The telemetry's side requests to ``upstream``, with the caller's credentials."""
        return AsyncLookups(self.http, upstream, {"authorization": authorization} if authorization else None)

    def default_model(self, upstream: str, authorization: str | None) -> str | None:
        """The upstream's model for requests that name none; looked up once in the background (None until then)."""
        memo = self._models.get(upstream)
        if memo is None:
            memo = self._models[upstream] = ServerModel()
        if memo.due():
            lookups = self.lookups(upstream, authorization)

            async def look_up() -> None:
                memo.remember(await lookups.model())

            # Refused (finisher full): the span is named by operation only; retried after the delay.
            self.spawn(look_up, lambda: memo.remember(None))
        return memo.model

    async def prepare(self, scope: Mapping[str, Any], upstream: str) -> None:
        """Before an inference request's span starts: know whether the upstream is a router (checked once)."""
        if self.routers.settled(upstream):
            return
        try:
            await self.routers.prepare(upstream, _headers(scope).get("authorization"))
        except Exception:  # noqa: BLE001 - forwarding never waits on telemetry's failures
            log.debug("router detection failed", exc_info=True)

    async def aclose(self) -> None:
        """Stop the router watchers (at gateway shutdown)."""
        await self.routers.aclose()

    def begin(self, scope: Mapping[str, Any], upstream: str, body: dict[str, Any] | None, *,
              max_tokens_raised_from: int | None = None) -> "Exchange":
        """Start observing one request (its span, if it is an inference call, starts now)."""
        return Exchange(self, scope, upstream, body, max_tokens_raised_from)

    def spawn(self, work: Callable[[], Coroutine[Any, Any, None]], refused: Callable[[], None]) -> None:
        """Run telemetry work in the background; ``refused`` runs at once instead when the finisher is full."""
        if not self.finisher.submit(work):
            refused()

    async def drain(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Wait (bounded) for background telemetry to finish, e.g. before shutdown."""
        await self.finisher.flush(timeout)


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
        self.max_tokens_raised_from = max_tokens_raised_from
        self.status: int | None = None
        self.record: CallRecord | None = None
        self.trace_headers: dict[str, str] = {}
        self.accumulator: Accumulator | None = None
        self._events = SSEDecoder(self.path)
        self._unreadable = False
        self._stream_error: BaseException | None = None
        self.cold_start: ColdStart | None = None
        if operation_for(self.path) is not None:
            self._start_record(headers, max_tokens_raised_from)

    def _start_record(self, headers: dict[str, str], raised_from: int | None) -> None:
        span_attributes: dict[str, Any] = {sc.CLIENT_NAME: self.client}
        if self.user_agent:
            span_attributes[sc.USER_AGENT_ORIGINAL] = self.user_agent
        if raised_from is not None:
            span_attributes[ATTR_MAX_TOKENS_RAISED_FROM] = raised_from
        default_model = None
        lookups = self.observer.lookups(self.upstream, self.authorization)
        count_tokens, context_size = lookups.count_tokens, functools.partial(lookups.context_size, None)
        router = self.observer.routers.view(self.upstream)
        if router is not None:
            # A router serves many models: the request's own "model" is the routed one (none: the router refuses it).
            model = (self.body or {}).get("model")
            self.cold_start = router.cold_start(model if isinstance(model, str) else None)
            if self.cold_start is not None:
                span_attributes[sc.MODEL_COLD_START] = True
                span_attributes[sc.MODEL_STATE_BEFORE] = self.cold_start.state_before
            if isinstance(model, str):
                # A router routes /tokenize and /props by "model" too: ask about the model that answered.
                count_tokens = functools.partial(count_tokens, model=model)
                context_size = functools.partial(lookups.context_size, model)
        elif not (self.body or {}).get("model"):
            default_model = self.observer.default_model(self.upstream, self.authorization)
        self.record = self.observer.recorder_for(self.upstream).start(
            self.path, self.body, stream=self.stream, kind=SpanKind.SERVER, parent=context_from_headers(headers),
            default_model=default_model,
            # No defer: the gateway ends every call's telemetry in its finisher already (see spawn).
            side_requests=AsyncSideRequests(count_tokens, context_size=context_size), span_attributes=span_attributes,
            metric_attributes={sc.CLIENT_NAME: self.client}, on_end=self._ended,
        )
        if self.record is not None:
            self.trace_headers = self.record.trace_headers
            if self.stream:
                self.accumulator = accumulator_for(self.path)

    # -- outcomes reported by the forwarding edge --

    def unreachable(self, exc: httpx.HTTPError) -> None:
        """No upstream response at all (down, refused, or the connection dropped before an answer)."""
        self.observer.upstreams.failed(self.upstream, exc, path=self.path, client=self.client)
        self._fail(502, APIConnectionError(f"upstream {self.upstream} unreachable: {exc!r}", url=self.upstream + self.path))

    def failed(self, status: int | None, error: BaseException) -> None:
        """The request failed with ``error`` (its class is the ``error.type``), answered ``status`` by the gateway."""
        self._fail(status, error)

    def client_left(self) -> None:
        """The client disconnected before the (non-streamed) answer came; the upstream request was closed."""
        self._fail(None, ConnectionAbortedError(f"the client disconnected before {self.upstream} answered"))

    def cut_short(self, status: int, exc: httpx.HTTPError) -> None:
        """A non-streamed body broke off mid-way (``status``: the upstream's; the client got the gateway's 502)."""
        self.observer.upstreams.answered(self.upstream)  # it did answer: reachable, just broken mid-body
        self._fail(502, StreamInterruptedError(f"upstream {self.upstream} closed mid-response: {exc!r}"))

    def answered(self, status: int, headers: httpx.Headers, raw: bytes) -> None:
        """A complete non-streamed response was sent to the client."""
        self.status = status
        self.observer.upstreams.answered(self.upstream)
        record = self.record
        try:
            routed = router_error(status, raw) if status >= 400 else None
            error_type = routed[0].error_type if routed is not None else None
            if record is None:
                self._finish(error_type or (str(status) if status >= 400 else None), None)
            elif status >= 400:
                record.fail_status(status, raw[:500].decode("utf-8", "replace"), error_type=error_type)  # on_end records the rest
            elif headers.get("content-encoding", "identity") != "identity":
                # Compressed: forwarded as is; not worth decompressing for telemetry.
                self._loaded()
                self._end(record, {})
            else:
                self._loaded()
                self._end(record, json.loads(raw))
        except Exception:  # noqa: BLE001 - e.g. a 200 whose body is not JSON
            log.debug("telemetry could not read a response", exc_info=True)
            if record is not None:
                self._end(record, {})

    def chunk(self, raw: bytes) -> None:
        """Some SSE bytes were relayed: fold the complete events into the stream's accumulator."""
        if self.cold_start is not None:
            self._loaded()  # the first bytes of a stream: the model is up
        acc = self.accumulator
        if acc is None or self._unreadable:
            return
        try:
            for event in self._events.feed(raw):
                if isinstance(event, Done):
                    acc.finished = True
                else:
                    acc.add(event)
        except APIStatusError as exc:  # llama-server reported an error inside the stream
            self._stream_error = exc
        except Exception:  # noqa: BLE001 - a stream we cannot read is still forwarded
            log.debug("could not read a stream event for telemetry", exc_info=True)
            self._unreadable = True

    def stream_ended(self, status: int, error: httpx.HTTPError | None, *, client_left: bool) -> None:
        """A relayed stream ended: finished, failed upstream, or abandoned by the client (cut short, no error)."""
        self.status = status
        self.observer.upstreams.answered(self.upstream)
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
                    self._end(record, {})
            else:
                acc = self.accumulator
                # Refused (finisher full): end now, without the reasoning count's /tokenize request.
                self.observer.spawn(lambda: record.aend_stream(acc, failure), lambda: record.end_stream(acc, failure))
        except Exception:  # noqa: BLE001
            log.debug("telemetry failed at the end of a stream", exc_info=True)

    def _loaded(self) -> None:
        """A cold-started request got its answer: put its load wait on the span and in the histogram (once)."""
        cold, self.cold_start = self.cold_start, None
        if cold is None or self.record is None:
            return
        try:
            router = self.observer.routers.view(self.upstream)
            wait = router.load_wait(cold) if router is not None else time.time() - cold.arrived
            self.record.span.set_attribute(sc.MODEL_LOAD_WAIT, wait)
            self.observer.load_waits.record(wait, {sc.REQUEST_MODEL: cold.model, sc.CLIENT_NAME: self.client,
                                                   sc.MODEL_STATE_BEFORE: cold.state_before})
        except Exception:  # noqa: BLE001
            log.debug("could not record a load wait", exc_info=True)

    def _end(self, record: CallRecord, data: object) -> None:
        # Refused (finisher full): end now, without the reasoning count's /tokenize request.
        self.observer.spawn(lambda: record.aend(data), lambda: record.end(data))

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
            max_tokens_raised_from=self.max_tokens_raised_from,
        )
        if ended is not None:
            out = ended.outcome
            item.model = ended.model or item.model
            item.input_tokens, item.output_tokens, item.cached_tokens = out.input_tokens, out.output_tokens, out.cached_tokens
            item.reasoning_tokens = ended.reasoning_tokens
            item.ttft_s, item.duration_s = ended.time_to_first_chunk, ended.duration
            item.budget_exhausted = ended.budget_exhausted
        self.observer.recent.add(item)
