"""Typed results of every llama-server endpoint, in the OpenAI / Anthropic shapes.

Fields llama-server adds beyond these stay reachable as attributes (see ``Record.extra``).

Example::

    resp = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}])
    resp.choices[0].message.content, resp.usage.completion_tokens, resp.timings.predicted_per_second
"""

from __future__ import annotations


from dataclasses import dataclass, field
from typing import Any, Literal

from ._model import Record



__all__ = [
    "Record", "PromptTokensDetails", "CompletionTokensDetails", "Usage", "Timings", "FunctionCall", "ToolCall",
    "ChatCompletionMessage", "Choice", "ChatCompletion", "ChoiceDelta", "ChunkChoice", "ChatCompletionChunk",
    "CompletionChoice", "Completion", "ContentBlock", "MessageUsage", "Message", "MessageStreamEvent",
    "Embedding", "EmbeddingUsage", "CreateEmbeddingResponse", "RerankResult", "RerankResponse", "Model",
    "ModelList", "Props", "Slot", "LoraAdapter", "Health", "HealthStatus", "ModelStatus",
]


# --- usage and llama.cpp timings -------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class PromptTokensDetails(Record):
    cached_tokens: int | None = None


@dataclass(slots=True, kw_only=True)
class CompletionTokensDetails(Record):
    reasoning_tokens: int | None = None


@dataclass(slots=True, kw_only=True)
class Usage(Record):
    """Token counts. ``prompt_tokens`` includes cached tokens (``prompt_tokens_details.cached_tokens``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


@dataclass(slots=True, kw_only=True)
class Timings(Record):
    """llama-server's own timings for one request (milliseconds, tokens per second)."""

    cache_n: int | None = None
    prompt_n: int | None = None
    prompt_ms: float | None = None
    prompt_per_token_ms: float | None = None
    prompt_per_second: float | None = None
    predicted_n: int | None = None
    predicted_ms: float | None = None
    predicted_per_token_ms: float | None = None
    predicted_per_second: float | None = None
    draft_n: int | None = None
    draft_n_accepted: int | None = None


# --- chat completions --------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class FunctionCall(Record):
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True, kw_only=True)
class ToolCall(Record):
    id: str | None = None
    type: str | None = None
    index: int | None = None
    function: FunctionCall | None = None


@dataclass(slots=True, kw_only=True)
class ChatCompletionMessage(Record):
    """The assistant's message; ``reasoning_content`` holds the model's thinking, if any."""

    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


@dataclass(slots=True, kw_only=True)
class Choice(Record):
    index: int = 0
    message: ChatCompletionMessage = field(default_factory=ChatCompletionMessage)
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass(slots=True, kw_only=True)
class ChatCompletion(Record):
    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = field(default_factory=list)
    usage: Usage | None = None
    timings: Timings | None = None
    system_fingerprint: str | None = None


@dataclass(slots=True, kw_only=True)
class ChoiceDelta(Record):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


@dataclass(slots=True, kw_only=True)
class ChunkChoice(Record):
    index: int = 0
    delta: ChoiceDelta = field(default_factory=ChoiceDelta)
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass(slots=True, kw_only=True)
class ChatCompletionChunk(Record):
    """One streamed chunk. The final one (when usage was asked for) has no choices but ``usage``."""

    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    choices: list[ChunkChoice] = field(default_factory=list)
    usage: Usage | None = None
    timings: Timings | None = None
    system_fingerprint: str | None = None


# --- text completions ----------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class CompletionChoice(Record):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass(slots=True, kw_only=True)
class Completion(Record):
    """``/v1/completions`` result, and each chunk of its stream."""

    id: str = ""
    object: str = "text_completion"
    created: int = 0
    model: str = ""
    choices: list[CompletionChoice] = field(default_factory=list)
    usage: Usage | None = None
    timings: Timings | None = None
    system_fingerprint: str | None = None


# --- Anthropic-shaped messages --------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class ContentBlock(Record):
    """A ``thinking``, ``text`` or ``tool_use`` block."""

    type: str = "text"
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


@dataclass(slots=True, kw_only=True)
class MessageUsage(Record):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


