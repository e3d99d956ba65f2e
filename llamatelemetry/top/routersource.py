"""``top``'s models panel source: a llama-server router's models, followed through :mod:`llamatelemetry.router`.

A router (``llama-server --models-dir``) swaps models in tens of milliseconds; sampling
``/models`` once a refresh would miss whole loads, so this follows ``/models/sse`` with the
project's one :class:`~llamatelemetry.router.ModelWatcher` (in its own daemon thread) and hands
each refresh a copy of its state. It reads ``/models`` and ``/models/sse`` only — answered by the
router itself, they never load, wake or keep alive a model (unlike its ``/metrics``).

Example::

    source = RouterSource("http://127.0.0.1:8080").start()
    reading = source.read()        # RouterReading(url, models=[ModelState(...), ...], error=None)
    source.stop()
"""

from __future__ import annotations

from dataclasses import dataclass

from ..router import ModelState, ModelWatcher

__all__ = ["RouterReading", "RouterSource"]


@dataclass(frozen=True)
class RouterReading:
    """The router's models at one refresh, or why they are unknown."""

    url: str
    models: list[ModelState] | None = None
    error: str | None = None

    @property
    def up(self) -> bool:
        return self.error is None and self.models is not None


class RouterSource:
    """Follows one router's model states in the background (see module docs)."""

    def __init__(self, url: str, *, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.watcher = ModelWatcher(self.url, api_key=api_key)

    def start(self, sync_timeout: float = 0.0) -> "RouterSource":
        """Start following; optionally wait (bounded) for the first model list."""
        self.watcher.start()
        if sync_timeout > 0:
            self.watcher.wait_synced(sync_timeout)
        return self

    def read(self) -> RouterReading:
        """The models as last seen (never blocks, never raises): the state of a stream that is down is shown as down."""
        if not self.watcher.synced:
            return RouterReading(self.url, error=self.watcher.last_error or "not read yet")
        models = sorted(self.watcher.snapshot().values(), key=lambda s: s.id)
        error = None if self.watcher.connected else (self.watcher.last_error or "event stream closed")
        return RouterReading(self.url, models=models, error=error)

    def stop(self) -> None:
        self.watcher.stop()
