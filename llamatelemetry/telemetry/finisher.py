"""The one background finisher: ends a call's telemetry off the caller's path, bounded, for every caller.

Some calls need one more request before their span can be completed: the reasoning-token count
of an answer with visible content asks the server to tokenize that answer (``/tokenize``), and the
first call of a model (then one every 5 minutes) asks for its context size (``/props``); both are
bounded by a 2 s timeout (:mod:`.lookups`). The caller must not wait for it. Every caller hands that work
to a finisher of the kind that fits it:

- :class:`ThreadFinisher` (sync client): one daemon thread per client, started on demand and
  stopped when idle; ``close()`` and an exit hook wait for pending work, bounded.
- :class:`TaskFinisher` (async client, and the gateway's ``Observer``): an asyncio task per job,
  strongly referenced until done; ``close()``/``drain()`` await pending ones, bounded.

One bound and one overflow rule for all of them: at most :data:`MAX_PENDING` jobs wait at once;
``submit`` refuses the next one (returns False), and the caller then ends the call's telemetry at
once without the side request — the span is never lost, only that reasoning count — so a slow
server cannot make work pile up. The span's end time is the call's end either way, so durations
do not include the lookup.

Example::

    finisher = TaskFinisher()
    if not finisher.submit(lambda: record.aend(result)):
        record.end(result)  # full: end now, without the /tokenize request
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Coroutine

logger = logging.getLogger("llamatelemetry.telemetry")

#: Jobs that may wait at once, per finisher (a client's, or the gateway's).
MAX_PENDING = 256
#: How long ``close()`` and the interpreter's exit wait for pending telemetry (seconds).
CLOSE_TIMEOUT = 5.0
#: An idle worker thread stops after this long (seconds); the next call starts a new one.
_IDLE_SECONDS = 1.0

_live: "weakref.WeakSet[ThreadFinisher]" = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def flush_threads(timeout: float = CLOSE_TIMEOUT) -> bool:
    """Wait (at most ``timeout`` seconds in all) for every :class:`ThreadFinisher`'s pending jobs; True if none is left.

    Example::

        flush_threads(5.0)  # every sync client's telemetry recorded, e.g. before reading spans
    """
    deadline = time.monotonic() + timeout
    return all([finisher.flush(max(0.0, deadline - time.monotonic())) for finisher in list(_live)])


def _flush_at_exit() -> None:
    """Let pending telemetry finish (bounded) before the SDK's own exit hook exports and shuts down."""
    flush_threads(CLOSE_TIMEOUT)


def _register_exit_hook() -> None:
    # Registered when the first worker starts, i.e. after the application set up its tracer
    # provider; atexit runs hooks last-registered-first, so ours runs before the SDK's shutdown.
    global _exit_hook_registered
    with _exit_hook_lock:
        if not _exit_hook_registered:
            atexit.register(_flush_at_exit)
            _exit_hook_registered = True


class ThreadFinisher:
    """Runs telemetry jobs on a daemon thread (see module docs)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._pending = 0
        self._max_pending = max_pending
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue ``job``; False (not queued) when :data:`MAX_PENDING` jobs are already waiting."""
        with self._cond:
            if self._pending >= self._max_pending:
                return False
            self._pending += 1
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llamatelemetry-finisher", daemon=True)
                self._thread.start()
                _live.add(self)
                _register_exit_hook()
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(timeout=_IDLE_SECONDS)
                    if not self._jobs:
                        self._thread = None
                        return
                job = self._jobs.popleft()
            try:
                job()
            except Exception:  # noqa: BLE001 - jobs end their spans themselves; this is a last guard
                logger.debug("llamatelemetry: a telemetry job failed", exc_info=True)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for queued jobs; True if none is left."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)


class TaskFinisher:
    """Runs telemetry coroutines as asyncio tasks it keeps a strong reference to (see module docs)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._max_pending = max_pending

    def submit(self, job: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start ``job()`` as a task; False (not started) when too many are pending or no loop runs."""
        if len(self._tasks) >= self._max_pending:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        task = loop.create_task(job())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this loop's pending tasks; True if none is left."""
        loop = asyncio.get_running_loop()
        tasks = [task for task in self._tasks if task.get_loop() is loop and not task.done()]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending
