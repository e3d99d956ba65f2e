"""Exceptions raised by the llamatelemetry client.

Every exception derives from :class:`LlamaCppError` and its message says what happened
*and what to do about it*. HTTP errors keep llama-server's own error JSON
(``code``, ``message``, ``type``) on :class:`APIStatusError`.

Example::

    from llamatelemetry import LlamaCppClient, errors
    try:
        LlamaCppClient().embed("hello")
    except errors.NotSupportedError as exc:
        print(exc.flag)            # "--embeddings"
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import ModelStatus

__all__ = [
    "LlamaCppError",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "NotSupportedError",
    "ModelLoadingError",
    "InternalServerError",
    "ResponseDecodeError",
    "StreamInterruptedError",
    "RouterModelError",
    "UnknownModelError",
    "ModelNotLoadedError",
    "ModelLoadFailedError",
    "classify_router_error",
]


class LlamaCppError(Exception):
    """Base class of every error raised by llamatelemetry's client."""


class APIConnectionError(LlamaCppError):
    """llama-server could not be reached (refused, reset, dropped before any response byte)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class APITimeoutError(APIConnectionError):
    """The request timed out; raise ``timeout=`` or check that llama-server is not overloaded."""


class ResponseDecodeError(LlamaCppError):
    """llama-server answered with a body that is not the JSON or SSE it should be."""


class StreamInterruptedError(ResponseDecodeError):
    """A stream ended (connection closed) before llama-server finished it."""


class APIStatusError(LlamaCppError):
    """llama-server answered with an HTTP error status.

    ``status_code`` is the HTTP status; ``code``, ``type`` and ``server_message`` come from
    llama-server's error JSON (``{"error": {"code", "message", "type"}}``) when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        body: Any = None,
        code: int | None = None,
        type: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url
        self.body = body
        self.code = code
        self.type = type
        self.server_message = server_message


class BadRequestError(APIStatusError):
    """400: llama-server rejected the request (see ``server_message``)."""


class AuthenticationError(APIStatusError):
    """401: llama-server was started with ``--api-key``; pass the same key as ``api_key=``."""


class NotFoundError(APIStatusError):
    """404: the endpoint or resource does not exist on this llama-server."""


class NotSupportedError(APIStatusError):
    """501: the endpoint is switched off; ``flag`` names the llama-server flag that enables it."""

    def __init__(self, message: str, *, flag: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.flag = flag


class ModelLoadingError(APIStatusError):
    """503: llama-server is still loading its model; wait (see ``client.health.wait_until_ready()``)."""


class InternalServerError(APIStatusError):
    """5xx: llama-server failed while handling the request; its log says why."""


# --- router mode (llama-server --models-dir / --models-preset: many models behind one port) ------

class RouterModelError(LlamaCppError):
    """A call failed because of the model a router was asked for (catch this for all three kinds).

    ``model`` is the model id the call named; ``model_status`` its state as the router reported it
    right after the failure (None when the router does not know the model or could not be asked).

    Example::

        try:
            client.chat_completion(model="coder", messages=[{"role": "user", "content": "hi"}])
        except errors.RouterModelError as exc:
            print(exc.model, exc.model_status.value if exc.model_status else None)
    """

    model: str | None = None
    model_status: "ModelStatus | None" = None
    #: ``error.type`` on spans and metrics (the client's and the gateway's alike).
    error_type: str = "model_error"


class UnknownModelError(BadRequestError, RouterModelError):
    """400 ``model '<x>' not found``: the router has no such model; ``client.models.list()`` says which it has."""

    error_type = "model_not_found"


class ModelNotLoadedError(BadRequestError, RouterModelError):
    """400 ``model is not loaded``: the router does not autoload (``--no-models-autoload`` or ``?autoload=false``);
    call ``client.models.load(model)`` first."""

    error_type = "model_not_loaded"


class ModelLoadFailedError(InternalServerError, RouterModelError):
    """500 ``model name=<x> failed to load``: the model's process exited while loading;
    ``model_status.exit_code`` is its exit code, the router's log says why."""

    error_type = "model_load_failed"


#: The router's own error messages about the requested model (llama-server ``server-models.cpp``, b11434).
_UNKNOWN_MODEL = re.compile(r"^model '(.*)' not found$", re.S)
_LOAD_FAILED = re.compile(r"^model name=(.*) failed to load$", re.S)
_NOT_LOADED = "model is not loaded"


def classify_router_error(status_code: int, message: object) -> "tuple[type[RouterModelError], str | None] | None":
    """Which router-model error an HTTP error answer is, and the model id its message names (if any).

    Used by the client (to raise the typed error) and the gateway (for ``error.type``).

    Example::

        >>> classify_router_error(400, "model 'coder' not found")
        (<class 'llamatelemetry.errors.UnknownModelError'>, 'coder')
    """
    if not isinstance(message, str):
        return None
    if status_code == 400 and (match := _UNKNOWN_MODEL.match(message)):
        return UnknownModelError, match.group(1)
    if status_code == 400 and message == _NOT_LOADED:
        return ModelNotLoadedError, None
    if status_code >= 500 and (match := _LOAD_FAILED.match(message)):
        return ModelLoadFailedError, match.group(1)
    return None
