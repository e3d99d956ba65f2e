"""``llamatelemetry top``: flags, the full-screen view, and the one-shot ``--once``/``--json`` modes.

This module follows the subcommand protocol of :mod:`llamatelemetry.cli` (``HELP``,
``add_arguments(parser)``, ``run(args) -> int``).

Example::

    llamatelemetry top                                     # exporter :9183, gateway admin :9184
    llamatelemetry top --exporter http://10.0.0.5:9183 --interval 2
    llamatelemetry top --json | jq '.servers[].generated_tokens_per_second'
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import TextIO

from .._defaults import EXPORTER_DEFAULT_HOST, EXPORTER_DEFAULT_PORT, PROXY_ADMIN_DEFAULT_PORT, PROXY_DEFAULT_HOST

HELP = "live terminal view of llama-servers, slots, agent clients, GPU and recent requests"

ENV_EXPORTER = "LLAMATELEMETRY_TOP_EXPORTER"
ENV_GATEWAY = "LLAMATELEMETRY_TOP_GATEWAY"
ENV_ROUTER = "LLAMATELEMETRY_TOP_ROUTER"
DEFAULT_EXPORTER_URL = f"http://{EXPORTER_DEFAULT_HOST}:{EXPORTER_DEFAULT_PORT}"
#: The gateway's admin port (``llamatelemetry proxy --admin-port``), where /metrics and /api/recent live.
DEFAULT_GATEWAY_URL = f"http://{PROXY_DEFAULT_HOST}:{PROXY_ADMIN_DEFAULT_PORT}"

DESCRIPTION = f"""\
A live view of the box, for a terminal: every llama-server the exporter watches (state, model,
tokens/s with sparklines, slots and their context fill), the agent clients going through the
gateway (requests/min, tokens, time to first token, empty answers, errors), the GPUs (utilisation,
memory, power, temperature, joules per token) and the gateway's most recent requests.

It reads the exporter's /metrics ({DEFAULT_EXPORTER_URL}) and the gateway's admin endpoints
({DEFAULT_GATEWAY_URL}/metrics and /api/recent), never llama-server itself: reading llama-server's
/metrics would reset its throughput gauges under the exporter. Either source may be down; the view
says so and keeps going.

Keys: q quit, tab next panel, z zoom the panel, p pause, r refresh now.
"""


def _interval(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.1 and 3600 seconds")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``llamatelemetry top`` to ``parser``."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--exporter", default=os.environ.get(ENV_EXPORTER, DEFAULT_EXPORTER_URL), metavar="URL",
                        help=f"the llamatelemetry exporter (default %(default)s) [{ENV_EXPORTER}]")
    parser.add_argument("--gateway", default=os.environ.get(ENV_GATEWAY, DEFAULT_GATEWAY_URL), metavar="URL",
                        help=f"the gateway's admin endpoint, llamatelemetry proxy --admin-port (default %(default)s) [{ENV_GATEWAY}]")
    parser.add_argument("--router", default=os.environ.get(ENV_ROUTER) or None, metavar="URL",
                        help="a llama-server router (--models-dir): adds a models panel (state, since when, loads, last "
                             f"load time, requests, cold starts), read from its /models and /models/sse only (its --api-key from "
                             f"$LLAMA_API_KEY) [{ENV_ROUTER}]")
    parser.add_argument("--interval", "-n", type=_interval, default=1.0, metavar="SECONDS",
                        help="refresh every SECONDS (default %(default)s)")
    parser.add_argument("--window", type=_interval, default=60.0, metavar="SECONDS",
                        help="span of the per-client numbers and joules per token (default %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="print one snapshot as text and exit (reads twice, --interval apart, to get rates)")
    mode.add_argument("--json", action="store_true", help="like --once, as JSON")


async def _two_readings(exporter: str, gateway: str, interval: float, window: float, router: str | None = None):  # noqa: ANN202
    from .model import Model
    from .sources import Sources

    model = Model(window_seconds=window)
    async with Sources(exporter, gateway, router_url=router) as sources:
        model.update(await sources.read())
        await asyncio.sleep(interval)
        return model.update(await sources.read())


def view_as_json(view: object) -> str:
    """A :class:`~llamatelemetry.top.model.View` as JSON (dataclasses as objects, tuples as lists)."""
    return json.dumps(dataclasses.asdict(view), indent=2, default=str)  # type: ignore[call-overload]


def print_text(view: object, out: TextIO) -> None:
    """Print every panel of a view as the terminal UI draws it (what ``--once`` shows)."""
    from rich.console import Console

    from .model import View
    from .render import COLUMNS, panel_messages, rows_for, status_line, table_lines

    assert isinstance(view, View)
    color = out.isatty() and "NO_COLOR" not in os.environ
    console = Console(file=out, no_color=not color, force_terminal=color or None, highlight=False, soft_wrap=True)
    console.print(status_line(view, once=True))
    messages = panel_messages(view)
    for panel_id, rows in rows_for(view).items():
        header, lines = table_lines(COLUMNS[panel_id], [cells for _, cells in rows])
        console.print()
        console.print(header)
        for line in lines:
            console.print(line)
        if messages[panel_id] is not None:
            console.print(f" {messages[panel_id]}")


def run(args: argparse.Namespace) -> int:
    """Run the view (or print one snapshot); returns the exit code."""
    try:
        from .app import TopApp
        from .model import Model
        from .sources import Sources
    except ImportError as exc:  # textual missing
        print(f"llamatelemetry top needs extra packages: pip install 'llamatelemetry[top]' ({exc})", file=sys.stderr)
        return 2
    if args.once or args.json:
        view = asyncio.run(_two_readings(args.exporter, args.gateway, args.interval, args.window, args.router))
        if args.json:
            print(view_as_json(view))
        else:
            print_text(view, sys.stdout)
        # Scripts can tell "nothing to read" from a working box.
        return 0 if view.exporter.up or view.gateway.up or (view.router is not None and view.router.up) else 1
    TopApp(Sources(args.exporter, args.gateway, router_url=args.router), interval=args.interval, model=Model(window_seconds=args.window)).run()
    return 0
