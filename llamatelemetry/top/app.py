"""The full-screen terminal view (Textual): five panels refreshed from the exporter and the gateway.

Keys: ``q`` quits, ``tab``/``shift+tab`` move between panels, ``z`` zooms the focused panel to the
whole screen and back, ``p`` pauses the display (reading goes on, so the rates and windows stay
right when it resumes), ``r`` refreshes now. A source that is down is shown as down in the header and in the panels
it feeds; nothing a source sends can stop the view.

Example::

    from llamatelemetry.top.app import TopApp
    from llamatelemetry.top.sources import Sources
    TopApp(Sources("http://127.0.0.1:9183", "http://127.0.0.1:9184"), interval=1.0).run()
"""

from __future__ import annotations

import asyncio
import time
from typing import Sequence

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Static

from .model import Model, View
from .render import COLUMNS, panel_messages, rows_for, status_line
from .sources import Snapshot, Sources

__all__ = ["PANELS", "Panel", "TopApp"]

#: Panel ids, top to bottom (also the order ``tab`` visits them).
PANELS = ("servers", "slots", "clients", "gpu", "recent")


class Panel(Vertical):
    """A panel: a table whose header row names it, and a message line when there is something to say (source down ...)."""

    ALLOW_MAXIMIZE = True  # 'z' zooms the whole panel (its table and message), not just the table

    def __init__(self, panel_id: str) -> None:
        super().__init__(id=panel_id, classes="panel")
        # cell_padding 0 and one leading space per cell: one blank between columns, so RECENT fits in 80 columns.
        self.table: DataTable[Text] = DataTable(id=f"{panel_id}-table", cursor_type="row", show_cursor=False, cell_padding=0)
        self.message = Static("", classes="message")
        self._cells: dict[str, Sequence[Text]] = {}
        self._order: list[str] = []

    def compose(self) -> ComposeResult:
        yield self.table
        yield self.message

    def on_mount(self) -> None:
        for column in COLUMNS[self.id or ""]:
            self.table.add_column(Text(" " + column), key=column)
        self.message.display = False

    def show(self, rows: list[tuple[str, Sequence[Text]]], message: str | None) -> None:
        """Replace the panel's content; cells that did not change are left alone (cheap refreshes)."""
        self.message.display = message is not None
        if message is not None:
            self.message.update(Text(message, style="bold reverse red" if "down" in message.lower() else "dim"))
        rows = [(key, [Text(" ") + cell for cell in cells]) for key, cells in rows]
        keys = [key for key, _ in rows]
        if keys != self._order:
            self.table.clear()
            for key, cells in rows:
                self.table.add_row(*cells, key=key)
            self._order = keys
            self._cells = dict(rows)
            return
        columns = [c.key for c in self.table.ordered_columns]
        for key, cells in rows:
            old = self._cells.get(key)
            for index, cell in enumerate(cells):
                if old is None or old[index] != cell:
                    self.table.update_cell(key, columns[index], cell, update_width=True)
            self._cells[key] = cells


class TopApp(App[None]):
    """``llamatelemetry top``: live view of llama-servers (via the exporter) and agent clients (via the gateway)."""

    TITLE = "llamatelemetry top"
    ENABLE_COMMAND_PALETTE = False  # nothing to run from it, and its footer hint costs a column of space
    # No borders: at 80x24 every row counts. Each table's header row names its panel and marks the focused one.
    CSS = """
    Screen { layout: vertical; overflow-y: auto; }
    #status { height: 1; padding: 0 1; background: $panel; }
    .panel { height: auto; }
    .panel DataTable { height: auto; max-height: 100%; scrollbar-size-vertical: 1; }
    .panel DataTable > .datatable--header { background: $panel; color: $text-muted; }
    .panel DataTable:focus > .datatable--header { background: $accent; color: $text; text-style: bold; }
    .panel .message { height: auto; padding: 0 1; }
    #servers { max-height: 6; }
    #slots { max-height: 7; }
    #clients { max-height: 7; }
    #gpu { max-height: 6; }
    #recent { height: 1fr; min-height: 4; }
    #recent DataTable { height: 1fr; }
    Screen.-maximized .panel { max-height: 100%; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("tab", "focus_next", "Next panel", priority=True),
        Binding("shift+tab", "focus_previous", "Previous panel", show=False, priority=True),
        Binding("p", "toggle_pause", "Pause"),
        Binding("z", "zoom", "Zoom panel"),
        Binding("r", "refresh_now", "Refresh", show=False),
    ]

    def __init__(self, sources: Sources, *, interval: float = 1.0, model: Model | None = None) -> None:
        super().__init__()
        self.sources = sources
        self.interval = interval
        self.model = model or Model()
        self.paused = False
        self.last_view: View | None = None
        self.last_snapshot: Snapshot | None = None
        self._wake = asyncio.Event()
        self.refreshes = 0  # views computed (tests wait on this)
        self.panels = {pid: Panel(pid) for pid in PANELS}
        self._status = Static(Text("reading the exporter and the gateway ..."), id="status")

    def compose(self) -> ComposeResult:
        yield self._status
        yield from self.panels.values()
        yield Footer()

    def on_mount(self) -> None:
        self.panels["servers"].table.focus()
        self.run_worker(self._poll(), exclusive=True, group="poll", name="poll")

    async def on_unmount(self) -> None:
        await self.sources.aclose()

    async def _poll(self) -> None:
        while True:
            started = time.monotonic()
            self._wake.clear()
            try:
                snapshot = await self.sources.read()
                view = self.model.update(snapshot)
                self.last_snapshot, self.last_view = snapshot, view
                if not self.paused:
                    self._show(view)
            except Exception as exc:  # a bug in reading or drawing must not take the view down with it
                self.log.error(f"refresh failed: {exc!r}")  # Textual's devtools log: stderr belongs to the screen
                self._status.update(Text(f"refresh failed: {type(exc).__name__}: {exc}", style="bold reverse red"))
            self.refreshes += 1
            try:  # sleep until the next tick, or until 'r' asks for a refresh now
                await asyncio.wait_for(self._wake.wait(), max(0.05, self.interval - (time.monotonic() - started)))
            except asyncio.TimeoutError:
                pass

    def _show(self, view: View) -> None:
        self._status.update(status_line(view, paused=self.paused, interval=self.interval))
        messages = panel_messages(view)
        for panel_id, rows in rows_for(view).items():
            self.panels[panel_id].show(rows, messages[panel_id])

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.last_view is not None:
            if self.paused:  # only the header changes: the panels keep the moment the user paused on
                self._status.update(status_line(self.last_view, paused=True, interval=self.interval))
            else:
                self._show(self.last_view)

    def action_refresh_now(self) -> None:
        self._wake.set()

    def action_zoom(self) -> None:
        if self.screen.maximized is not None:
            self.screen.minimize()
            return
        focused = self.focused
        panel = focused.parent if focused is not None else None
        if isinstance(panel, Panel):
            self.screen.maximize(panel, container=False)
