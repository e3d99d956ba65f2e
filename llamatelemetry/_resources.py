"""The public methods of both clients, as namespaces (``client.chat.completions.create``) and shortcuts.

Sync and async get separate classes, as in openai-python, so every signature is exact: the
async methods are ``async def`` (a missing ``await`` is a type error), and ``create`` is
overloaded on ``stream`` (``stream=True`` gives a stream of chunks, otherwise the result).
Each endpoint's parameters, their defaults and the docstrings are declared once, by its request
builder in :mod:`llamatelemetry._calls`. Plain methods take them from there at runtime
(:func:`_endpoint`); the overloads of the stream-capable methods are written from them by
``scripts/gen_resources.py`` between the ``# <generated ...>`` markers (do not edit those by hand;
``tests/test_typing.py`` fails when they are stale). Everything else here is hand-written: add a
plain method (``load = _endpoint(_calls.load_model)``) as the classes below do.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Coroutine, Literal, Mapping, ParamSpec, Sequence, TypeVar, overload

from . import _calls, types
from ._base import Call
from .streaming import AsyncStream, Stream

if TYPE_CHECKING:
    from .client import AsyncLlamaCppClient, LlamaCppClient

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def _signature_with_self(builder: Callable[..., Any], returns: Any) -> inspect.Signature:
    sig = inspect.signature(builder)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig.replace(parameters=[self_param, *sig.parameters.values()], return_annotation=returns)


def _same_signature_as(builder: Callable[..., Any]) -> Callable[[F], F]:
    """Give a ``**kwargs`` implementation the builder's signature and docstring (for ``inspect`` and IDEs)."""

    def decorate(method: F) -> F:
        method.__signature__ = _signature_with_self(builder, inspect.signature(method).return_annotation)  # type: ignore[attr-defined]
        method.__doc__ = builder.__doc__
        return method

    return decorate


def _endpoint(builder: Callable[P, Call[R]]) -> Callable[Concatenate[Any, P], R]:
    """A sync method with the builder's exact parameters, returning what the call returns."""

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._client._execute(builder(*args, **kwargs))  # type: ignore[no-any-return]

    method.__doc__ = builder.__doc__
    method.__name__ = builder.__name__
    method.__signature__ = _signature_with_self(builder, inspect.signature(builder).return_annotation)  # type: ignore[attr-defined]
    return method


def _async_endpoint(builder: Callable[P, Call[R]]) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """An ``async def`` method with the builder's exact parameters."""

    async def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._client._execute(builder(*args, **kwargs))  # type: ignore[no-any-return]

    method.__doc__ = builder.__doc__
    method.__name__ = builder.__name__
    method.__signature__ = _signature_with_self(builder, inspect.signature(builder).return_annotation)  # type: ignore[attr-defined]
    return method


# --- sync ----------------------------------------------------------------------------------------

class Resource:
    def __init__(self, client: "LlamaCppClient") -> None:
        self._client = client


