"""What the gateway knows about llama-server's paths: which are inference calls, and route names for metrics.

Example::

    >>> inference_endpoint("/v1/messages").operation
    'chat'
    >>> http_route("/slots/0")
    '/slots/{id_slot}'
    >>> http_route("/wp-login.php")
    'other'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import types
from .._accumulate import Accumulator, ChatAccumulator, CompletionAccumulator, MessagesAccumulator


@dataclass(frozen=True, slots=True)
class InferenceEndpoint:
    """An endpoint that gets a GenAI span: its operation, its typed result, its stream accumulator."""

    operation: str
    parse: Callable[[Any], Any]
    accumulator: Callable[[], Accumulator] | None = None

    def new_accumulator(self) -> Accumulator:
        # The gateway forwards every chunk; "show" only matters to the typed client's iterator.
        return self.accumulator() if self.accumulator is not None else ChatAccumulator(show_usage_chunk=True)


_CHAT = InferenceEndpoint("chat", types.ChatCompletion.from_dict, lambda: ChatAccumulator(show_usage_chunk=True))
_COMPLETION = InferenceEndpoint("text_completion", types.Completion.from_dict, lambda: CompletionAccumulator(show_usage_chunk=True))
_MESSAGES = InferenceEndpoint("chat", types.Message.from_dict, MessagesAccumulator)
_EMBEDDINGS = InferenceEndpoint("embeddings", types.CreateEmbeddingResponse.from_dict)
_RERANK = InferenceEndpoint("rerank", types.RerankResponse.from_dict)

# The OpenAI- and Anthropic-compatible endpoints (llama-server serves most with and without /v1).
# llama.cpp's native /completion and /infill answer in their own shape: forwarded and counted,
# without a GenAI span.
_INFERENCE: dict[str, InferenceEndpoint] = {
    "/v1/chat/completions": _CHAT, "/chat/completions": _CHAT,
    "/v1/completions": _COMPLETION, "/completions": _COMPLETION,
    "/v1/messages": _MESSAGES,
    "/v1/embeddings": _EMBEDDINGS, "/embeddings": _EMBEDDINGS,
    "/v1/rerank": _RERANK, "/rerank": _RERANK, "/v1/reranking": _RERANK, "/reranking": _RERANK,
}

#: llama-server's routes (build b11434); any other path is forwarded all the same but counted
#: as ``other`` so a scanner probing random paths cannot create unbounded metric series.
_KNOWN_ROUTES = frozenset(_INFERENCE) | {
    "/", "/health", "/v1/health", "/metrics", "/props", "/api/show", "/models", "/v1/models", "/api/tags",
    "/completion", "/api/chat", "/v1/responses", "/v1/messages/count_tokens", "/infill", "/embedding",
    "/tokenize", "/detokenize", "/apply-template", "/lora-adapters", "/slots",
}
OTHER_ROUTE = "other"


def inference_endpoint(path: str) -> InferenceEndpoint | None:
    """The inference endpoint at ``path``, or None for everything else."""
    return _INFERENCE.get(path.rstrip("/") or "/")


def http_route(path: str) -> str:
    """A low-cardinality route name for ``path`` (the ``http.route`` metric attribute)."""
    path = path.rstrip("/") or "/"
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/slots/") and path.count("/") == 2:
        return "/slots/{id_slot}"
    return OTHER_ROUTE
