"""Shared helper: write a benchmark's figures to results/NAME.json with command, date and machine."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
PAINHELM = str(Path(sys.executable).with_name("painhelm"))  # the venv's own command


def run_painhelm(args: list[str]) -> tuple[str, float]:
    """Run ``painhelm ARGS`` as a user would; return its stdout and wall seconds.

    A failure stops the benchmark with the command's last output, so no figure is written
    from a broken run.
    """
    import subprocess
    import time

    t0 = time.monotonic()
    proc = subprocess.run([PAINHELM, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"painhelm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout, time.monotonic() - t0


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def write_result(name: str, figures: dict) -> Path:
    """Write results/NAME.json and return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    script = Path(sys.argv[0])
    if script.parent.name == "bench":  # run as `python -m bench.NAME` from the repo root
        cmd = [".venv/bin/python", "-m", f"bench.{script.stem}", *sys.argv[1:]]
    else:
        cmd = [Path(sys.executable).name, *sys.argv]
    rec = {"name": name, "command": " ".join(cmd),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "figures": figures}
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path
