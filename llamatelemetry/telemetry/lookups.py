"""The telemetry's own requests to llama-server, for the client and the gateway alike.

Three side requests complete a span: the server's model (``GET /v1/models``), to name calls whose
body names none; a token count (``POST /tokenize``), for reasoning counts that need one (see
:mod:`.reasoning`); and a model's slot context size (``GET /props``, ``n_ctx``), for the context
utilisation (prompt tokens / n_ctx, see :mod:`.agent_record`). All are bounded (:data:`TIMEOUT`), never raise (None when they fail), carry
the caller's ``Authorization`` when the server wants one, and are sent once more when llama-server
dropped the pooled keep-alive connection they went out on (:data:`RESENDS`): it sometimes closes one
just after a streamed response, and a count sent at once on it goes unanswered (9 times in 40).
All three requests are idempotent, so sending them again is safe.

:class:`ServerModel` remembers the model once found and waits :data:`RETRY_SECONDS` after a
failed lookup, so a server that is down or loading is not asked on every call.

Example::

    lookups = Lookups(httpx.Client(), "http://127.0.0.1:8080")
    lookups.count_tokens("Hello there!")  # 3, or None
    lookups.context_size("scripted")      # 4096, or None
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Mapping, TypeVar

import httpx

__all__ = ["RESENDS", "RETRY_SECONDS", "TIMEOUT", "AsyncLookups", "Lookups", "ServerModel"]

log = logging.getLogger("llamatelemetry.telemetry")

#: A side request must not keep a finished call's telemetry waiting for long (seconds).
TIMEOUT = 2.0
#: After a failed model lookup, wait this long before asking again (seconds).
RETRY_SECONDS = 30.0
#: Times a side request is sent again after the server dropped the keep-alive connection it went out on.
RESENDS = 1

T = TypeVar("T")

MODELS_PATH = "/v1/models"
TOKENIZE_PATH = "/tokenize"
PROPS_PATH = "/props"


def _tokenize_body(text: str, model: str | None) -> dict[str, object]:
    # The text as the model would have produced it: special-token markers in it are plain text.
    body: dict[str, object] = {"content": text, "add_special": False, "parse_special": False}
    if model:
        # A llama-server router routes /tokenize by "model" (400 without; a single llama-server ignores it).
        body["model"] = model
    return body


#: Query of a count sent for a named model: a router must not load the model again for a count if a
#: swap evicted it meanwhile (a single llama-server ignores the parameter).
_NO_AUTOLOAD = {"autoload": "false"}


def _props_query(model: str | None) -> dict[str, str] | None:
    # A router routes /props by "model"; autoload=false: a lookup never loads a model (a single llama-server
    # ignores both).
    return {"model": model, **_NO_AUTOLOAD} if model else None


def _json_of(response: httpx.Response) -> object | None:
    return response.json() if response.status_code == 200 else None


def _model_of(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return None
    data = response.json().get("data") or []
    model = data[0].get("id") if data and isinstance(data[0], dict) else None
    return model if isinstance(model, str) and model else None


def _count_of(response: httpx.Response) -> int | None:
    if response.status_code != 200:
        return None
    tokens = response.json().get("tokens")
    return len(tokens) if isinstance(tokens, list) else None


def _n_ctx_of(response: httpx.Response) -> int | None:
    if response.status_code != 200:
        return None
    settings = response.json().get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    return n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0 else None


class ServerModel:
    """The server's model for calls that name none: found once, a failed lookup retried after a while.

    Example::

        if memo.due():
            memo.remember(lookups.model())
        record = recorder.start(path, body, default_model=memo.model)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.model: str | None = None
        #: Monotonic seconds (replaceable, so a test can let the retry delay pass).
        self.clock = clock
        self._next_lookup = 0.0

    def due(self) -> bool:
        """True when no model is known and a lookup may be made now (marks it as being made)."""
        if self.model is not None or self.clock() < self._next_lookup:
            return False
        # Set before the lookup ends: concurrent calls do not start lookups of their own meanwhile.
        self._next_lookup = self.clock() + RETRY_SECONDS
        return True

    def remember(self, model: str | None) -> None:
        """Keep a found model; after a failure (None) the next lookup waits :data:`RETRY_SECONDS`."""
        if model is not None:
            self.model = model
        else:
            self._next_lookup = self.clock() + RETRY_SECONDS


def _failed(path: str) -> None:
    log.debug("llamatelemetry: side request %s failed", path, exc_info=True)


