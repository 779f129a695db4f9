"""`painhelm flash` and `painhelm info`: put firmware, a bundle and settings on a helmet; ask it
what it runs. See docs/flashing.md."""

from __future__ import annotations

import argparse
import json
import sys

from painhelm.firmware import wire

__all__ = ["do_flash", "do_info", "format_info", "parser_flash", "parser_info"]


def parser_flash(p: argparse.ArgumentParser) -> None:
    """Options of `painhelm flash`."""
    p.add_argument("--port", required=True, help="serial port of the helmet, e.g. /dev/ttyUSB0 or a virtual helmet's pty")
    p.add_argument("--bundle", default=None, help="bundle folder to flash with the firmware (e.g. runs/demo/bundle)")
    p.add_argument("--config", default=None, metavar="FILE.json", help="settings to flash as /config.json (docs in firmware_py/config.py)")
    p.add_argument("--no-mpy", action="store_true", help="send .py sources instead of .mpy compiled for the board")
    p.add_argument("--dry-run", action="store_true", help="show what would be written, deleted or skipped; write nothing")
    p.add_argument("--no-reset", action="store_true",
                   help="do not reset the helmet afterwards (a new bundle is then tried at its next boot)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the new firmware to answer after the reset (default: %(default)s)")
    p.add_argument("--key", default=None, metavar="FILE",
                   help="sign the bundle with this key file instead of the helmet's key from the keystore")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="keystore folder (default: $PAINHELM_KEYS or ~/.local/share/painhelm/keys); see docs/signing.md")


def do_flash(args) -> int:
    """Check the bundle and settings on the host, then flash, reset and confirm the boot."""
    from .cli import CommandError
    from .flash import flash_helmet, format_plan, progress_bar
    from .image import check_bundle, check_config
    from .transport import SerialTransport

    # the user's files are checked before the port is touched
    if args.bundle is not None:
        check_bundle(args.bundle)
    if args.config is not None:
        check_config(args.config)
    if args.timeout <= 0:
        raise CommandError(f"--timeout must be positive, got {args.timeout}")
    key = None
    if getattr(args, "key", None) is not None:
        from .keys import KeyStoreError, read_key_file

        try:
            key = read_key_file(args.key)
        except KeyStoreError as exc:
            raise CommandError(str(exc)) from None
    bar = progress_bar() if sys.stderr.isatty() and not args.dry_run else None
    t = SerialTransport(args.port, wait=3.0)
    try:
        summary = flash_helmet(t, bundle=args.bundle, config=args.config, mpy=False if args.no_mpy else None,
                               progress=bar, reset=not args.no_reset, dry_run=args.dry_run, timeout=args.timeout,
                               key=key, keystore=getattr(args, "keys", None))
    except KeyboardInterrupt:
        print("painhelm: flash interrupted; the helmet keeps its previous files. "
              "Run the same command again to resume.", file=sys.stderr)
        raise
    finally:
        t.close()
    for note in summary.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    kind = f".mpy for {summary['mpy']}" if summary.get("mpy") else ".py sources"
    if args.dry_run:
        print(f"dry run on {args.port} (firmware as {kind}); nothing was written:")
        print("\n".join(format_plan(summary)))
        return 0
    written, skipped = summary["written"], summary["skipped"]
    print(f"flashed {args.port} in {summary.get('seconds', 0):.2f} s: {len(written)} files written "
          f"({summary['bytes'] / 1024:.1f} KiB sent), {len(skipped)} unchanged, "
          f"{len(summary.get('deleted', [])) + len(summary.get('stale_tmp', []))} removed; firmware as {kind}, "
          "each file SHA-256 verified on the device")
    if summary.get("resumed"):
        print(f"resumed {len(summary['resumed'])} partly written files")
    info = summary.get("info")
    if info is not None:
        what = "no bundle" if not info.get("model_sha256") else f"bundle model {info['model_sha256'][:12]}"
        print(f"the helmet runs firmware {info.get('firmware')} (protocol v{info.get('protocol')}) with {what}")
        if args.bundle and info.get("signing") == "on":
            print("the bundle is signed for this helmet and its signature was verified there")
        if info.get("bundle_error"):
            print(f"note: {info['bundle_error']}", file=sys.stderr)
    elif args.no_reset and args.bundle:
        print("not reset: the helmet tries the new bundle at its next boot")
    return 0


def parser_info(p: argparse.ArgumentParser) -> None:
    """Options of `painhelm info`."""
    p.add_argument("--port", required=True, help="serial port of the helmet")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the firmware (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the firmware's whole answer as JSON")


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def format_info(info: dict) -> list[str]:
    """The firmware's PONG description as aligned ``name  value`` lines for people."""
    rows = [("firmware", f"{info.get('firmware', '?')} (protocol v{info.get('protocol', '?')}, "
                         f"{info.get('impl', '?')} on {info.get('platform', '?')})"),
            ("state", {wire.STATE_NO_BUNDLE: "no bundle", wire.STATE_IDLE: "idle",
                       wire.STATE_STREAMING: "streaming"}.get(info.get("state"), str(info.get("state"))))]
    if info.get("model_sha256"):
        rows.append(("bundle", f"{info.get('bundle')}, model {info['model_sha256'][:12]}, engine "
                               f"{info.get('engine', '?')}, {info.get('selftest_cases', 0)} self-test cases passed"))
        rows.append(("levels", ", ".join(info.get("level_names", [])) or "-"))
        rows.append(("locations", ", ".join(info.get("location_names", [])) or "-"))
        ch = info.get("ch_names", [])
        rows.append(("channels", f"{len(ch)}: {' '.join(ch)}"))
        sfreq, n = info.get("sfreq"), info.get("n_times")
        if sfreq and n:
            rows.append(("window", f"{n} samples at {sfreq:g} Hz ({n / sfreq:.2f} s), hop {info.get('hop', n)} samples"))
        rows.append(("max payload", f"{info.get('max_payload', '?')} bytes"))
    if "mem_free" in info:
        rows.append(("heap", f"{_size(info['mem_free'])} free of {_size(info.get('mem_total'))}"))
    if "storage_free" in info:
        rows.append(("storage", f"{_size(info['storage_free'])} free of {_size(info.get('storage_total'))}"))
    rows.append(("link", f"{info.get('link', '?')}, source {info.get('source', '?')}"))
    if "signing" in info:
        rows.append(("signing", "on: only bundles signed with this helmet's key load" if info["signing"] == "on"
                     else "off: unsigned bundles are accepted (`painhelm keys provision` turns it on)"))
    for key, name in (("bundle_error", "bundle error"), ("bundle_refused", "refused"), ("config_error", "config error")):
        if info.get(key):
            rows.append((name, str(info[key])))
    return [f"{k:12s} {v}" for k, v in rows]


def do_info(args) -> int:
    """Ask the helmet firmware what it runs (PING only: a streaming helmet keeps streaming)."""
    from .cli import CommandError
    from .connect import open_helmet

    if args.timeout <= 0:
        raise CommandError(f"--timeout must be positive, got {args.timeout}")
    with open_helmet(args.port, timeout=args.timeout) as helmet:
        info = helmet.info
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
    else:
        print("\n".join(format_info(info)))
    return 0
