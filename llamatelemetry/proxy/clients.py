"""Who is calling: a low-cardinality client name from the request's headers.

The name becomes a metric attribute (``llamatelemetry.client.name``), so it must come from a
small fixed set, never from free text: a dashboard groups tokens, latency and empty answers
by it. ``X-Client-Name`` overrides the guess (for tools whose User-Agent is a generic SDK's,
e.g. aider, which sends the openai SDK's ``OpenAI/Python``); it is accepted only if it looks
like a name (lower-case letters, digits, ``._-``, at most 40 characters) so a caller cannot
blow up the metric's cardinality with arbitrary text.

Example::

    >>> client_name("claude-cli/2.0.14 (external, cli)")
    'claude-code'
    >>> client_name("OpenAI/Python 1.99.1", override="my-agent")
    'my-agent'
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("llamatelemetry.proxy")

#: Request header that names the client explicitly (case-insensitive, like every HTTP header).
CLIENT_NAME_HEADER = "x-client-name"
#: Name for any client the rules below do not recognise.
OTHER = "other"

# (substring of the lower-cased User-Agent, client name), first match wins. Specific tools come
# before the SDKs they are built on (Claude Code's UA is its own, not the anthropic SDK's).
_USER_AGENT_RULES: tuple[tuple[str, str], ...] = (
    ("claude-cli/", "claude-code"),
    ("claude-code", "claude-code"),
    ("aider", "aider"),
    ("continue", "continue"),
    ("openai/python", "openai-python"),      # OpenAI/Python and AsyncOpenAI/Python
    ("anthropic/python", "anthropic-python"),  # Anthropic/Python and AsyncAnthropic/Python
    ("curl/", "curl"),
)
#: The names the rules can produce, plus ``other`` (documentation and tests use this).
KNOWN_CLIENTS: tuple[str, ...] = tuple(dict.fromkeys(name for _, name in _USER_AGENT_RULES)) + (OTHER,)

_VALID_OVERRIDE = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
#: The rule, as the log line and the docs state it.
CLIENT_NAME_RULE = "lower-case letters, digits, '.', '_' and '-', starting with a letter or digit, at most 40 characters"
#: Bad X-Client-Name values already logged (bounded: a client sending random values must not grow it).
_WARNED: set[str] = set()
_MAX_WARNED = 64


def client_name(user_agent: str | None, override: str | None = None) -> str:
    """The client's low-cardinality name: ``override`` if it is a valid name, else a guess from ``user_agent``."""
    if override:
        candidate = override.strip().lower()
        if _VALID_OVERRIDE.fullmatch(candidate):
            return candidate
    guessed = OTHER
    if user_agent:
        lowered = user_agent.lower()
        guessed = next((name for needle, name in _USER_AGENT_RULES if needle in lowered), OTHER)
    if override:
        _warn_ignored(override, guessed)
    return guessed


def _warn_ignored(override: str, used: str) -> None:
    """Say once per value (not per request) that an ``X-Client-Name`` was ignored, and why."""
    if override in _WARNED or len(_WARNED) >= _MAX_WARNED:
        return
    _WARNED.add(override)
    log.warning("X-Client-Name %r ignored (a client name is %s); recorded as %r, from the User-Agent",
                override[:80], CLIENT_NAME_RULE, used)
