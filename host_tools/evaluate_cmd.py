"""`painhelm evaluate` (issue 5; being written)."""

from __future__ import annotations

import argparse


def parser_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="training config file (TOML)")


def do_evaluate(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm evaluate is not implemented yet")
