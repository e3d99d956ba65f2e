"""The ``llamatelemetry`` command line tool: one program, several subcommands.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; register it in :data:`SUBCOMMANDS` (modules are imported lazily so
``--help`` stays fast and a missing optional dependency only affects its own subcommand).

Example::

    llamatelemetry exporter --target http://127.0.0.1:8080
    llamatelemetry-exporter --target http://127.0.0.1:8080      # alias, handy in containers
    llamatelemetry proxy --upstream http://127.0.0.1:8080        # tracing gateway on :8089
    llamatelemetry top                                          # live view of exporter + gateway
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: subcommand name -> module implementing the subcommand protocol described above.
SUBCOMMANDS: dict[str, str] = {
    "exporter": "llamatelemetry.exporter.cli",
    "demo": "llamatelemetry.demo",
    "proxy": "llamatelemetry.proxy.cli",
    "top": "llamatelemetry.top.cli",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="llamatelemetry", description="Observability for llama.cpp's llama-server.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=module.HELP)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llamatelemetry``; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args._run(args))


def exporter_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``llamatelemetry-exporter`` (same as ``llamatelemetry exporter``)."""
    from .exporter import cli as exporter_cli

    parser = argparse.ArgumentParser(prog="llamatelemetry-exporter")
    exporter_cli.add_arguments(parser)
    return int(exporter_cli.run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
