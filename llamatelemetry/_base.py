"""Logic shared by the sync and async clients: settings, request building, error mapping, retries.

Nothing here does I/O, so both clients run exactly the same code for everything but the
``send`` itself.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, TypeVar
from urllib.parse import urlsplit

import httpx

from . import errors
from ._defaults import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL

#: Generation can take minutes; connecting should not.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
#: llama-server (cpp-httplib) closes idle keep-alive connections after 5 s. Dropping ours after
#: 2 s means we never reuse one the server is closing at that moment, the usual cause of
#: "Server disconnected without sending a response" (still retried, but now rare).
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=2.0)
_USER_AGENT = "llamatelemetry/0.1"

# Which llama-server flag switches on an endpoint that answered 501 (checked in order).
_FLAG_FOR_PATH = (
    ("/slots/", "--slot-save-path"),
    ("/slots", "--slots (remove --no-slots)"),
    ("/metrics", "--metrics"),
    ("/embedding", "--embeddings"),
    ("/rerank", "--rerank"),
    ("/reranking", "--rerank"),
    ("/props", "--props"),
)


R_co = TypeVar("R_co", covariant=True)


@dataclass(slots=True)
class Call(Generic[R_co]):
    """One API call, described without I/O; ``R_co`` is the type the public method returns.

    ``operation`` is the GenAI operation name for telemetry (None: not an inference call).
    ``parse`` turns the decoded JSON into the typed result.
    """

    method: str
    path: str
    parse: Callable[[Any], Any]
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    operation: str | None = None
    stream: bool = False
    #: The caller asked for usage in the stream; if not, the usage-only final chunk is hidden.
    caller_wants_usage: bool = True
    #: The caller asked for per-chunk timings; if telemetry asked, they are hidden from the caller's chunks.
    caller_wants_timings: bool = True
    raw_text: bool = False
    #: Applied to the result after telemetry saw it (e.g. ``embed`` returns just the vector).
    unwrap: Callable[[Any], Any] | None = None


@dataclass(slots=True, frozen=True)
class Settings:
    """Resolved client settings (the API key never appears in ``repr``)."""

    base_url: str
    host: str
    port: int
    api_key: str | None
    max_retries: int

    def __repr__(self) -> str:
        return f"Settings(base_url={self.base_url!r}, max_retries={self.max_retries}, api_key={'***' if self.api_key else None})"


def resolve_settings(base_url: str | None, api_key: str | None, max_retries: int | None) -> Settings:
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    if url.endswith("/v1"):
        # Users often paste the OpenAI-style base URL; our paths already carry /v1.
        url = url[:-3]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must look like http://127.0.0.1:8080, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    if retries < 0:
        raise ValueError("max_retries must be >= 0")
    return Settings(base_url=url, host=parts.hostname, port=port, api_key=key, max_retries=retries)


def default_headers(settings: Settings) -> dict[str, str]:
    headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


def merge_body(body: dict[str, Any], extra_body: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop unset (None) parameters and merge ``extra_body`` (llama.cpp-specific fields) last."""
    merged = {k: v for k, v in body.items() if v is not None}
    if extra_body:
        merged.update(extra_body)
    return merged


# --- retries ---------------------------------------------------------------------------------

#: Errors raised by httpx before any response byte arrived: the request is safe to send again.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,  # "Server disconnected without sending a response" on a pooled connection
)


#: The longest Retry-After we honour: a server asking for more gets this (a retry loop must not hang).
MAX_RETRY_AFTER_SECONDS = 30.0


def retry_delay(attempt: int, retry_after: str | None = None) -> float:
    """Exponential backoff with jitter (0.25 s, 0.5 s, 1 s ... capped at 8 s); honours Retry-After.

    A Retry-After in seconds is clamped to [0, 30]; one that is not a finite number
    (``nan``, ``-inf``, an HTTP date) falls back to the backoff, ``inf`` means the maximum.
    """
    if retry_after:
        try:
            seconds = float(retry_after)
        except ValueError:
            seconds = math.nan
        if seconds == math.inf:
            return MAX_RETRY_AFTER_SECONDS
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
    return min(0.25 * 2.0**attempt, 8.0) * (0.75 + random.random() * 0.5)


def should_retry_status(status_code: int) -> bool:
    # 503 = model still loading: the request was not processed, so sending it again is safe.
    return status_code == 503


class RetryPolicy:
    """Decides, for one call, whether a failed attempt is sent again and after how long.

    Shared by both clients so they retry identically; each only does the sleeping. A method
    returns the delay before the next attempt, or raises the error the caller should see.
    """

    __slots__ = ("settings", "path", "attempt")

    def __init__(self, settings: "Settings", path: str) -> None:
        self.settings = settings
        self.path = path
        self.attempt = 0

    def _next(self, retry_after: str | None = None) -> float | None:
        if self.attempt >= self.settings.max_retries:
            return None
        delay = retry_delay(self.attempt, retry_after)
        self.attempt += 1
        return delay

    def after_transport_error(self, exc: httpx.HTTPError) -> float:
        """No response byte arrived: retry what is safe to send again, else raise a clear error."""
        delay = self._next() if isinstance(exc, RETRYABLE_TRANSPORT_ERRORS) else None
        if delay is None:
            raise transport_error(exc, self.settings, self.path) from exc
        return delay

    def after_status(self, status_code: int, content: bytes, headers: httpx.Headers) -> float:
        """An HTTP error status: retry 503 (model loading), else raise the mapped error."""
        delay = self._next(headers.get("retry-after")) if should_retry_status(status_code) else None
        if delay is None:
            raise status_error(status_code, content, self.settings, self.path)
        return delay


