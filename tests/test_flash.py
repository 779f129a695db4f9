"""Flashing the virtual helmet over its serial port: skip unchanged, verify, stage then switch
over, resume an interrupted flash, .mpy for the board, bundle slots, raw-REPL entry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from painhelm.firmware import version
from painhelm.host_tools import image
from painhelm.host_tools.flash import FlashError, device_path, flash, flash_helmet
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
    """A running virtual helmet (256 KB heap, like a small board) on an empty folder."""
    fs = tmp_path / "fs"
    fs.mkdir()
    with VirtualHelmet(fs, heapsize="256K") as h:
        yield h


@pytest.fixture
def transport(helmet):
    """A serial transport connected to the helmet."""
    with SerialTransport(helmet.port) as t:
        yield t


def padded_bundle(src, dst, pad: int, seed: int = 0):
    """A copy of bundle ``src`` with an extra ``pad``-byte file listed in its manifest."""
    shutil.copytree(src, dst)
    blob = os.urandom(pad) if seed is None else bytes((i * 7 + seed) & 0xFF for i in range(pad))
    (dst / "pad.bin").write_bytes(blob)
    man = json.loads((dst / "manifest.json").read_text())
    man["files"]["pad.bin"] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": pad}
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


# --------------------------------------------------------------------------- plain files

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


def test_device_hash_and_readback_binary_safe(transport):
    """Every byte value survives the base64 transfer; the device hashes like the host."""
    files = dict(FILES, **{"/blob.bin": os.urandom(50_000), "/empty.bin": b""})
    flash(transport, files, reset=False)
    hashes = transport.fs_hashes(list(files))
    for path, data in files.items():
        assert hashes[path] == (len(data), hashlib.sha256(data).hexdigest())
        assert transport.fs_sha256(path) == hashlib.sha256(data).hexdigest()
    assert transport.fs_readfile("/model.tflite") == FILES["/model.tflite"]


def test_verification_failure_keeps_old_file(transport):
    """A corrupted write raises FlashError and leaves the previous file in place."""
    flash(transport, {"/main.py": b"old = 1\n"}, reset=False)

    class Corrupting(SerialTransport):
        def fs_writefile(self, path, data, chunk_size=2048, progress=None, offset=0):
            super().fs_writefile(path, data[:-1] + b"!", chunk_size, progress, offset)

    transport.__class__ = Corrupting
    with pytest.raises(FlashError, match="verification failed for /main.py"):
        flash(transport, {"/main.py": b"new = 2\n"}, reset=False)
    assert transport.fs_readfile("/main.py") == b"old = 1\n"
    assert not transport.fs_exists("/main.py.tmp")


def test_reset_starts_new_firmware(helmet, transport):
    """flash(reset=True) soft-resets so the new main.py runs; progress covers all bytes."""
    progress = []
    flash(transport, FILES, progress=lambda p, done, total: progress.append((p, done, total)))
    total = sum(map(len, FILES.values()))
    assert progress[0] == ("", 0, total) and progress[-1][1:] == (total, total)
    assert [d for _, d, _ in progress] == sorted(d for _, d, _ in progress)
    started = helmet.fs_dir + "/started.txt"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not os.path.exists(started):
        time.sleep(0.02)
    time.sleep(0.1)
    assert open(started).read() == "1"  # main.py ran once: not at the start of the flash
    assert helmet.restarts == 2  # one soft reset to stop main.py for the transfer, one to start it


def test_interrupted_write_resumes_from_partial_tmp(helmet, transport):
    """An exception mid-file (the progress callback raising) leaves old files and a partial
    .tmp; the next flash hashes the partial file, appends the rest and switches over."""
    old = {"/model.tflite": b"old model", "/main.py": b"x = 1\n"}
    flash(transport, old, reset=False)
    new = {"/model.tflite": os.urandom(100_000), "/main.py": b"x = 2\n"}

    def stop_after_two(path, done, total):
        if done >= 2 * 12288:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        flash(transport, new, progress=stop_after_two, reset=False)
    partial = os.path.getsize(helmet.fs_dir + "/model.tflite.tmp")
    assert 0 < partial < 100_000
    assert transport.fs_readfile("/model.tflite") == b"old model"  # nothing switched over
    plan = flash(transport, new, reset=False, dry_run=True)
    assert plan["resumed"] == {"/model.tflite": partial} and plan["bytes"] == 100_000 - partial + 6
    again = flash(transport, new, reset=False)
    assert again["resumed"] == {"/model.tflite": partial}
    assert again["bytes"] == 100_000 - partial + len(new["/main.py"])
    assert transport.fs_readfile("/model.tflite") == new["/model.tflite"]
    assert not os.path.exists(helmet.fs_dir + "/model.tflite.tmp")


def test_partial_tmp_that_does_not_match_is_rewritten_and_stale_tmp_removed(helmet, transport):
    """A .tmp whose content is not a prefix of the file is rewritten from the start; .tmp
    files no flash will finish are deleted at the switch-over."""
    with open(helmet.fs_dir + "/a.bin.tmp", "wb") as f:
        f.write(b"something else")
    with open(helmet.fs_dir + "/gone.py.tmp", "wb") as f:
        f.write(b"left by an older flash")
    summary = flash(transport, {"/a.bin": b"A" * 5000}, reset=False)
    assert summary["resumed"] == {} and summary["bytes"] == 5000
    assert summary["stale_tmp"] == ["/gone.py.tmp"]
    assert sorted(os.listdir(helmet.fs_dir)) == ["a.bin"]


def test_not_enough_space_is_refused_before_writing(transport):
    """A flash larger than the device's free storage fails before anything is written."""

    class Small(SerialTransport):
        def device_facts(self):
            return dict(super().device_facts(), storage_free=20_000)

    transport.__class__ = Small
    with pytest.raises(FlashError, match="not enough space on the helmet"):
        flash(transport, {"/big.bin": b"x" * 30_000}, reset=False)
    assert not transport.fs_exists("/big.bin.tmp")


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


