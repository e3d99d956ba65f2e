"""Driving ``llamatelemetry top`` (a Textual app) from tests through its pilot."""

from __future__ import annotations

import time

from textual.pilot import Pilot

from llamatelemetry.top.app import TopApp


async def refresh(pilot: Pilot[None], app: TopApp, timeout: float = 15.0) -> None:
    """Press 'r' and wait until the view has read both sources and redrawn."""
    before = app.refreshes
    await pilot.press("r")
    deadline = time.monotonic() + timeout
    while app.refreshes == before:
        assert time.monotonic() < deadline, "the view did not refresh"
        await pilot.pause(0.02)
    await pilot.pause()
