"""How each number of a :class:`~llamatelemetry.top.model.View` is written: columns and cells per panel.

Shared by the terminal UI and ``--once``, so both show exactly the same text. Cells are
:class:`rich.text.Text`; anything that must stand out (an empty answer, an error, a server that is
down) is also marked with a word or a symbol, so it still reads on a monochrome terminal.

Example::

    >>> from llamatelemetry.top.model import ClientRow
    >>> [str(c) for c in client_cells(ClientRow("aider", 12.0, 12.0, 900, 40, 0.21, 0.8, 1, 0, 0.75))]
    ['aider', '12.0', '900', '40', '210ms', '800ms', '1', '0', '75%']
"""

from __future__ import annotations

from typing import Sequence

from rich.text import Text

from .model import ClientRow, GpuRow, GpuTargetRow, ModelRow, ServerRow, SlotRow, SourceState, View, sparkline
from .sources import RecentRequest

__all__ = [
    "CLIENT_COLUMNS", "GPU_COLUMNS", "MODEL_COLUMNS", "RECENT_COLUMNS", "SERVER_COLUMNS", "SLOT_COLUMNS",
    "model_cells", "client_cells", "gpu_cells", "gpu_target_cells", "recent_cells", "server_cells", "slot_cells", "status_line",
]

SPARK_WIDTH = 8
BAR_WIDTH = 12

#: Style of anything that needs attention: colour where there is colour, reverse video where there is not.
ALERT = "bold reverse red"
WARN = "bold yellow"
DIM = "dim"
GOOD = "green"

SERVER_COLUMNS = ("SERVERS", "state", "model", "gen tok/s", "prompt tok/s", "run", "wait")
SLOT_COLUMNS = ("SLOTS", "state", "context", "used", "gen")
CLIENT_COLUMNS = ("CLIENTS", "req/min", "tok in", "tok out", "TTFT p50", "p95", "empty", "errors", "cache")
GPU_COLUMNS = ("GPUS", "util", "memory", "power", "temp", "J/tok")
RECENT_COLUMNS = ("RECENT", "age", "client", "endpoint", "in", "out", "think", "TTFT", "dur", "status")
MODEL_COLUMNS = ("MODELS", "state", "since", "loads", "last load", "requests", "cold")

NONE = "–"


def fmt_count(value: float | None) -> str:
    """Token counts: ``1234`` → ``1234``, ``12345`` → ``12.3k``, ``1.2e6`` → ``1.2M``."""
    if value is None:
        return NONE
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return NONE
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.1f}s" if value < 100 else f"{value:.0f}s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return NONE
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}B"


def _alert_if(value: float | None, text: str) -> Text:
    return Text(text, style=ALERT) if value else Text(text)


_STATE_STYLE = {"ok": GOOD, "loading": WARN, "unreachable": ALERT, "error": ALERT, "sleeping": DIM}
_STATE_TEXT = {"ok": "ok", "loading": "loading", "unreachable": "DOWN", "error": "ERROR"}


def server_cells(row: ServerRow, spark_width: int = SPARK_WIDTH) -> tuple[Text, ...]:
    """Cells for one server: name, state, model, gen and prompt tok/s with sparklines, processing, deferred."""
    gen = f"{fmt_rate(row.generated_tokens_per_second):>5} {sparkline(row.generated_history, spark_width)}"
    prompt = f"{fmt_rate(row.prompt_tokens_per_second):>5} {sparkline(row.prompt_history, spark_width)}"
    return (
        Text(row.target),
        Text(_STATE_TEXT.get(row.state, row.state), style=_STATE_STYLE.get(row.state, WARN)),
        Text(_truncate(row.model or NONE, 16)),
        Text(gen),
        Text(prompt),
        Text(fmt_count(row.requests_processing)),
        _alert_if(row.requests_deferred, fmt_count(row.requests_deferred)),
    )


def context_bar(fill: float | None, width: int = BAR_WIDTH) -> str:
    """``████░░░░``: the filled part of a slot's context."""
    if fill is None:
        return "·" * width
    full = round(max(0.0, min(1.0, fill)) * width)
    return "█" * full + "░" * (width - full)


def slot_cells(row: SlotRow, bar_width: int = BAR_WIDTH) -> tuple[Text, ...]:
    """Cells for one slot: ``target#id``, busy/idle, context bar, ``used/size pct``, tokens generated in its task."""
    fill = row.context_fill
    bar_style = ALERT if fill is not None and fill >= 0.9 else (WARN if fill is not None and fill >= 0.7 else GOOD)
    used = f"{fmt_count(row.context_tokens)}/{fmt_count(row.context_size)}"
    return (
        Text(f"{row.target}#{row.slot}"),
        Text("▶ busy", style="bold green") if row.processing else Text("· idle", style=DIM),
        Text(context_bar(fill, bar_width), style=bar_style),
        Text(f"{used:>11} {fill * 100:3.0f}%" if fill is not None else f"{used:>11}"),
        Text(fmt_count(row.generated_tokens)),
    )


