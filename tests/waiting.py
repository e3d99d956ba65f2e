"""Polling until a condition holds, for tests that watch a real process change state."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition", every: float = 0.05) -> None:
    """Call ``predicate`` every ``every`` seconds until it is true; fail naming ``what`` after ``timeout``.

    Example::

        wait_for(lambda: status_of(url, "a") == "loaded", what="model a loaded")
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
