"""Request builders: one pure function per endpoint, shared by the sync and async clients.

Each returns a :class:`~llamatelemetry._base.Call` (what to send, how to parse the answer,
which telemetry operation it is). The public methods are generated from these functions,
so the sync and async clients have exactly the same parameters and documentation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence, Union

from . import types
from ._base import Call, merge_body

if TYPE_CHECKING:
    from .promtext import MetricFamily

Messages = Sequence[Mapping[str, Any]]
Stop = Union[str, Sequence[str], None]


def _with_usage(stream: bool, stream_options: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """Ask llama-server for usage in streams unless the caller explicitly said no.

    Returns the stream_options to send and whether the caller asked for the usage chunk
    (if not, the stream hides it and only telemetry and ``get_final_completion`` use it).
    """
    if not stream:
        return (dict(stream_options) if stream_options else None), True
    options = dict(stream_options or {})
    if "include_usage" in options:
        return options, bool(options["include_usage"])
    options["include_usage"] = True
    return options, False


def request_token_positions(call: "Call[Any]") -> None:
    """Ask llama-server for the running token count in every chunk of a streamed chat (telemetry only).

    ``"timings_per_token": true`` adds ``timings.predicted_n`` (tokens generated so far) to each
    chunk: the exact reasoning-token count is the position of the first visible-content chunk.
    Like the injected usage chunk, the per-chunk timings are hidden unless the caller asked for
    them. ``/v1/messages`` streams carry no per-chunk timings (llama-server b11434), so only chat.
    """
    if not call.stream or call.path != "/v1/chat/completions" or not isinstance(call.body, dict):
        return
    if "timings_per_token" in call.body:
        call.caller_wants_timings = bool(call.body["timings_per_token"])
        return
    call.body["timings_per_token"] = True
    call.caller_wants_timings = False


def chat_completion(
    *,
    messages: Messages,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Stop = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: Any = None,
    response_format: Mapping[str, Any] | None = None,
    stream: bool = False,
    stream_options: Mapping[str, Any] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    reasoning_format: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> Call[types.ChatCompletion]:
    """Create a chat completion (``POST /v1/chat/completions``).

    With ``stream=True`` the result is a stream of :class:`~llamatelemetry.types.ChatCompletionChunk`,
    else a :class:`~llamatelemetry.types.ChatCompletion`. ``model`` defaults to the server's model.
    llama.cpp extras: ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``),
    ``reasoning_format``, and any other field through ``extra_body``.

    Example::

        resp = client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=64)
        print(resp.choices[0].message.content, resp.usage.completion_tokens)
    """
    options, wants_usage = _with_usage(stream, stream_options)
    body = merge_body({
        "messages": list(messages), "model": model, "max_tokens": max_tokens, "temperature": temperature,
        "top_p": top_p, "top_k": top_k, "seed": seed, "stop": stop, "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty, "tools": tools, "tool_choice": tool_choice,
        "response_format": response_format, "stream": True if stream else None, "stream_options": options,
        "chat_template_kwargs": chat_template_kwargs, "reasoning_format": reasoning_format,
    }, extra_body)
    return Call("POST", "/v1/chat/completions", types.ChatCompletion.from_dict, body=body, operation="chat",
                stream=stream, caller_wants_usage=wants_usage)


def completion(
    *,
    prompt: str | Sequence[int],
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Stop = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    stream: bool = False,
    stream_options: Mapping[str, Any] | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> Call[types.Completion]:
    """Create a text completion (``POST /v1/completions``).

    Example::

        resp = client.completions.create(prompt="Once upon a time", max_tokens=16)
        print(resp.choices[0].text)
    """
    options, wants_usage = _with_usage(stream, stream_options)
    body = merge_body({
        "prompt": prompt, "model": model, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "top_k": top_k, "seed": seed, "stop": stop, "frequency_penalty": frequency_penalty,
        "presence_penalty": presence_penalty, "stream": True if stream else None, "stream_options": options,
    }, extra_body)
    return Call("POST", "/v1/completions", types.Completion.from_dict, body=body, operation="text_completion",
                stream=stream, caller_wants_usage=wants_usage)


def message(
    *,
    messages: Messages,
    max_tokens: int | None = None,
    model: str | None = None,
    system: str | Sequence[Mapping[str, Any]] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop_sequences: Sequence[str] | None = None,
    thinking: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    stream: bool = False,
    extra_body: Mapping[str, Any] | None = None,
) -> Call[types.Message]:
    """Create an Anthropic-shaped message (``POST /v1/messages``): thinking and text blocks.

    With ``stream=True`` the result is a stream of :class:`~llamatelemetry.types.MessageStreamEvent`.

    Example::

        msg = client.messages.create(messages=[{"role": "user", "content": "Hi"}], max_tokens=256)
        print(msg.thinking, msg.text, msg.usage.output_tokens)
    """
    body = merge_body({
        "messages": list(messages), "max_tokens": max_tokens, "model": model, "system": system,
        "temperature": temperature, "top_p": top_p, "top_k": top_k, "stop_sequences": stop_sequences,
        "thinking": thinking, "tools": tools, "stream": True if stream else None,
    }, extra_body)
    return Call("POST", "/v1/messages", types.Message.from_dict, body=body, operation="chat", stream=stream)


def embeddings(
    *,
    input: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
    model: str | None = None,
    encoding_format: Literal["float", "base64"] | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> Call[types.CreateEmbeddingResponse]:
    """Create embeddings (``POST /v1/embeddings``; llama-server needs ``--embeddings``).

    Example::

        resp = client.embeddings.create(input=["first", "second"])
        vectors = [d.embedding for d in resp.data]
    """
    body = merge_body({"input": input, "model": model, "encoding_format": encoding_format}, extra_body)
    return Call("POST", "/v1/embeddings", types.CreateEmbeddingResponse.from_dict, body=body, operation="embeddings")


def embed(text: str, *, model: str | None = None) -> Call[list[float]]:
    """Embed one text and return its vector (short form of ``embeddings.create``).

    Example::

        vector = client.embed("hello")
    """
    call = embeddings(input=text, model=model)
    return Call(call.method, call.path, call.parse, body=call.body, operation=call.operation,
                unwrap=lambda response: response.data[0].embedding)


def rerank(query: str, documents: Sequence[str], *, top_n: int | None = None, model: str | None = None) -> Call[types.RerankResponse]:
    """Rank ``documents`` by relevance to ``query`` (``POST /v1/rerank``; needs a reranker and ``--rerank``).

    Example::

        best = client.rerank("capital of France", ["Paris is...", "Bananas are..."], top_n=1).results[0]
    """
    body = merge_body({"query": query, "documents": list(documents), "top_n": top_n, "model": model}, None)
    return Call("POST", "/v1/rerank", types.RerankResponse.from_dict, body=body, operation="rerank")


def tokenize(text: str, *, add_special: bool = False, parse_special: bool = True) -> Call[list[int]]:
    """Tokenize text with the server's model (``POST /tokenize``) and return the token ids.

    Example::

        ids = client.tokenize("Hello there")
    """
    body = {"content": text, "add_special": add_special, "parse_special": parse_special}
    return Call("POST", "/tokenize", lambda data: list(data["tokens"]), body=body)


def detokenize(tokens: Iterable[int]) -> Call[str]:
    """Turn token ids back into text (``POST /detokenize``).

    Example::

        text = client.detokenize([9906, 1070])
    """
    return Call("POST", "/detokenize", lambda data: str(data["content"]), body={"tokens": list(tokens)})


def list_models() -> Call[types.ModelList]:
    """List the served models (``GET /v1/models``).

    Example::

        model_id = client.models.list().data[0].id
    """
    return Call("GET", "/v1/models", types.ModelList.from_dict)


def load_model(model: str) -> Call[bool]:
    """Start a model of a router (``POST /models/load``; ``llama-server --models-dir``/``--models-preset``).

    Returns as soon as the router has started loading it (True); watch
    ``client.models.list()`` for its ``status.value`` to become ``loaded``. An unknown model
    raises :class:`~llamatelemetry.errors.UnknownModelError`, one already running a
    :class:`~llamatelemetry.errors.BadRequestError`.

    Example::

        client.models.load("coder")
    """
    return Call("POST", "/models/load", _succeeded, body={"model": model})


def unload_model(model: str) -> Call[bool]:
    """Stop a running model of a router (``POST /models/unload``), freeing its memory.

    Example::

        client.models.unload("coder")
    """
    return Call("POST", "/models/unload", _succeeded, body={"model": model})


def _succeeded(data: Any) -> bool:
    return isinstance(data, dict) and data.get("success") is True


def get_props() -> Call[types.Props]:
    """Read server properties (``GET /props``): slots, context size, chat template, build.

    Example::

        props = client.props.get(); print(props.total_slots, props.n_ctx)
    """
    return Call("GET", "/props", types.Props.from_dict)


def list_slots() -> Call[list[types.Slot]]:
    """List the server's slots (``GET /slots``; disabled by ``--no-slots``).

    Example::

        busy = [s.id for s in client.slots.list() if s.is_processing]
    """
    return Call("GET", "/slots", lambda data: [types.Slot.from_dict(s) for s in data])


def _slot_action(action: str, slot_id: int, filename: str | None) -> Call[dict[str, Any]]:
    body = {"filename": filename} if filename is not None else {}
    return Call("POST", f"/slots/{int(slot_id)}", lambda data: data, body=body, params={"action": action})


def save_slot(slot_id: int, filename: str) -> Call[dict[str, Any]]:
    """Save a slot's KV cache to ``filename`` in ``--slot-save-path``.

    Example::

        client.slots.save(0, "session.bin")
    """
    return _slot_action("save", slot_id, filename)


def restore_slot(slot_id: int, filename: str) -> Call[dict[str, Any]]:
    """Restore a slot's KV cache from ``filename`` (saved with :meth:`save`).

    Example::

        client.slots.restore(0, "session.bin")
    """
    return _slot_action("restore", slot_id, filename)


def erase_slot(slot_id: int) -> Call[dict[str, Any]]:
    """Erase a slot's KV cache.

    Example::

        client.slots.erase(0)
    """
    return _slot_action("erase", slot_id, None)


def list_lora() -> Call[list[types.LoraAdapter]]:
    """List loaded LoRA adapters and their scales (``GET /lora-adapters``).

    Example::

        for adapter in client.lora.list(): print(adapter.id, adapter.scale)
    """
    return Call("GET", "/lora-adapters", lambda data: [types.LoraAdapter.from_dict(a) for a in data])


def apply_lora(scales: Mapping[int, float] | Sequence[Mapping[str, Any]]) -> Call[dict[str, Any]]:
    """Set LoRA adapter scales, as ``{id: scale}`` or ``[{"id": 0, "scale": 0.5}]``.

    Example::

        client.lora.apply({0: 0.5})
    """
    body = [{"id": int(k), "scale": float(v)} for k, v in scales.items()] if isinstance(scales, Mapping) else list(scales)
    return Call("POST", "/lora-adapters", lambda data: data, body=body)  # type: ignore[arg-type]


def get_metrics() -> Call[str]:
    """Read llama-server's Prometheus metrics as text (``GET /metrics``; needs ``--metrics``).

    Note: every read resets llama-server's two throughput gauges; prefer ``rate()`` of its counters.

    Example::

        text = client.metrics.get()
    """
    return Call("GET", "/metrics", lambda text: text, raw_text=True)


def parse_metrics() -> "Call[list[MetricFamily]]":
    """Read ``/metrics`` and parse it into metric families.

    Example::

        families = {f.name: f for f in client.metrics.parse()}
        families["llamacpp:tokens_predicted_total"].samples[0].value
    """
    from .promtext import parse_prometheus_text

    return Call("GET", "/metrics", parse_prometheus_text, raw_text=True)
