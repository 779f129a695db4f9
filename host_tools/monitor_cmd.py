"""`painhelm monitor`: being built (issue 8)."""

from __future__ import annotations

import argparse


def parser_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the helmet")


def do_monitor(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm monitor is not built yet")