# --------------------------------------------------------------------------- raw REPL entry

def test_custom_banner_and_back_to_back_sessions(helmet):
    """A boot.py printing its own banner (with REPL-like text) and several sessions opened
    one right after the other each get into the raw REPL."""
    with open(helmet.fs_dir + "/boot.py", "w") as f:
        f.write('print("HelmetOS 2.1 >>> ready\\r\\nraw REPL? no. OK")\n')
    for i in range(3):
        with SerialTransport(helmet.port) as t:
            summary = flash(t, {"/n.txt": str(i).encode()}, reset=i < 2)
            assert summary["written"] == ["/n.txt"]
    assert open(helmet.fs_dir + "/n.txt").read() == "2"


# --------------------------------------------------------------------------- .mpy choice

def test_mpy_target_from_the_boards_mpy_word():
    """_mpy's version, sub-version and arch pick -march; a mismatch falls back to .py."""
    ver, sub = image.mpy_cross_version()
    word = ver | sub << 8
    assert image.mpy_target(word | 2 << 10) == ("x64", None)
    assert image.mpy_target(word | 10 << 10) == ("xtensawin", None)
    assert image.mpy_target(word | 5 << 10) == ("armv7m", None)
    assert image.mpy_target(word | 2 << 10, want=False) == (None, None)
    arch, note = image.mpy_target((ver - 1) | sub << 8 | 2 << 10)
    assert arch is None and f"v{ver - 1}.{sub}" in note and note.startswith("sending .py")
    assert image.mpy_target(word)[0] is None and "native code emitter" in image.mpy_target(word)[1]
    assert "no sys.implementation._mpy" in image.mpy_target(None)[1]
    with pytest.raises(FlashError, match="cannot compile the firmware to .mpy"):
        image.mpy_target(None, want=True)


