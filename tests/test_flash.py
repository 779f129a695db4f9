"""Flashing the virtual helmet over its serial port: skip unchanged, verify, replace atomically."""

from __future__ import annotations

import hashlib
import time

import pytest

from painhelm.host_tools.flash import FlashError, device_path, flash
from painhelm.host_tools.transport import SerialTransport, TransportError
from painhelm.host_tools.virtual_helmet import VirtualHelmet

MAIN = 'with open("/started.txt", "a") as f:\n    f.write("1")\n'
FILES = {
    "/main.py": MAIN.encode(),
    "/lib/wire.py": b"VERSION = 1\n",
    "/model.tflite": bytes(range(256)) * 40 + b"\x03\r\n\x04",
}


@pytest.fixture
def helmet(tmp_path):
    """A running virtual helmet on an empty folder."""
    fs = tmp_path / "fs"
    fs.mkdir()
    with VirtualHelmet(fs) as h:
        yield h


@pytest.fixture
def transport(helmet):
    """A serial transport connected to the helmet."""
    with SerialTransport(helmet.port) as t:
        yield t


def test_flash_writes_then_skips_unchanged(helmet, transport):
    """First flash writes every file byte-exact; a second flash skips them all."""
    first = flash(transport, FILES, reset=False)
    assert sorted(first["written"]) == sorted(FILES) and first["skipped"] == []
    assert first["bytes"] == sum(map(len, FILES.values()))
    for path, data in FILES.items():
        assert open(helmet.fs_dir + path, "rb").read() == data
    second = flash(transport, FILES, reset=False)
    assert second["written"] == [] and sorted(second["skipped"]) == sorted(FILES)
    assert second["bytes"] == 0


def test_changed_file_is_rewritten(helmet, transport):
    """Only the changed file is written again, and no .tmp files are left behind."""
    flash(transport, FILES, reset=False)
    changed = dict(FILES, **{"/lib/wire.py": b"VERSION = 2\n"})
    summary = flash(transport, changed, reset=False)
    assert summary["written"] == ["/lib/wire.py"]
    assert transport.fs_readfile("/lib/wire.py") == b"VERSION = 2\n"
    assert not any(n.endswith(".tmp") for n in transport.fs_listdir("/") + transport.fs_listdir("/lib"))


def test_device_hash_and_readback(transport):
    """The device computes the same SHA-256 as the host and files read back identical."""
    flash(transport, FILES, reset=False)
    for path, data in FILES.items():
        assert transport.fs_sha256(path) == hashlib.sha256(data).hexdigest()
        assert transport.fs_readfile(path) == data


def test_verification_failure_keeps_old_file(transport):
    """A corrupted write raises FlashError and leaves the previous file in place."""
    flash(transport, {"/main.py": b"old = 1\n"}, reset=False)

    class Corrupting(SerialTransport):
        def fs_writefile(self, path, data, chunk_size=256, progress=None):
            super().fs_writefile(path, data[:-1] + b"!", chunk_size, progress)

    transport.__class__ = Corrupting
    with pytest.raises(FlashError, match="verification failed for /main.py"):
        flash(transport, {"/main.py": b"new = 2\n"}, reset=False)
    assert transport.fs_readfile("/main.py") == b"old = 1\n"
    assert not transport.fs_exists("/main.py.tmp")


def test_reset_starts_new_firmware(helmet, transport):
    """flash(reset=True) soft-resets so the new main.py runs."""
    progress = []
    flash(transport, FILES, progress=lambda p, done, total: progress.append((p, done, total)))
    assert ("/model.tflite", len(FILES["/model.tflite"]), len(FILES["/model.tflite"])) in progress
    started = helmet.fs_dir + "/started.txt"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if open(started).read() == "1":
                break
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    assert open(started).read() == "1"
    assert helmet.restarts == 1


def test_relative_and_bad_paths():
    """Relative device paths mean paths from the root; '..' is refused."""
    assert device_path("lib/wire.py") == "/lib/wire.py"
    assert device_path("/main.py") == "/main.py"
    with pytest.raises(FlashError):
        device_path("../etc/passwd")


def test_wrong_port_is_a_clear_error(tmp_path):
    """Opening a port that does not exist raises TransportError naming it."""
    port = str(tmp_path / "ttyUSB9")
    with pytest.raises(TransportError, match=f"{port}: no such port"):
        SerialTransport(port)