def client_cells(row: ClientRow) -> tuple[Text, ...]:
    """Cells for one client; empty answers and errors in reverse red when non-zero."""
    return (
        Text(row.client),
        Text(fmt_rate(row.requests_per_minute)),
        Text(fmt_count(row.input_tokens)),
        Text(fmt_count(row.output_tokens)),
        Text(fmt_seconds(row.ttft_p50_s)),
        Text(fmt_seconds(row.ttft_p95_s)),
        _alert_if(row.empty_answers, fmt_count(row.empty_answers)),
        _alert_if(row.errors, fmt_count(row.errors)),
        Text(f"{row.cache_hit_ratio * 100:.0f}%" if row.cache_hit_ratio is not None else NONE),
    )


def gpu_cells(row: GpuRow) -> tuple[Text, ...]:
    util = Text(f"{row.utilization * 100:.0f}%" if row.utilization is not None else NONE)
    memory = f"{fmt_bytes(row.memory_used_bytes)}/{fmt_bytes(row.memory_total_bytes)}"
    hot = row.temperature_celsius is not None and row.temperature_celsius >= 85
    return (
        Text(f"{row.gpu} {_truncate(row.name or '', 18)}".rstrip()),
        util,
        Text(memory),
        Text(f"{row.power_watts:.0f}W" if row.power_watts is not None else NONE),
        Text(f"{row.temperature_celsius:.0f}°C" if row.temperature_celsius is not None else NONE, style=ALERT if hot else ""),
        Text(f"{row.joules_per_token:.2f}" if row.joules_per_token is not None else NONE),
    )


def gpu_target_cells(row: GpuTargetRow) -> tuple[Text, ...]:
    return (
        Text(f"  ↳ {row.target}", style=DIM),
        Text(""),
        Text(fmt_bytes(row.memory_used_bytes)),
        Text(""),
        Text(""),
        Text(f"{row.joules_per_token:.2f}" if row.joules_per_token is not None else NONE),
    )


_MODEL_STATE_STYLE = {"loaded": GOOD, "loading": WARN, "sleeping": DIM, "unloaded": DIM, "failed": ALERT}


def model_cells(row: ModelRow, now: float, with_target: bool = False) -> tuple[Text, ...]:
    """Cells for one router model: name, state (``FAILED (exit N)`` in reverse red), how long in it, loads
    (failed ones marked), the last load's duration, the gateway's requests and cold starts for it."""
    state = row.state.upper() if row.state == "failed" else row.state
    if row.state == "failed" and row.last_exit_code is not None:
        state += f" (exit {row.last_exit_code})"
    loads = f"{row.loads}" + (f" ({row.load_failures} failed)" if row.load_failures else "")
    return (
        Text(_truncate(f"{row.target}/{row.model}" if with_target and row.target else row.model, 24)),
        Text(state, style=_MODEL_STATE_STYLE.get(row.state, WARN)),
        Text(fmt_age(now - row.since)),
        _alert_if(row.load_failures, loads),
        Text(fmt_seconds(row.last_load_seconds)),
        Text(fmt_count(row.requests)),
        Text(fmt_count(row.cold_starts)),
    )


def fmt_age(seconds: float) -> str:
    """How long ago: ``4s``, ``12m``, ``3h``."""
    seconds = max(0.0, seconds)
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def recent_cells(item: RecentRequest, now: float) -> tuple[Text, ...]:
    """Cells for one recent request (``now``: unix seconds, for its age): a red ``EMPTY`` mark on empty
    answers, ``ERR`` on failures."""
    if item.budget_exhausted:
        mark = Text("EMPTY", style=ALERT)
    elif item.failed:
        mark = Text("ERR", style=ALERT)
    else:
        mark = Text("")
    status = str(item.status) if item.status is not None else (item.error_type or NONE)
    endpoint = item.endpoint[4:] if item.endpoint.startswith("/v1/") else item.endpoint  # every OpenAI path has it
    return (
        mark,
        Text(fmt_age(now - item.time) if item.time else NONE),
        Text(_truncate(item.client, 16)),
        Text(_truncate(endpoint, 16)),
        Text(fmt_count(item.input_tokens)),
        Text(fmt_count(item.output_tokens)),
        Text(fmt_count(item.reasoning_tokens)),
        Text(fmt_seconds(item.ttft_s)),
        Text(fmt_seconds(item.duration_s)),
        Text(_truncate(status, 12), style=ALERT if item.failed else ""),
    )


def source_text(source: SourceState) -> Text:
    if source.up:
        return Text.assemble((f"{source.name} ", ""), ("up", GOOD))
    return Text.assemble((f"{source.name} ", ""), (f"DOWN ({source.error})", ALERT))