def test_firmware_as_mpy_then_py_removes_the_stale_twin(helmet, transport):
    """The virtual helmet (x64, .mpy v6.x) gets .mpy; --no-mpy sends .py and deletes each
    .mpy (and back again), and the firmware starts either way."""
    first = flash_helmet(transport, timeout=30)
    assert first["mpy"] == "x64" and first["notes"] == []
    names = set(os.listdir(helmet.fs_dir))
    assert {"app.mpy", "wire.mpy", "boot.py", "main.py"} <= names and "app.py" not in names
    assert first["info"]["firmware"] == version.VERSION
    as_py = flash_helmet(transport, mpy=False, timeout=30)
    names = set(os.listdir(helmet.fs_dir))
    assert as_py["mpy"] is None and "app.py" in names and "app.mpy" not in names
    assert "/app.mpy" in as_py["deleted"]
    assert as_py["info"]["firmware"] == version.VERSION

    class OtherBoard(SerialTransport):  # a board whose .mpy format differs from mpy-cross's
        def device_facts(self):
            return dict(super().device_facts(), mpy=3 | 9 << 10)

    transport.__class__ = OtherBoard
    fallback = flash_helmet(transport, reset=False)
    assert fallback["mpy"] is None and "sending .py sources" in fallback["notes"][0]
    assert fallback["written"] == []  # the .py firmware is there already


# --------------------------------------------------------------------------- bundles

def test_bundle_goes_through_the_new_slot_and_is_promoted(helmet, transport, tiny_bundle, tmp_path):
    """Firmware + bundle + settings: the bundle is written to model_bundle.new, the helmet
    self-tests and promotes it; an identical flash writes nothing; dry-run writes nothing."""
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hop": 64}')
    dry = flash_helmet(transport, bundle=tiny_bundle["bundle"], config=cfg, dry_run=True)
    assert "/model_bundle.new/manifest.json" in dry["written"] and "/config.json" in dry["written"]
    assert dry["written"][-1] == "/main.py" and dry["written"][-2] == "/model_bundle.new/manifest.json"
    assert os.listdir(helmet.fs_dir) == []  # dry run: nothing written

    s = flash_helmet(transport, bundle=tiny_bundle["bundle"], config=cfg, timeout=60)
    model_sha = hashlib.sha256((tiny_bundle["bundle"] / "model.tflite").read_bytes()).hexdigest()
    assert s["info"]["bundle"] == "model_bundle" and s["info"]["model_sha256"] == model_sha
    assert s["info"]["hop"] == 64
    fs = helmet.fs_dir
    assert not os.path.exists(fs + "/model_bundle.new")
    assert open(fs + "/model_bundle/manifest.json", "rb").read() == (tiny_bundle["bundle"] / "manifest.json").read_bytes()

    again = flash_helmet(transport, bundle=tiny_bundle["bundle"], config=cfg, timeout=60)
    assert again["written"] == [] and again["bytes"] == 0
    assert "the helmet already runs this bundle" in again["notes"]
    assert not os.path.exists(fs + "/model_bundle.prev")  # not re-promoted

    # firmware only: the bundle is left alone
    fw_only = flash_helmet(transport, timeout=60)
    assert fw_only["written"] == [] and fw_only["info"]["model_sha256"] == model_sha


def test_power_cut_mid_bundle_then_resume(tmp_path, tiny_bundle):
    """The helmet loses power while the bundle is half written: it boots the previous bundle
    (old firmware files untouched), and flashing again resumes the partial file, completes,
    and the helmet promotes the new bundle (the old one kept as model_bundle.prev)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    new_bundle = padded_bundle(tiny_bundle["bundle"], tmp_path / "bundle2", 200_000)
    with VirtualHelmet(fs, heapsize="256K") as h, SerialTransport(h.port) as t:
        flash_helmet(t, bundle=tiny_bundle["bundle"], timeout=60)

        def power_cut(path, done, total):
            if path.endswith("pad.bin") and done > 140_000:  # pad.bin (the last big file) part written
                h.stop()

        with pytest.raises(FlashError, match="flashing failed"):
            flash_helmet(t, bundle=new_bundle, progress=power_cut)
    tmp = fs / "model_bundle.new" / "pad.bin.tmp"
    assert 0 < tmp.stat().st_size < 200_000
    assert not (fs / "model_bundle.new" / "manifest.json").exists()
    with VirtualHelmet(fs, heapsize="256K") as h, SerialTransport(h.port) as t:
        s = flash_helmet(t, bundle=new_bundle, timeout=60)
        done = s["resumed"].pop("/model_bundle.new/pad.bin")
        assert 12_288 < done < 200_000  # the partial file was extended, not rewritten
        assert all(s["sizes"][p] == n for p, n in s["resumed"].items())  # files staged before the cut
        assert s["bytes"] == 200_000 - done + s["sizes"]["/model_bundle.new/manifest.json"]
        assert s["info"]["bundle"] == "model_bundle"
    assert (fs / "model_bundle" / "pad.bin").read_bytes() == (new_bundle / "pad.bin").read_bytes()
    assert (fs / "model_bundle.prev" / "manifest.json").read_bytes() == (tiny_bundle["bundle"] / "manifest.json").read_bytes()
    assert not any(p.name.endswith(".tmp") for p in fs.rglob("*"))


def test_bundle_the_helmet_refuses_keeps_the_previous_one(tmp_path, tiny_bundle):
    """A bundle whose self-test answers are wrong passes the host checks (hashes match) but
    fails on the helmet: FlashError with the helmet's reason; it still runs the old bundle.

    256 KB heap: the refused attempt leaves no room to load the old bundle, so the helmet
    resets once and loads it on a clean heap; the refusal's reason survives the reset."""
    (tmp_path / "fs").mkdir()
    helmet = VirtualHelmet(tmp_path / "fs", heapsize="256K").start()
    transport = SerialTransport(helmet.port)
    try:
        _refused(helmet, transport, tiny_bundle, tmp_path)
    finally:
        transport.close()
        helmet.stop()