def _send(path: str, send: Callable[[], httpx.Response], read: Callable[[httpx.Response], T | None]) -> T | None:
    for attempt in range(RESENDS + 1):
        try:
            return read(send())
        except httpx.RemoteProtocolError:
            # The pooled connection was already closing: the request went unanswered. Send it again
            # (httpx takes a new connection); bounded, so a server that keeps doing it costs little.
            if attempt < RESENDS:
                continue
            _failed(path)
        except Exception:  # noqa: BLE001 - telemetry must never break the call; a missing value is not a guess
            _failed(path)
        return None
    return None


async def _asend(path: str, send: Callable[[], Awaitable[httpx.Response]],
                 read: Callable[[httpx.Response], T | None]) -> T | None:
    for attempt in range(RESENDS + 1):
        try:
            return read(await send())
        except httpx.RemoteProtocolError:
            if attempt < RESENDS:  # see _send
                continue
            _failed(path)
        except Exception:  # noqa: BLE001
            _failed(path)
        return None
    return None


class Lookups:
    """The side requests through a sync ``httpx.Client`` (see module docs).

    ``headers``: sent with each request (e.g. ``Authorization``); None when the client's pool
    already carries them.

    Example::

        Lookups(httpx.Client(), "http://127.0.0.1:8080").model()  # "scripted", or None
    """

    def __init__(self, http: httpx.Client, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = headers

    def model(self) -> str | None:
        """The server's (first) model id, or None."""
        url = self.base_url + MODELS_PATH
        return _send(MODELS_PATH, lambda: self.http.get(url, headers=self.headers, timeout=TIMEOUT), _model_of)

    def models(self) -> object | None:
        """The server's ``GET /v1/models`` body (a router's lists every model with its status), or None."""
        url = self.base_url + MODELS_PATH
        return _send(MODELS_PATH, lambda: self.http.get(url, headers=self.headers, timeout=TIMEOUT), _json_of)

    def count_tokens(self, text: str, model: str | None = None) -> int | None:
        """The number of tokens the server's tokenizer (``model``'s, behind a router) makes of ``text``, or None."""
        url, body = self.base_url + TOKENIZE_PATH, _tokenize_body(text, model)
        params = _NO_AUTOLOAD if model else None
        return _send(TOKENIZE_PATH, lambda: self.http.post(url, json=body, params=params, headers=self.headers,
                                                           timeout=TIMEOUT), _count_of)

    def context_size(self, model: str | None = None) -> int | None:
        """The slot context size (``n_ctx``) of ``model`` (behind a router; never loads it), or None."""
        url, params = self.base_url + PROPS_PATH, _props_query(model)
        return _send(PROPS_PATH, lambda: self.http.get(url, params=params, headers=self.headers, timeout=TIMEOUT),
                     _n_ctx_of)


class AsyncLookups:
    """The side requests through an ``httpx.AsyncClient`` (see :class:`Lookups`).

    Example::

        await AsyncLookups(httpx.AsyncClient(), "http://127.0.0.1:8080").count_tokens("Hello there!")
    """

    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = headers

    async def model(self) -> str | None:
        """The server's (first) model id, or None."""
        url = self.base_url + MODELS_PATH
        return await _asend(MODELS_PATH, lambda: self.http.get(url, headers=self.headers, timeout=TIMEOUT), _model_of)

    async def models(self) -> object | None:
        """The server's ``GET /v1/models`` body, or None (see :meth:`Lookups.models`)."""
        url = self.base_url + MODELS_PATH
        return await _asend(MODELS_PATH, lambda: self.http.get(url, headers=self.headers, timeout=TIMEOUT), _json_of)

    async def count_tokens(self, text: str, model: str | None = None) -> int | None:
        """The number of tokens the server's tokenizer (``model``'s, behind a router) makes of ``text``, or None."""
        url, body = self.base_url + TOKENIZE_PATH, _tokenize_body(text, model)
        params = _NO_AUTOLOAD if model else None
        return await _asend(TOKENIZE_PATH, lambda: self.http.post(url, json=body, params=params, headers=self.headers,
                                                                  timeout=TIMEOUT), _count_of)

    async def context_size(self, model: str | None = None) -> int | None:
        """The slot context size (``n_ctx``) of ``model``, or None (see :meth:`Lookups.context_size`)."""
        url, params = self.base_url + PROPS_PATH, _props_query(model)
        return await _asend(PROPS_PATH, lambda: self.http.get(url, params=params, headers=self.headers,
                                                              timeout=TIMEOUT), _n_ctx_of)
