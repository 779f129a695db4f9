"""`painhelm treat`: being built (issue 8)."""

from __future__ import annotations

import argparse


def parser_treat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the helmet")


def do_treat(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm treat is not built yet")


def parser_sessions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="session database")


def do_sessions(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm sessions is not built yet")