def _refused(helmet, transport, tiny_bundle, tmp_path):
    flash_helmet(transport, bundle=tiny_bundle["bundle"], timeout=60)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle["bundle"], bad)
    st = bytearray((bad / "selftest.bin").read_bytes())
    st[-1] ^= 0x40  # an expected output no interpreter gives
    (bad / "selftest.bin").write_bytes(bytes(st))
    man = json.loads((bad / "manifest.json").read_text())
    man["files"]["selftest.bin"]["sha256"] = hashlib.sha256(bytes(st)).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(FlashError, match=r"the helmet refused the new bundle: model_bundle.new: self-test case .*; "
                                         r"it kept the previous one \(model [0-9a-f]{12}\)"):
        flash_helmet(transport, bundle=bad, timeout=60)
    assert os.path.exists(helmet.fs_dir + "/model_bundle.rejected/manifest.json")
    assert open(helmet.fs_dir + "/model_bundle/manifest.json", "rb").read() == (tiny_bundle["bundle"] / "manifest.json").read_bytes()
    # the helmet remembers why (across its reset) until a bundle is promoted; flashing the
    # bundle it runs again writes nothing and is not mistaken for a second refusal
    info = flash_helmet(transport, bundle=tiny_bundle["bundle"], timeout=60)["info"]
    assert "self-test case" in info["bundle_refused"] and info["bundle"] == "model_bundle"


def test_bad_bundles_and_settings_are_refused_on_the_host(tmp_path, tiny_bundle):
    """Wrong bundles and settings are caught with the firmware's own checks, one clear line each."""
    with pytest.raises(FlashError, match="no bundle folder"):
        image.check_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlashError, match="not a painhelm bundle folder: it has no manifest.json"):
        image.check_bundle(tmp_path / "empty")
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle["bundle"], b)
    (b / "topomap.f32").write_bytes((b / "topomap.f32").read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(FlashError, match="wrong bundle for this firmware: .*topomap.f32 does not match its SHA-256"):
        image.check_bundle(b)
    shutil.copy(tiny_bundle["bundle"] / "topomap.f32", b / "topomap.f32")
    man = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(dict(man, bundle_version=7)))
    with pytest.raises(FlashError, match="wrong bundle for this firmware: .*bundle version 7, this firmware reads 0"):
        image.check_bundle(b)
    (b / "manifest.json").write_text(json.dumps(man))
    (b / "preproc.json").unlink()
    with pytest.raises(FlashError, match="wrong bundle for this firmware: .*missing bundle file"):
        image.check_bundle(b)

    cfg = tmp_path / "c.json"
    for text, msg in (('{"hop": 64', "is not valid JSON"), ('{"colour": 1}', "unknown setting 'colour'"),
                      ('{"hop": "64"}', "setting 'hop' must be int"), ('[1]', "must be a json object")):
        cfg.write_text(text)
        with pytest.raises(FlashError, match=msg):
            image.check_config(cfg)
    with pytest.raises(FlashError, match="cannot read settings file"):
        image.check_config(tmp_path / "missing.json")