def status_line(view: View, *, paused: bool = False, interval: float | None = None, once: bool = False) -> Text:
    """The header: both sources' state, the window the numbers cover, and PAUSED.

    ``once``: a ``--once`` snapshot, whose rates come from two readings ``--interval`` apart (not ``--window``).
    """
    parts: list[Text] = [source_text(view.exporter), Text("  "), source_text(view.gateway)]
    if view.upstreams_down:  # the gateway answers, but its llama-server does not: requests get 502
        parts.append(Text(" upstream DOWN", style=ALERT))
    if view.window_seconds is not None and once:
        parts.append(Text(f"  rates over {view.window_seconds:.1f}s (two readings, --interval apart)", style=DIM))
    elif view.window_seconds is not None:
        parts.append(Text(f"  window {view.window_seconds:.0f}s", style=DIM))
    if interval is not None:
        parts.append(Text(f"  every {interval:g}s", style=DIM))
    if paused:
        parts.append(Text("  PAUSED", style="bold reverse"))
    return Text.assemble(*parts)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def panel_messages(view: View) -> dict[str, str | None]:
    """Why a panel is empty, per panel id (``None`` when it has rows or nothing needs saying)."""
    exporter_down = None if view.exporter.up else f"exporter {view.exporter.url} is down: no server or GPU data"
    gateway_down = None if view.gateway.up else f"gateway {view.gateway.url} is down (start: llamatelemetry proxy)"
    models = None
    if view.router is not None and not view.router.up:
        models = f"router {view.router.url} is down ({view.router.error})"
    elif view.router is not None and not view.models:
        models = "the router lists no models"
    gpu = exporter_down
    if gpu is None and not view.gpus:
        gpu = {"off": "no GPU metrics (exporter started with --no-gpu?)",
               "down": "GPU collection down: NVML did not initialise (no NVIDIA driver?)"}.get(view.gpu_state, "no GPUs")
    upstream_down = (f"the gateway cannot reach {', '.join(view.upstreams_down)}: its requests are answered 502"
                     if view.upstreams_down else None)
    return {
        "servers": exporter_down or (None if view.servers else (
            "no model is running on the router" if view.models else "the exporter has no targets")),
        "slots": exporter_down or (None if view.slots else "no slot metrics (llama-server started with --no-slots?)"),
        "clients": gateway_down or upstream_down or (None if view.clients else "no requests through the gateway yet"),
        "gpu": gpu,
        "recent": gateway_down or (None if view.recent else "no requests through the gateway yet"),
        "models": models,
    }


Rows = list[tuple[str, Sequence[Text]]]


def rows_for(view: View) -> dict[str, Rows]:
    """Per panel id, ``(row key, cells)`` in display order — what the UI puts in its tables."""
    models: dict[str, Rows] = {}
    if view.router is not None or view.models:  # only for a router: followed (--router) or seen by the exporter
        several = len({m.target for m in view.models}) > 1
        models["models"] = [(f"{m.target}/{m.model}" if m.target else m.model, model_cells(m, view.wall_time, several))
                            for m in view.models]
    return {
        "servers": [(s.target, server_cells(s)) for s in view.servers],
        **models,
        "slots": [(f"{s.target}#{s.slot}", slot_cells(s)) for s in view.slots],
        "clients": [(c.client, client_cells(c)) for c in view.clients],
        "gpu": _gpu_rows(view),
        "recent": [(f"{r.time:.6f}:{i}", recent_cells(r, view.wall_time)) for i, r in enumerate(view.recent)],
    }


def _gpu_rows(view: View) -> Rows:
    rows: Rows = [(f"gpu{g.gpu}", gpu_cells(g)) for g in view.gpus]
    return rows + [(f"target:{t.target}", gpu_target_cells(t)) for t in view.gpu_targets]


def table_lines(columns: Sequence[str], rows: Sequence[Sequence[Text]]) -> tuple[Text, list[Text]]:
    """A header line and one line per row, each column as wide as its widest cell, one blank between columns.

    Plain lines rather than a table widget: a refresh is one text update per panel, which keeps the
    view's own CPU use low (see benchmarks/bench_top.py).

    Example::

        >>> header, lines = table_lines(["A", "bb"], [[Text("xyz"), Text("1")]])
        >>> header.plain, lines[0].plain
        (' A   bb', ' xyz 1')
    """
    widths = [len(c) for c in columns]
    for cells in rows:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], cell.cell_len)

    def line(cells: Sequence[Text]) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for i, cell in enumerate(cells):
            out.append(" ")
            out.append_text(cell)
            if i < len(cells) - 1:
                out.append(" " * (widths[i] - cell.cell_len))
        return out

    return line([Text(c) for c in columns]), [line(cells) for cells in rows]


COLUMNS: dict[str, tuple[str, ...]] = {
    "servers": SERVER_COLUMNS, "slots": SLOT_COLUMNS, "clients": CLIENT_COLUMNS, "gpu": GPU_COLUMNS, "recent": RECENT_COLUMNS,
    "models": MODEL_COLUMNS,
}
TITLES: dict[str, str] = {
    "models": "Models (router)", "servers": "Servers", "slots": "Slots", "clients": "Clients (gateway)", "gpu": "GPU", "recent": "Recent requests (gateway)",
}
