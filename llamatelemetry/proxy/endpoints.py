"""Route names for the gateway's request counter: llama-server's paths, bounded.

Example::

    >>> http_route("/slots/0")
    '/slots/{id_slot}'
    >>> http_route("/wp-login.php")
    'other'
"""

from __future__ import annotations

# The inference endpoints (which ones get a GenAI span) are the recorder's to know:
# :func:`llamatelemetry.telemetry.recorder.operation_for`.
_INFERENCE = ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/v1/messages",
              "/v1/embeddings", "/embeddings", "/v1/rerank", "/rerank", "/v1/reranking", "/reranking")

#: llama-server's routes (build b11434); any other path is forwarded all the same but counted
#: as ``other`` so a scanner probing random paths cannot create unbounded metric series.
_KNOWN_ROUTES = frozenset(_INFERENCE) | {
    "/", "/health", "/v1/health", "/metrics", "/props", "/api/show", "/models", "/v1/models", "/api/tags",
    "/completion", "/api/chat", "/v1/responses", "/v1/messages/count_tokens", "/infill", "/embedding",
    "/tokenize", "/detokenize", "/apply-template", "/lora-adapters", "/slots",
}
OTHER_ROUTE = "other"


def http_route(path: str) -> str:
    """A low-cardinality route name for ``path`` (the ``http.route`` metric attribute)."""
    path = path.rstrip("/") or "/"
    if path in _KNOWN_ROUTES:
        return path
    if path.startswith("/slots/") and path.count("/") == 2:
        return "/slots/{id_slot}"
    return OTHER_ROUTE
