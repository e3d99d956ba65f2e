"""``--min-max-tokens N``: raise a too-small ``max_tokens`` before it empties a thinking model's answer.

A thinking model spends its output budget on reasoning first; with ``max_tokens`` below the
reasoning length the answer comes back empty (``finish_reason: length``). Agents often send
small budgets for "quick" calls. Off by default — the gateway never changes a request unless
asked; when it does, the span records the value the client sent
(``llamatelemetry.proxy.max_tokens_raised_from``).

Only chat requests are touched (OpenAI ``/v1/chat/completions``: ``max_tokens`` or
``max_completion_tokens``; Anthropic ``/v1/messages``: ``max_tokens``), and only a budget
that is present and smaller than the floor: an absent one already means "no limit".

Example::

    >>> body = {"messages": [], "max_tokens": 64}
    >>> raise_max_tokens(body, "/v1/chat/completions", 1500)
    64
    >>> body["max_tokens"]
    1500
"""

from __future__ import annotations

from typing import Any

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions", "/v1/messages")
_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


def raise_max_tokens(body: dict[str, Any], path: str, floor: int) -> int | None:
    """Raise the budget in ``body`` (in place) to ``floor``; return the client's value if changed, else None."""
    if path.rstrip("/") not in _CHAT_PATHS:
        return None
    for field in _BUDGET_FIELDS:
        value = body.get(field)
        # bool is an int subclass; a JSON true is not a budget.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < floor:
            body[field] = floor
            return value
    return None