# --- errors ----------------------------------------------------------------------------------

def transport_error(exc: Exception, settings: Settings, path: str) -> errors.LlamaCppError:
    """Turn an httpx transport exception into a message that says what to do."""
    url = settings.base_url + path
    if isinstance(exc, httpx.TimeoutException):
        kind = "connecting to" if isinstance(exc, httpx.ConnectTimeout) else "waiting for"
        return errors.APITimeoutError(
            f"timed out {kind} llama-server at {url}; raise timeout= on the client, or check the server is not overloaded",
            url=url,
        )
    if isinstance(exc, httpx.ConnectError):
        return errors.APIConnectionError(
            f"cannot connect to llama-server at {settings.base_url} ({exc}); start llama-server "
            f"(e.g. `llama-server -m model.gguf --port {settings.port}`) or set base_url / ${BASE_URL_ENV}",
            url=url,
        )
    return errors.APIConnectionError(f"connection to llama-server at {url} failed: {exc!r}; check that it is running", url=url)


def _error_fields(body: Any) -> tuple[int | None, str | None, str | None]:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            code = err.get("code")
            return (code if isinstance(code, int) else None, err.get("type"), err.get("message"))
        if isinstance(err, str):
            return None, None, err
    return None, None, None


#: What each router-model error says, and what to do about it.
_ROUTER_HINTS: dict[type[errors.RouterModelError], str] = {
    errors.UnknownModelError: "the router has no model {model!r} ({path}); client.models.list() lists the models it has",
    errors.ModelNotLoadedError: ("the model asked for on {path} is not loaded and the router does not autoload it; "
                                 "call client.models.load(model) first"),
    errors.ModelLoadFailedError: ("the router could not load model {model!r} for {path} (its process exited; "
                                  "see model_status.exit_code and the router's log)"),
}


def _router_model_error(status_code: int, message: str | None, path: str, common: dict[str, Any]) -> errors.APIStatusError | None:
    """The typed error for a router's ``model '<x>' not found`` / ``model is not loaded`` / load failure."""
    found = errors.classify_router_error(status_code, message)
    if found is None:
        return None
    cls, model = found
    error = cls(_ROUTER_HINTS[cls].format(model=model, path=path), **common)
    error.model = model
    return error  # type: ignore[return-value]


def status_error(status_code: int, content: bytes, settings: Settings, path: str) -> errors.APIStatusError:
    """Map an HTTP error response to the matching exception, keeping llama-server's error JSON."""
    url = settings.base_url + path
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = content[:500].decode("utf-8", "replace")
    code, type_, server_message = _error_fields(body)
    detail = server_message or (body if isinstance(body, str) and body else f"HTTP {status_code}")
    common: dict[str, Any] = dict(status_code=status_code, url=url, body=body, code=code, type=type_, server_message=server_message)
    router_error = _router_model_error(status_code, server_message, path, common)
    if router_error is not None:
        return router_error
    if status_code == 501:
        flag = next((f for prefix, f in _FLAG_FOR_PATH if prefix in path), None)
        hint = f"restart llama-server with {flag}" if flag else "this llama-server build does not offer it"
        # llama-server's own message often names the flag already: say it once.
        suffix = "" if flag and flag.split()[0] in detail else f" ({hint})"
        return errors.NotSupportedError(f"{path} is not supported by this llama-server: {detail}{suffix}", flag=flag, **common)
    if status_code == 503:
        return errors.ModelLoadingError(
            f"llama-server at {settings.base_url} is still loading its model ({detail}); retry shortly or use client.health.wait_until_ready()",
            **common,
        )
    if status_code == 401:
        return errors.AuthenticationError(
            f"llama-server rejected the API key ({detail}); pass api_key= (or ${API_KEY_ENV}) matching its --api-key", **common
        )
    if status_code == 404:
        return errors.NotFoundError(f"{path} was not found on llama-server at {settings.base_url}: {detail}", **common)
    if status_code == 400:
        return errors.BadRequestError(f"llama-server rejected the request to {path}: {detail}", **common)
    if status_code >= 500:
        return errors.InternalServerError(
            f"llama-server failed on {path} with HTTP {status_code}: {detail}; see its log", **common
        )
    return errors.APIStatusError(f"llama-server answered {path} with HTTP {status_code}: {detail}", **common)


def decode_json(content: bytes, path: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        snippet = content[:200].decode("utf-8", "replace")
        raise errors.ResponseDecodeError(
            f"llama-server sent malformed JSON for {path} ({exc}); body starts with {snippet!r}. "
            "Is base_url pointing at llama-server (and not at a proxy or another service)?"
        ) from None
