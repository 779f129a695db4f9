"""`painhelm train` (issue 5; being written)."""

from __future__ import annotations

import argparse


def parser_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="training config file (TOML)")


def do_train(args) -> int:
    from .cli import CommandError

    raise CommandError("painhelm train is not implemented yet")
