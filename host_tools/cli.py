"""The `painhelm` command: one entry point, one table of subcommands.

Each subcommand is ``do_<name>(args)`` with its parser factory in ``COMMANDS``; user
mistakes and device trouble become :class:`CommandError`, printed as one line
``painhelm: <message>`` with exit status 1 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from painhelm.firmware.version import PROTOCOL_VERSION, VERSION


class CommandError(Exception):
    """A user mistake or device trouble, shown without a traceback."""


@contextlib.contextmanager
def settings_errors():
    """Turn a ValueError from checking the user's settings into a CommandError.

    A DataError (a ValueError too) passes unchanged: it already names the file and the
    problem, and the CLI prints it as one line.
    """
    from painhelm.train.dataset import DataError

    try:
        yield
    except DataError:
        raise
    except ValueError as e:
        raise CommandError(str(e)) from None


def _user_errors():
    """Exception types that mean 'tell the user', collected lazily to keep --help fast."""
    from .link import LinkError

    from painhelm.train.dataset import DataError

    types = [CommandError, LinkError, FileNotFoundError, DataError]  # connect.ConnectError is a LinkError
    for mod, names in (("transport", ("TransportError",)), ("flash", ("FlashError",)),
                       ("virtual_helmet", ("VirtualHelmetError",))):
        try:
            m = __import__(f"painhelm.host_tools.{mod}", fromlist=list(names))
        except ImportError:
            continue
        types += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(types)


# --- demo -----------------------------------------------------------------------------

def _parser_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=60.0, help="training time budget in seconds (default: %(default)s)")
    p.add_argument("--subjects", type=int, default=5, help="synthetic subjects; the last is held out (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=80, help="at most this many epochs (default: %(default)s)")
    p.add_argument("--windows-per-class", type=int, default=24,
                   help="windows per subject, pain level and location (default: %(default)s)")
    p.add_argument("--max-windows", type=int, default=None, help="stream at most this many held-out windows")
    p.add_argument("--heapsize", default="512K", help="virtual helmet heap, e.g. 256K (default: %(default)s)")
    p.add_argument("--port", default=None, help="use a real board on this serial port instead of a virtual helmet")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def do_demo(args) -> int:
    from .demo import run_demo

    if args.subjects < 2:
        raise CommandError(f"--subjects must be at least 2 (one is held out), got {args.subjects}")
    if args.seconds <= 0:
        raise CommandError(f"--seconds must be positive, got {args.seconds}")
    if args.epochs < 1:
        raise CommandError(f"--epochs must be at least 1, got {args.epochs}")
    res = run_demo(args.out, seconds=args.seconds, max_epochs=args.epochs, n_subjects=args.subjects,
                   windows_per_class=args.windows_per_class, max_test_windows=args.max_windows,
                   heapsize=args.heapsize, port=args.port, seed=args.seed)
    cross = res["device_vs_int8"]
    if cross < 0.99:
        raise CommandError(f"device and host int8 predictions agree on only {100 * cross:.1f} % of windows "
                           "(at least 99 % expected); see the report")
    return 0


# --- helmet ---------------------------------------------------------------------------

def _parser_helmet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--virtual", action="store_true", required=True,
                   help="start a virtual helmet (the only kind this command starts)")
    p.add_argument("--fs", default="runs/helmet_fs", help="folder used as the helmet's filesystem (default: %(default)s)")
    p.add_argument("--heapsize", default="512K", help="MicroPython heap, e.g. 256K for a small board (default: %(default)s)")


def do_helmet(args) -> int:
    from .virtual_helmet import VirtualHelmet

    fs = Path(args.fs)
    fs.mkdir(parents=True, exist_ok=True)
    helmet = VirtualHelmet(fs, heapsize=args.heapsize)
    helmet.start()
    print(f"port: {helmet.port}", flush=True)
    print(f"virtual helmet running MicroPython on {helmet.port} with filesystem {fs.resolve()}; "
          "Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        helmet.stop()
    return 0


# --- data ---------------------------------------------------------------------------

from .compare_cmd import do_compare, parser_compare  # noqa: E402 - grouped with its section
from .compress_cmd import do_compress, parser_compress  # noqa: E402
from .data_cmd import do_data, parser_data  # noqa: E402
from .evaluate_cmd import do_evaluate, parser_evaluate  # noqa: E402
from .flash_cmd import do_flash, do_info, parser_flash, parser_info  # noqa: E402
from .keys_cmd import do_keys, parser_keys  # noqa: E402
from .train_cmd import do_train, parser_train  # noqa: E402
from .monitor_cmd import do_monitor, parser_monitor  # noqa: E402
from .treat_cmd import do_sessions, do_treat, parser_sessions, parser_treat  # noqa: E402
from .verify_cmd import do_verify, parser_verify  # noqa: E402

COMMANDS = {
    "demo": (do_demo, _parser_demo,
             "run the whole chain on synthetic EEG: train, export int8, flash a virtual helmet, verify"),
    "helmet": (do_helmet, _parser_helmet, "start a virtual helmet (real MicroPython behind a pty) and print its port"),
    "flash": (do_flash, parser_flash,
              "flash firmware, a bundle and settings over the raw REPL: verified, atomic, resumable, --dry-run"),
    "info": (do_info, parser_info, "ask the helmet firmware for its version, bundle, model, memory and storage"),
    "keys": (do_keys, parser_keys, "create, list and provision the per-helmet keys that sign bundles (docs/signing.md)"),
    "train": (do_train, parser_train, "train a model on a dataset; writes a model folder that compress and flash use"),
    "evaluate": (do_evaluate, parser_evaluate,
                 "leave-one-subject-out (or leave-one-run-out) evaluation with a per-subject report"),
    "compress": (do_compress, parser_compress,
                 "prune, quantize to int8 and export a model folder (ONNX, TFLite, helmet bundle), each file checked"),
    "compare": (do_compare, parser_compare,
                "float vs int8 report: accuracy, agreement, logit errors, per subject, runtimes (md/html/png)"),
    "verify": (do_verify, parser_verify,
               "stream a test set through the helmet; device vs truth vs host int8 vs float, exit 1 below --min-agreement"),
    "monitor": (do_monitor, parser_monitor, "live view of the helmet's reports and link health; --record FILE.csv"),
    "treat": (do_treat, parser_treat,
              "be the treatment device: reports -> intensity and program inside safety limits, sessions logged"),
    "sessions": (do_sessions, parser_sessions, "list the treatment sessions, record feedback, export CSV"),
    "data": (do_data, parser_data, "check recordings (`data check PATH`) and draw a trial's topomaps (`data show`)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="painhelm",
        description="painhelm: train, compress, flash and verify an EEG pain-measuring helmet.",
        epilog="Run `painhelm COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"painhelm {VERSION} (protocol v{PROTOCOL_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, factory, help_line) in COMMANDS.items():
        factory(sub.add_parser(name, help=help_line, description=help_line))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("painhelm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only user-facing types are swallowed below
        if isinstance(e, _user_errors()):
            sys.stdout.flush()
            print(f"painhelm: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    # `python -m` runs this file as __main__, a second copy of the module: use the package's
    # main so that CommandError raised by handler modules is the class main() catches
    from painhelm.host_tools.cli import main as _main

    sys.exit(_main())
