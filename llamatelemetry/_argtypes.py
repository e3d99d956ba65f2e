"""argparse value types shared by the command-line tools (exporter, proxy), so they reject bad input alike."""

from __future__ import annotations

import argparse


def tcp_port(text: str) -> int:
    """A TCP port for ``--port``-style options: 0-65535 (0 picks a free one), with an error that says so.

    Example::

        parser.add_argument("--port", type=tcp_port, default=9183)
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port: use 1-65535 (0 picks a free one)")
    return value