@dataclass(slots=True, kw_only=True)
class Message(Record):
    """``/v1/messages`` result. ``thinking``/``text`` give the joined blocks of each kind."""

    id: str = ""
    type: str = "message"
    role: str = "assistant"
    model: str = ""
    content: list[ContentBlock] = field(default_factory=list)
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: MessageUsage | None = None
    timings: Timings | None = None

    @property
    def text(self) -> str:
        return "".join(b.text or "" for b in self.content if b.type == "text")

    @property
    def thinking(self) -> str:
        return "".join(b.thinking or "" for b in self.content if b.type == "thinking")


@dataclass(slots=True, kw_only=True)
class MessageStreamEvent(Record):
    """One server-sent event of a ``/v1/messages`` stream (``message_start``, ``content_block_delta``, ...)."""

    type: str = ""
    message: Message | None = None
    index: int | None = None
    content_block: ContentBlock | None = None
    delta: dict[str, Any] | None = None
    usage: MessageUsage | None = None


# --- embeddings, rerank ----------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class Embedding(Record):
    index: int = 0
    embedding: list[float] = field(default_factory=list)
    object: str = "embedding"


@dataclass(slots=True, kw_only=True)
class EmbeddingUsage(Record):
    prompt_tokens: int = 0
    total_tokens: int = 0


@dataclass(slots=True, kw_only=True)
class CreateEmbeddingResponse(Record):
    data: list[Embedding] = field(default_factory=list)
    model: str = ""
    object: str = "list"
    usage: EmbeddingUsage | None = None


@dataclass(slots=True, kw_only=True)
class RerankResult(Record):
    index: int = 0
    relevance_score: float = 0.0
    document: Any = None


@dataclass(slots=True, kw_only=True)
class RerankResponse(Record):
    results: list[RerankResult] = field(default_factory=list)
    model: str | None = None
    object: str | None = None
    usage: EmbeddingUsage | None = None


# --- server state ----------------------------------------------------------------------------------

@dataclass(slots=True, kw_only=True)
class ModelStatus(Record):
    """A router-mode model's state (``status`` in ``/v1/models`` of ``llama-server --models-dir``).

    ``value`` is ``loaded``, ``loading``, ``unloaded``, ``sleeping``, ``downloading`` or
    ``downloaded``; after a failed load ``failed`` is true and ``exit_code`` is the child's.

    Example::

        status = client.models.list().data[0].status
        if status is not None and status.failed: print(status.value, status.exit_code)
    """

    value: str = ""
    args: list[str] | None = None
    failed: bool = False
    exit_code: int | None = None
    preset: str | None = None


@dataclass(slots=True, kw_only=True)
class Model(Record):
    """One entry of ``/v1/models``; ``meta`` has ``n_ctx``, ``n_params``, ``size``, ``n_vocab``...

    A router (``llama-server --models-dir``) also fills ``status``, ``aliases``, ``tags`` and ``source``.
    """

    id: str = ""
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
    meta: dict[str, Any] | None = None
    status: ModelStatus | None = None
    aliases: list[str] | None = None
    tags: list[str] | None = None
    source: str | None = None


@dataclass(slots=True, kw_only=True)
class ModelList(Record):
    data: list[Model] = field(default_factory=list)
    object: str = "list"


@dataclass(slots=True, kw_only=True)
class Props(Record):
    """``/props``: server-wide settings. ``n_ctx`` is the per-slot context size."""

    total_slots: int | None = None
    model_path: str | None = None
    model_alias: str | None = None
    chat_template: str | None = None
    modalities: dict[str, Any] | None = None
    build_info: str | None = None
    default_generation_settings: dict[str, Any] | None = None

    @property
    def n_ctx(self) -> int | None:
        settings = self.default_generation_settings or {}
        return settings.get("n_ctx")


@dataclass(slots=True, kw_only=True)
class Slot(Record):
    """One entry of ``/slots``."""

    id: int = 0
    n_ctx: int | None = None
    speculative: bool | None = None
    is_processing: bool = False
    id_task: int | None = None
    params: dict[str, Any] | None = None
    next_token: Any = None


@dataclass(slots=True, kw_only=True)
class LoraAdapter(Record):
    id: int = 0
    path: str | None = None
    scale: float = 0.0


HealthStatus = Literal["ok", "loading", "unreachable", "error"]


@dataclass(slots=True, kw_only=True)
class Health(Record):
    """Result of ``client.health.check()``; never raises for a down server."""

    status: HealthStatus = "ok"
    message: str = ""
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"
