"""A virtual helmet that streams reports on its own, for the monitor and treatment tests
(and bench/treat_rampdown.py): the firmware and a bundle in its filesystem folder, a
recording played back in a loop, acquisition started at boot.

The helmet's filesystem *is* a host folder, so the image is written there directly (what
``painhelm flash`` would put on a board; flashing itself is tested in test_flash/test_e2e).
``HelmetProcess`` runs ``painhelm helmet --virtual`` as a separate process, so a test can
kill it the way a helmet dies: SIGKILL, no goodbye.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PAINHELM = str(Path(sys.executable).with_name("painhelm"))


def write_playback_fs(fs: Path, bundle_dir: Path, data_uV: np.ndarray, sfreq: float, ch_names, hop: int = 64) -> Path:
    """Fill ``fs`` with firmware (.mpy) + bundle + ``rec.phr`` (``data_uV``, looped) +
    config.json starting the playback at boot, one window every ``hop`` samples."""
    from painhelm.host_tools.image import device_image
    from painhelm.host_tools.recording import write_recording

    fs.mkdir(parents=True, exist_ok=True)
    for name, blob in device_image(bundle_dir, mpy=True).items():
        p = fs / name.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob)
    write_recording(fs / "rec.phr", data_uV, sfreq, list(ch_names))
    (fs / "config.json").write_text(json.dumps(
        {"source": {"kind": "playback", "path": "rec.phr", "loop": True}, "autostart": True, "hop": hop}))
    return fs


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


class HelmetProcess:
    """``painhelm helmet --virtual --fs FS`` in its own process group; ``port`` once up."""

    def __init__(self, fs: Path, heapsize: str = "512K") -> None:
        self.proc = subprocess.Popen([PAINHELM, "helmet", "--virtual", "--fs", str(fs), "--heapsize", heapsize],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port: "):
            self.kill()
            raise RuntimeError(f"painhelm helmet --virtual printed {line!r}")
        self.port = line.split()[1]

    def interpreter(self) -> int:
        """Pid of the MicroPython interpreter (its own session, under the supervisor)."""
        kids = _children(self.proc.pid)
        assert len(kids) == 1, kids
        return kids[0]

    def kill(self) -> float:
        """SIGKILL the helmet's process group, as if it died; return time.monotonic() of the kill.
        The orphaned interpreter is killed too, so no test leaves one behind."""
        kids = _children(self.proc.pid)
        t = time.monotonic()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for k in kids:
            try:
                os.killpg(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)
        return t

    def __enter__(self) -> "HelmetProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def treat_in_thread(port, policy, store, output, **kw):
    """``run_treatment`` against the helmet on ``port``, on its own thread (the test kills or
    stops the helmet meanwhile). Returns ``(thread, box)``: ``box`` gets ``res`` (the
    result) or ``error`` (what it raised) when the thread ends."""
    import threading

    from painhelm.host_tools.connect import open_helmet
    from painhelm.host_tools.treat import run_treatment

    helmet = open_helmet(port, timeout=20)
    box: dict = {}

    def go():
        try:
            box["res"] = run_treatment(helmet, policy, output, store, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
        finally:
            helmet.close()

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th, box
