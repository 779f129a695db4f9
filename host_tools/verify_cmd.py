"""`painhelm verify`: being built (issue 8)."""

from __future__ import annotations

import argparse


def parser_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the helmet")


def do_verify(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm verify is not built yet")
