"""`painhelm monitor`: a live view of a helmet's reports, optionally recorded to CSV.
Argument parsing and the terminal only; the work is in monitor.py (docs/treatment.md)."""

from __future__ import annotations

import argparse
import sys

from .ctrl_c import CtrlC


def parser_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="serial port of the helmet (e.g. /dev/ttyUSB0, a virtual helmet's pty)")
    p.add_argument("--record", default=None, metavar="FILE.csv", help="write every report to this CSV file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--append", action="store_true", help="add to an existing --record file")
    g.add_argument("--force", action="store_true", help="replace an existing --record file")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--count", type=int, default=None, metavar="N", help="stop after N reports")
    p.add_argument("--start", action="store_true", help="start the helmet's acquisition if it is idle (stop it at the end)")
    p.add_argument("--silence-timeout", type=float, default=10.0, metavar="S",
                   help="give up after S seconds without a heartbeat (default: %(default)s; 0: never)")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the helmet (default: %(default)s)")


def do_monitor(args) -> int:
    from .cli import CommandError
    from .connect import open_helmet
    from .monitor import CsvRecorder, LiveView, RecordError, run_monitor

    for name in ("duration", "count"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise CommandError(f"--{name} must be positive, got {v}")
    if (args.append or args.force) and not args.record:
        raise CommandError("--append and --force go with --record FILE")
    with open_helmet(args.port, timeout=args.connect_timeout) as helmet:
        if "bundle_error" in helmet.info:
            raise CommandError(f"the helmet on {args.port} has no usable bundle, so it sends no reports: "
                               f"{helmet.info['bundle_error']} (flash one: painhelm flash --port {args.port} --bundle DIR)")
        try:  # opened after the helmet answered: a wrong port leaves no empty CSV behind
            recorder = CsvRecorder(args.record, append=args.append, force=args.force) if args.record else None
        except RecordError as e:
            raise CommandError(str(e)) from None
        tty = sys.stdout.isatty()
        view = LiveView(sys.stdout, tty, args.port, helmet.info, args.record)
        if not tty:
            print(f"monitoring {args.port} (firmware {helmet.info.get('firmware')}, model "
                  f"{str(helmet.info.get('model_sha256', '?'))[:12]})", flush=True)
        try:
            with CtrlC() as ctrl_c:
                summary = run_monitor(helmet, view, recorder, duration=args.duration, count=args.count,
                                      start=args.start, silence_timeout=args.silence_timeout,
                                      should_stop=lambda: ctrl_c.requested)
        finally:
            if recorder is not None:
                recorder.close()
    print(summary.line(), flush=True)
    if recorder is not None:
        print(f"{recorder.rows} rows written to {args.record}", flush=True)
    if summary.error:
        raise CommandError(summary.error + (f"; {args.record} holds the {recorder.rows} rows received" if recorder else ""))
    return 0
