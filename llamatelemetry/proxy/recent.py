"""The last N requests the gateway forwarded, for ``GET /api/recent`` on the admin port.

A bounded ring buffer (``collections.deque(maxlen=...)``): memory stays constant however
long the gateway runs. Appending and reading happen on the event loop thread only.

Example::

    recent = RecentRequests(limit=200)
    recent.add(RecentRequest(time=time.time(), client="curl", method="GET", endpoint="/health",
                             upstream="http://127.0.0.1:8080", status=200))
    recent.as_json(limit=10)   # {"requests": [{...}]}, newest first
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

#: How many requests ``/api/recent`` remembers unless told otherwise.
DEFAULT_RECENT_LIMIT = 200


@dataclass(slots=True)
class RecentRequest:
    """One forwarded request as ``/api/recent`` shows it (field names are a contract: ``llamatelemetry top`` and dashboards read them)."""

    time: float  #: unix seconds when the request arrived
    client: str
    method: str
    endpoint: str  #: path without the query string
    upstream: str
    model: str | None = None
    status: int | None = None  #: the status the client received (the gateway's 502 when the upstream was unreachable); None: no answer
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    budget_exhausted: bool = False
    error_type: str | None = None
    max_tokens_raised_from: int | None = None  #: the client's max_tokens when --min-max-tokens raised it


class RecentRequests:
    """A bounded, newest-first view of recent requests."""

    def __init__(self, limit: int = DEFAULT_RECENT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("the recent-requests buffer needs room for at least one request")
        self._items: deque[RecentRequest] = deque(maxlen=limit)

    def add(self, item: RecentRequest) -> None:
        self._items.append(item)

    def newest(self, limit: int | None = None) -> list[RecentRequest]:
        items = list(reversed(self._items))
        return items if limit is None else items[: max(limit, 0)]

    def as_json(self, limit: int | None = None) -> dict[str, list[dict[str, Any]]]:
        return {"requests": [asdict(item) for item in self.newest(limit)]}
