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
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Footer, Static

from .model import Model, View
from .render import COLUMNS, panel_messages, rows_for, status_line, table_lines
from .sources import Snapshot, Sources

__all__ = ["PANELS", "Panel", "TopApp"]

#: Panel ids, top to bottom (also the order ``tab`` visits them).
PANELS = ("servers", "slots", "clients", "gpu", "recent")
#: With ``--router``: the router's models panel, shown first (swaps and cold starts are what a shared box is about).
MODELS_PANEL = "models"


class Lines(Widget):
    """Lines of text that redraw without a new layout unless their number changes.

    (``Static.update`` asks for a full layout on every update; at one refresh a second for every
    panel that was most of the view's own CPU time.)
    """

    DEFAULT_CSS = "Lines { height: auto; }"

    def __init__(self, text: Text | None = None, *, classes: str | None = None, id: str | None = None) -> None:  # noqa: A002
        super().__init__(classes=classes, id=id)
        self.text = text or Text()

    def render(self) -> Text:
        return self.text

    def update(self, text: Text) -> None:
        relayout = text.plain.count("\n") != self.text.plain.count("\n")
        self.text = text
        self.refresh(layout=relayout)


class Panel(Vertical, can_focus=True):
    """A panel: a header line naming it and its columns, its rows (scrollable), and a message line when
    there is something to say (source down ...). ``tab`` focuses panels; the focused one's header lights up."""

    ALLOW_MAXIMIZE = True  # 'z' zooms the whole panel
    BINDINGS = [
        Binding("up", "scroll(-1)", show=False), Binding("down", "scroll(1)", show=False),
        Binding("pageup", "scroll(-10)", show=False), Binding("pagedown", "scroll(10)", show=False),
    ]

    def __init__(self, panel_id: str) -> None:
        super().__init__(id=panel_id, classes="panel")
        self.header = Lines(classes="header")
        self.lines = Lines(classes="lines")
        self.body = VerticalScroll(self.lines, classes="body", can_focus=False)
        self.message = Static("", classes="message")
        self.rows: dict[str, Sequence[Text]] = {}  # what is shown, by row key (tests read it)
        self._shown: tuple[Text, Text] | None = None

    def compose(self) -> ComposeResult:
        yield self.header
        yield self.body
        yield self.message

    def on_mount(self) -> None:
        self.message.display = False
        self.show([], None)

    def keys(self) -> list[str]:
        return list(self.rows)

    @property
    def text(self) -> str:
        """The panel's lines as plain text, header first: what it draws."""
        return "" if self._shown is None else self._shown[0].plain + "\n" + self._shown[1].plain

    def show(self, rows: list[tuple[str, Sequence[Text]]], message: str | None) -> None:
        """Replace the panel's content (one text update; nothing is redrawn when nothing changed)."""
        self.rows = dict(rows)
        header, lines = table_lines(COLUMNS[self.id or ""], [cells for _, cells in rows])
        body = Text("\n", no_wrap=True, overflow="crop").join(lines)
        if self._shown is None or self._shown[0] != header:
            self.header.update(header)
        if self._shown is None or self._shown[1] != body:
            self.lines.update(body)
            self.body.display = bool(lines)
        self._shown = (header, body)
        self.message.display = message is not None
        if message is not None:
            self.message.update(Text(message, style="bold reverse red" if "down" in message.lower() else "dim"))

    def action_scroll(self, lines: int) -> None:
        self.body.scroll_relative(y=lines, animate=False)


class TopApp(App[None]):
    """``llamatelemetry top``: live view of llama-servers (via the exporter) and agent clients (via the gateway)."""

    TITLE = "llamatelemetry top"
    ENABLE_COMMAND_PALETTE = False  # nothing to run from it, and its footer hint costs a column of space
    # A zoomed panel keeps the status line (sources up/down, PAUSED) and the footer (how to get back).
    ALLOW_IN_MAXIMIZED_VIEW = "Footer, #status"
    # No borders: at 80x24 every row counts. Each panel's header line names it and marks the focused one.
    CSS = """
    Screen { layout: vertical; overflow-y: auto; }
    #status { height: 1; padding: 0 1; background: $panel; }
    .panel { height: auto; }
    .panel .header { height: 1; background: $panel; color: $text-muted; text-wrap: nowrap; }
    .panel:focus .header { background: $accent; color: $text; text-style: bold; }
    /* No scrollbar: its thumb is a stray block glyph at the row's edge; up/down/page keys scroll. */
    .panel .body { height: auto; scrollbar-size-vertical: 0; }
    .panel .lines { text-wrap: nowrap; }
    .panel .message { height: auto; padding: 0 1; }
    #servers .body { max-height: 5; }
    #slots .body { max-height: 6; }
    #clients .body { max-height: 6; }
    #gpu .body { max-height: 5; }
    #models .body { max-height: 5; }
    #recent { height: 1fr; min-height: 4; }
    #recent .body { height: 1fr; }
    Screen.-maximized .panel .body { max-height: 100%; }
    /* Textual's default zoom centres the panel on a hatched screen: top-aligned, plain, full height instead. */
    Screen.-maximized-view { hatch: none; align: left top; }
    Screen.-maximized-view .panel.-maximized { height: 1fr; }
    Screen.-maximized-view .panel.-maximized .body { height: 1fr; max-height: 100%; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("tab", "focus_next", "Next panel", priority=True),
        Binding("shift+tab", "focus_previous", "Previous panel", show=False, priority=True),
        Binding("p", "toggle_pause", "Pause"),
        Binding("z", "zoom", "Zoom panel"),
        Binding("r", "refresh_now", "Refresh"),
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
        # The models panel is always there, shown only for a router (--router, or the exporter's router series).
        self.panels = {pid: Panel(pid) for pid in (MODELS_PANEL, *PANELS)}
        self._status = Lines(Text("reading the exporter and the gateway ..."), id="status")

    def compose(self) -> ComposeResult:
        yield self._status
        yield from self.panels.values()
        yield Footer()

    def on_mount(self) -> None:
        self.panels[MODELS_PANEL].display = self.sources.router is not None
        self.panels["servers"].focus()
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
        shown = rows_for(view)
        self.panels[MODELS_PANEL].display = MODELS_PANEL in shown
        for panel_id, rows in shown.items():
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
        if isinstance(self.focused, Panel):
            self.screen.maximize(self.focused, container=False)