class ChatCompletions(Resource):
    # <generated ChatCompletions.create from _calls.chat_completion: scripts/gen_resources.py>
    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Stream[types.ChatCompletionChunk]: ...

    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion | Stream[types.ChatCompletionChunk]: ...

    @_same_signature_as(_calls.chat_completion)
    def create(self, **kwargs: Any) -> types.ChatCompletion | Stream[types.ChatCompletionChunk]:
        return self._client._execute(_calls.chat_completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class Chat(Resource):
    def __init__(self, client: "LlamaCppClient") -> None:
        super().__init__(client)
        self.completions = ChatCompletions(client)


class Completions(Resource):
    # <generated Completions.create from _calls.completion: scripts/gen_resources.py>
    @overload
    def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Completion: ...

    @overload
    def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Stream[types.Completion]: ...

    @overload
    def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Completion | Stream[types.Completion]: ...

    @_same_signature_as(_calls.completion)
    def create(self, **kwargs: Any) -> types.Completion | Stream[types.Completion]:
        return self._client._execute(_calls.completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class Messages(Resource):
    # <generated Messages.create from _calls.message: scripts/gen_resources.py>
    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: Literal[False] = False,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Message: ...

    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
    ) -> Stream[types.MessageStreamEvent]: ...

    @overload
    def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: bool,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Message | Stream[types.MessageStreamEvent]: ...

    @_same_signature_as(_calls.message)
    def create(self, **kwargs: Any) -> types.Message | Stream[types.MessageStreamEvent]:
        return self._client._execute(_calls.message(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class Embeddings(Resource):
    create = _endpoint(_calls.embeddings)


class Models(Resource):
    list = _endpoint(_calls.list_models)
    load = _endpoint(_calls.load_model)
    unload = _endpoint(_calls.unload_model)


class Props(Resource):
    get = _endpoint(_calls.get_props)


class Slots(Resource):
    list = _endpoint(_calls.list_slots)
    save = _endpoint(_calls.save_slot)
    restore = _endpoint(_calls.restore_slot)
    erase = _endpoint(_calls.erase_slot)


class Lora(Resource):
    list = _endpoint(_calls.list_lora)
    apply = _endpoint(_calls.apply_lora)


class Metrics(Resource):
    get = _endpoint(_calls.get_metrics)
    parse = _endpoint(_calls.parse_metrics)


class ClientMethods:
    """The shortcuts on the client itself (``client.chat_completion(...)``, ``client.embed(...)``...)."""

    @property
    def _client(self) -> "LlamaCppClient":
        return self  # type: ignore[return-value]

    # <generated ClientMethods.chat_completion from _calls.chat_completion: scripts/gen_resources.py>
    @overload
    def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion: ...

    @overload
    def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Stream[types.ChatCompletionChunk]: ...

    @overload
    def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion | Stream[types.ChatCompletionChunk]: ...

    @_same_signature_as(_calls.chat_completion)
    def chat_completion(self, **kwargs: Any) -> types.ChatCompletion | Stream[types.ChatCompletionChunk]:
        return self._client._execute(_calls.chat_completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>

    embed = _endpoint(_calls.embed)
    tokenize = _endpoint(_calls.tokenize)
    detokenize = _endpoint(_calls.detokenize)
    rerank = _endpoint(_calls.rerank)


# --- async ----------------------------------------------------------------------------------------

class AsyncResource:
    def __init__(self, client: "AsyncLlamaCppClient") -> None:
        self._client = client


class AsyncChatCompletions(AsyncResource):
    # <generated AsyncChatCompletions.create from _calls.chat_completion: scripts/gen_resources.py>
    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncStream[types.ChatCompletionChunk]: ...

    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion | AsyncStream[types.ChatCompletionChunk]: ...

    @_same_signature_as(_calls.chat_completion)
    async def create(self, **kwargs: Any) -> types.ChatCompletion | AsyncStream[types.ChatCompletionChunk]:
        return await self._client._execute(_calls.chat_completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class AsyncChat(AsyncResource):
    def __init__(self, client: "AsyncLlamaCppClient") -> None:
        super().__init__(client)
        self.completions = AsyncChatCompletions(client)


class AsyncCompletions(AsyncResource):
    # <generated AsyncCompletions.create from _calls.completion: scripts/gen_resources.py>
    @overload
    async def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Completion: ...

    @overload
    async def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncStream[types.Completion]: ...

    @overload
    async def create(
        self,
        *,
        prompt: str | Sequence[int],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Completion | AsyncStream[types.Completion]: ...

    @_same_signature_as(_calls.completion)
    async def create(self, **kwargs: Any) -> types.Completion | AsyncStream[types.Completion]:
        return await self._client._execute(_calls.completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class AsyncMessages(AsyncResource):
    # <generated AsyncMessages.create from _calls.message: scripts/gen_resources.py>
    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: Literal[False] = False,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Message: ...

    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: Literal[True],
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncStream[types.MessageStreamEvent]: ...

    @overload
    async def create(
        self,
        *,
        messages: _calls.Messages,
        max_tokens: int | None = None,
        model: str | None = None,
        system: str | Sequence[Mapping[str, Any]] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        thinking: Mapping[str, Any] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stream: bool,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.Message | AsyncStream[types.MessageStreamEvent]: ...

    @_same_signature_as(_calls.message)
    async def create(self, **kwargs: Any) -> types.Message | AsyncStream[types.MessageStreamEvent]:
        return await self._client._execute(_calls.message(**kwargs))  # type: ignore[no-any-return]
    # </generated>


class AsyncEmbeddings(AsyncResource):
    create = _async_endpoint(_calls.embeddings)


class AsyncModels(AsyncResource):
    list = _async_endpoint(_calls.list_models)
    load = _async_endpoint(_calls.load_model)
    unload = _async_endpoint(_calls.unload_model)


class AsyncProps(AsyncResource):
    get = _async_endpoint(_calls.get_props)


class AsyncSlots(AsyncResource):
    list = _async_endpoint(_calls.list_slots)
    save = _async_endpoint(_calls.save_slot)
    restore = _async_endpoint(_calls.restore_slot)
    erase = _async_endpoint(_calls.erase_slot)


class AsyncLora(AsyncResource):
    list = _async_endpoint(_calls.list_lora)
    apply = _async_endpoint(_calls.apply_lora)


class AsyncMetrics(AsyncResource):
    get = _async_endpoint(_calls.get_metrics)
    parse = _async_endpoint(_calls.parse_metrics)


class AsyncClientMethods:
    """The shortcuts on the client itself (``client.chat_completion(...)``, ``client.embed(...)``...)."""

    @property
    def _client(self) -> "AsyncLlamaCppClient":
        return self  # type: ignore[return-value]

    # <generated AsyncClientMethods.chat_completion from _calls.chat_completion: scripts/gen_resources.py>
    @overload
    async def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[False] = False,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion: ...

    @overload
    async def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> AsyncStream[types.ChatCompletionChunk]: ...

    @overload
    async def chat_completion(
        self,
        *,
        messages: _calls.Messages,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        stop: _calls.Stop = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        response_format: Mapping[str, Any] | None = None,
        stream: bool,
        stream_options: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        reasoning_format: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> types.ChatCompletion | AsyncStream[types.ChatCompletionChunk]: ...

    @_same_signature_as(_calls.chat_completion)
    async def chat_completion(self, **kwargs: Any) -> types.ChatCompletion | AsyncStream[types.ChatCompletionChunk]:
        return await self._client._execute(_calls.chat_completion(**kwargs))  # type: ignore[no-any-return]
    # </generated>

    embed = _async_endpoint(_calls.embed)
    tokenize = _async_endpoint(_calls.tokenize)
    detokenize = _async_endpoint(_calls.detokenize)
    rerank = _async_endpoint(_calls.rerank)
