"""Shared parts of the hw_tests: bundles, a helmet under test (a board or a virtual one) that
can be power-cut and restarted, and small file helpers for bundles on the device.

A ``Rig`` is what the tests talk to. With ``--port`` it is a real board: the same code path,
but no power cut (the host cannot switch a board off), so tests that need one skip. Without
it, it is a :class:`VirtualHelmet` on a host folder; ``power_cut`` SIGKILLs the MicroPython
interpreter at once (no goodbye, nothing flushed by the firmware) and stops the supervisor,
``start`` boots a fresh interpreter on the same folder, as switching a board on again would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from painhelm.firmware import bundle as fmt
from painhelm.host_tools.flash import flash_helmet
from painhelm.host_tools.link import HelmetLink
from painhelm.host_tools.transport import SerialTransport
from painhelm.host_tools.virtual_helmet import VirtualHelmet

NO_POWER_CUT = "needs a power cut (kills the interpreter): only a virtual helmet allows it"


def build_bundle(out: Path, seed: int, setup: str | None = None, seconds: float = 3.0,
                 windows_per_class: int = 3, max_epochs: int = 4, decisions: bool = False) -> dict:
    """Train briefly, export int8, write a bundle. ``setup`` None: the compact 16-channel
    model (128 Hz, 2-s windows, fits a 256 KB heap); ``"eeg32"``: 32 ch @ 250 Hz, 1-s windows
    (bench/helmet_runtime.py's builder, 384 KB heap). ``decisions``: calibrate the decision
    thresholds on the training subjects (compact model only). Returns bundle, test trials,
    sfreq, sha and ``data``, the test trials as one continuous recording (n_ch, n) in µV."""
    import torch

    torch.set_num_threads(2)
    if setup is not None:
        from bench.helmet_runtime import SETUPS
        from bench.helmet_runtime import build_bundle as bench_build

        bundle, test, _ = bench_build(out, SETUPS[setup], seed=seed, seconds=seconds)
        sfreq = SETUPS[setup]["sfreq"]
    else:
        from painhelm.compress.bundle import write_bundle
        from painhelm.compress.export import TFLMRunner, export_tflite
        from painhelm.train.features import Preprocessing
        from painhelm.train.synthetic import make_synthetic
        from painhelm.train.trainer import train_model

        torch.manual_seed(seed)
        ws = make_synthetic(n_subjects=3, windows_per_class=windows_per_class, seed=seed)
        train, test = ws.subset(ws.subject != "S03"), ws.subset(ws.subject == "S03")
        pre = Preprocessing.for_trials(train, n_frames=4, image_size=16)
        x = pre.images(train.data)
        model, _ = train_model(x, train.level, train.location, seconds=seconds, max_epochs=max_epochs,
                               seed=seed, progress=False)
        tfl = export_tflite(model, x[:64], out / "export")
        runner = TFLMRunner(tfl["int8"])
        decision = None
        if decisions:
            from painhelm.compress.decisions import calibrate

            decision, _ = calibrate(pre, train, dataset="synthetic-pain")
        bundle = write_bundle(out / "bundle", tfl["int8"], pre, ws.level_names, ws.location_names,
                              runner.input_scale, runner.input_zero_point, decision=decision)
        sfreq = ws.sfreq
    sha = json.loads((Path(bundle) / fmt.MANIFEST_FILE).read_text())["files"][fmt.MODEL_FILE]["sha256"]
    return {"bundle": Path(bundle), "test": test, "sfreq": sfreq, "sha": sha,
            "data": np.concatenate(list(test.data), axis=1).astype(np.float32)}


class Rig:
    """The helmet under test: ``--port`` (a board) or a virtual helmet on ``fs``."""

    def __init__(self, port: str | None, fs: Path | None = None, heapsize: str = "256K") -> None:
        self.board_port, self.fs, self.heapsize = port, fs, heapsize
        self.vh: VirtualHelmet | None = None
        self._t: SerialTransport | None = None
        self.port = port
        self.cuts = 0

    @property
    def virtual(self) -> bool:
        return self.board_port is None

    def start(self) -> "Rig":
        if self.virtual:
            self.fs.mkdir(parents=True, exist_ok=True)
            self.vh = VirtualHelmet(self.fs, heapsize=self.heapsize).start()
            self.port = self.vh.port
        return self

    def transport(self) -> SerialTransport:
        """The open transport (opened on first use and after each restart)."""
        if self._t is None:
            self._t = SerialTransport(self.port, wait=5.0)
        return self._t

    def link(self, timeout: float = 30.0) -> HelmetLink:
        """A protocol link on the transport's port, once the firmware answers."""
        link = HelmetLink(self.transport().serial, timeout=timeout)
        link.info = link.wait_ready(timeout=timeout)
        return link

    def flash(self, bundle=None, **kw) -> dict:
        return flash_helmet(self.transport(), bundle=bundle, timeout=60.0, **kw)

    def reset(self) -> None:
        """Reboot (soft reset: boot.py, main.py, the bundle slots run again)."""
        t = self.transport()
        t.enter_raw_repl()
        t.soft_reset()

    def power_cut(self) -> None:
        """Kill the interpreter now (SIGKILL, like pulling the battery), then the supervisor."""
        if not self.virtual:
            pytest.skip(NO_POWER_CUT)
        vh, self.vh = self.vh, None
        child = vh._child  # the interpreter; VirtualHelmet has no public kill (stop() joins first)
        if child is not None:
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        vh.stop()
        self.cuts += 1

    def close_transport(self) -> None:
        if self._t is not None:
            try:
                self._t.close()
            except Exception:  # noqa: BLE001 - the port may be gone with the helmet
                pass
            self._t = None

    def restart(self) -> None:
        """Power on again after a cut: a fresh interpreter on the same filesystem."""
        self.close_transport()
        self.start()

    def stop(self) -> None:
        self.close_transport()
        if self.vh is not None:
            self.vh.stop()
            self.vh = None


def flashed_rig(board_port, bundle: dict, fs: Path, request):
    """Generator behind the module fixtures: a started rig (``--heapsize``, default 256K)
    flashed with ``bundle``, stopped when the module is done."""
    r = Rig(board_port, fs, heapsize=request.config.getoption("--heapsize") or "256K").start()
    try:
        r.flash(bundle["bundle"])
        yield r
    finally:
        r.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """A bundle folder's files by name (the manifest included)."""
    return {p.name: p.read_bytes() for p in sorted(Path(bundle_dir).iterdir()) if p.is_file()}


def restamp(files: dict[str, bytes], name: str) -> dict[str, bytes]:
    """Make the manifest agree with ``files[name]`` again (size and SHA-256), so that the
    firmware's hash check passes and the next check down the line meets the damage."""
    man = json.loads(files[fmt.MANIFEST_FILE])
    man["files"][name].update(size=len(files[name]), sha256=sha256(files[name]))
    return dict(files, **{fmt.MANIFEST_FILE: json.dumps(man).encode()})


def write_pending(t: SerialTransport, files: dict[str, bytes]) -> None:
    """Write ``files`` into model_bundle.new/ on the device (raw REPL), manifest last, as the
    flasher's slot would hold them but without the host's pre-flight checks."""
    from painhelm.firmware import slots

    t.enter_raw_repl()
    pending = "/" + slots.PENDING
    if t.fs_exists(pending):
        for n in t.fs_listdir(pending):
            t.fs_remove(f"{pending}/{n}")
    else:
        t.fs_mkdir(pending)
    for n in sorted(files, key=lambda n: n == fmt.MANIFEST_FILE):
        t.fs_writefile(f"{pending}/{n}", files[n])

