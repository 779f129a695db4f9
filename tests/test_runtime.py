"""The helmet runtime (firmware_py/app.py): streamed samples -> windows -> reports, commands,
heartbeats, bundle slots and self-test; on CPython and under the real MicroPython port."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from painhelm.firmware import app, bundle, slots, wire
from painhelm.host_tools.image import firmware_files
from painhelm.host_tools.replay import compare_reports, expected_reports

from .mpy import run_micropython


class MemLink:
    """An in-memory link with the transports' interface (poll / write / connected)."""

    connected = True
    closed = False

    def __init__(self):
        self.inbox = bytearray()
        self.out = bytearray()

    def poll(self):
        if not self.inbox:
            return None
        data = bytes(self.inbox)
        self.inbox[:] = b""
        return data

    def write(self, data):
        self.out += data


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    got = []
    wire.LineParser(lambda t, s, p: got.append((t, s, bytes(p)))).feed(data)
    return got


def recording(tiny_bundle, n_windows: int) -> np.ndarray:
    """Held-out windows back to back: a continuous (n_ch, n_windows * n_times) recording."""
    return np.concatenate(list(tiny_bundle["test"].data[:n_windows]), axis=1).astype(np.float32)


def sample_lines(data: np.ndarray, chunk: int = wire.SAMPLES_PER_FRAME) -> bytes:
    """The SAMPLES frames a host sends for ``data`` (n_ch, n), ``chunk`` samples each
    (at most ``wire.SAMPLES_PER_FRAME``: the helmet keeps only the newest that many)."""
    n_ch, n = data.shape
    out = []
    for i, start in enumerate(range(0, n, chunk)):
        block = np.ascontiguousarray(data[:, start:start + chunk].T, "<f4")  # sample-major
        out.append(wire.encode_line(wire.MSG_SAMPLES, i + 1, wire.pack_samples(block.tobytes(), n_ch, len(block), start)))
    return b"".join(out)


MICRO = dict(app.config.DEFAULTS, engine="micro")  # the engine the host pipeline reproduces exactly


@pytest.fixture
def device_root(tiny_bundle, tmp_path, monkeypatch):
    """A device filesystem (cwd) holding the tiny bundle as the bundle in use."""
    shutil.copytree(tiny_bundle["bundle"], tmp_path / bundle.BUNDLE_DIR)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stream_reports_equal_host_pipeline_cpython(tiny_bundle, device_root):
    """Samples streamed over the link give, window by window, the host pipeline's reports."""
    data = recording(tiny_bundle, 6)
    rt = app.Runtime(MemLink(), dict(MICRO))
    assert rt.helmet is not None and rt.helmet.selftest_cases > 0
    rt.link.inbox += sample_lines(data)
    while rt.step():
        pass
    reports = [wire.unpack_report(p) for t, s, p in frames(rt.link.out) if t == wire.MSG_REPORT]
    host = expected_reports(device_root / bundle.BUNDLE_DIR, data)
    assert len(reports) == 6
    assert [r["report_seq"] for r in reports] == list(range(1, 7))
    assert compare_reports(reports, host) == []


def test_stream_reports_equal_host_pipeline_micropython(tiny_bundle, device_root):
    """The same under MicroPython with a 256 KB heap: reports equal the host pipeline's."""
    data = recording(tiny_bundle, 4)
    for name, blob in firmware_files(mpy=True).items():  # compiled, as a 256 KB board gets them
        (device_root / name).write_bytes(blob)
    (device_root / "in.txt").write_bytes(sample_lines(data))
    code = """
import gc, app, wire
class L:
    connected = True
    closed = False
    def __init__(self):
        self.f = open('in.txt', 'rb')
    def poll(self):
        return self.f.readline() or None
    def write(self, d):
        if d[:1] == b'$':
            print(d.decode().strip())
rt = app.Runtime(L())
while rt.step():
    pass
gc.collect()
print('heap', gc.mem_alloc(), gc.mem_free())
"""
    out = run_micropython(code, cwd=device_root, heapsize="256K", path=[device_root])
    lines = out.strip().splitlines()
    print(lines[-1])
    got = frames("\n".join(lines[:-1]).encode() + b"\n")
    reports = [wire.unpack_report(p) for t, s, p in got if t == wire.MSG_REPORT]
    host = expected_reports(device_root / bundle.BUNDLE_DIR, data)
    assert len(reports) == 4
    assert compare_reports(reports, host) == []


def test_hop_gives_overlapping_windows(tiny_bundle, device_root):
    """With hop = half a window, reports come every half window and match the host's."""
    data = recording(tiny_bundle, 3)
    hop = tiny_bundle["pre"].n_times // 2
    rt = app.Runtime(MemLink(), dict(MICRO, hop=hop))
    rt.link.inbox += sample_lines(data, chunk=27)
    while rt.step():
        pass
    reports = [wire.unpack_report(p) for t, s, p in frames(rt.link.out) if t == wire.MSG_REPORT]
    host = expected_reports(device_root / bundle.BUNDLE_DIR, data, hop=hop)
    assert len(reports) == len(host) == 5
    assert [r["sample_index"] for r in reports] == [hop * (k + 2) for k in range(5)]
    assert compare_reports(reports, host) == []


def _command(rt, seq, code, args=None):
    rt.link.inbox += wire.encode_line(wire.MSG_COMMAND, seq, wire.pack_command(code, args))
    rt.step()
    acks = [(s, wire.unpack_ack(p)) for t, s, p in frames(rt.link.out) if t == wire.MSG_ACK]
    rt.link.out[:] = b""
    return acks


def test_commands_are_acked_once_per_seq(device_root):
    """CMD_CONFIG is applied and acked; a retried seq gets the same ack without a second run;
    bad settings and unknown commands are refused with a reason."""
    rt = app.Runtime(MemLink())
    assert _command(rt, 7, wire.CMD_CONFIG, {"hop": 100}) == [(7, (wire.ACK_OK, json.dumps(rt.cfg)))]
    assert rt.cfg["hop"] == 100
    rt.cfg["hop"] = 50  # changed behind its back: a replayed seq must not apply 100 again
    assert _command(rt, 7, wire.CMD_CONFIG, {"hop": 100})[0][1][0] == wire.ACK_OK
    assert rt.cfg["hop"] == 50
    status, text = _command(rt, 8, wire.CMD_CONFIG, {"hop": "fast"})[0][1]
    assert status == wire.ACK_FAILED and "hop" in text
    status, text = _command(rt, 9, wire.CMD_CONFIG, {"colour": 1})[0][1]
    assert status == wire.ACK_FAILED and "unknown setting" in text
    assert _command(rt, 10, 99)[0][1][0] == wire.ACK_UNKNOWN
    assert _command(rt, 11, wire.CMD_START)[0][1][0] == wire.ACK_OK and rt.streaming
    assert _command(rt, 12, wire.CMD_STOP)[0][1][0] == wire.ACK_OK and not rt.streaming


def test_heartbeat_and_unknown_type(device_root):
    """A heartbeat goes out at once and then every heartbeat_ms; unknown types get ERROR."""
    rt = app.Runtime(MemLink(), dict(app.config.DEFAULTS, heartbeat_ms=20))
    rt.link.inbox += wire.encode_line(0x55, 3, b"?")
    rt.step()
    got = frames(rt.link.out)
    assert (wire.MSG_ERROR, 3) in [(t, s) for t, s, _ in got]
    beats = [wire.unpack_heartbeat(p) for t, s, p in got if t == wire.MSG_HEARTBEAT]
    assert beats and beats[0]["state"] == wire.STATE_IDLE


def _with_selftest(src, dst, corrupt: bool):
    """Copy bundle ``src`` to ``dst``; with ``corrupt``, change one expected value of the
    self-test and re-sign the manifest, so only the self-test can catch it."""
    import hashlib

    shutil.copytree(src, dst)
    if corrupt:
        p = dst / bundle.SELFTEST_FILE
        raw = bytearray(p.read_bytes())
        raw[-1] = (raw[-1] + 5) & 0xFF
        p.write_bytes(bytes(raw))
        man = json.loads((dst / bundle.MANIFEST_FILE).read_text())
        man["files"][bundle.SELFTEST_FILE] = {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        (dst / bundle.MANIFEST_FILE).write_text(json.dumps(man))


def test_pending_bundle_is_promoted_after_its_selftest(tiny_bundle, device_root):
    _with_selftest(tiny_bundle["bundle"], device_root / slots.PENDING, corrupt=False)
    rt = app.Runtime(MemLink())
    assert rt.slot == slots.ACTIVE and rt.bundle_errors == []
    assert not (device_root / slots.PENDING).exists()
    assert (device_root / slots.PREVIOUS / bundle.MANIFEST_FILE).exists()


def test_failing_pending_bundle_is_rejected_and_the_last_good_kept(tiny_bundle, device_root):
    _with_selftest(tiny_bundle["bundle"], device_root / slots.PENDING, corrupt=True)
    rt = app.Runtime(MemLink())
    assert rt.helmet is not None and rt.slot == slots.ACTIVE
    assert rt.bundle_errors and "self-test" in rt.bundle_errors[0][1]
    assert (device_root / slots.REJECTED).exists() and not (device_root / slots.PENDING).exists()
    info = json.loads(rt.info())
    assert "self-test" in info["bundle_refused"]
    rt.announce()  # at start: ready, then why the new bundle was refused
    (t0, s0, p0), (t1, s1, p1) = frames(rt.link.out)
    assert (t0, s0, t1, s1) == (wire.MSG_PONG, 0, wire.MSG_ERROR, 0)
    code, text = wire.unpack_error(p1)
    assert code == wire.ERR_BUNDLE_REFUSED and slots.PENDING in text and "self-test" in text


def test_broken_active_bundle_falls_back_to_previous(tiny_bundle, device_root):
    shutil.copytree(tiny_bundle["bundle"], device_root / slots.PREVIOUS)
    model = device_root / bundle.BUNDLE_DIR / bundle.MODEL_FILE
    model.write_bytes(model.read_bytes()[:-10])  # power cut while flashing
    rt = app.Runtime(MemLink())
    assert rt.helmet is not None and rt.slot == slots.PREVIOUS
    assert "model.tflite" in rt.bundle_errors[0][1]


def test_good_start_announces_ready_only(device_root):
    rt = app.Runtime(MemLink())
    rt.announce()
    assert [(t, s) for t, s, p in frames(rt.link.out)] == [(wire.MSG_PONG, 0)]


def test_no_bundle_refuses_infer_and_start_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rt = app.Runtime(MemLink())
    assert json.loads(rt.info())["bundle_error"] == "no bundle on the device (flash one)"
    assert _command(rt, 1, wire.CMD_START)[0][1] == (wire.ACK_FAILED, "no bundle on the device (flash one)")


def _add_file(bundle_dir, name, data: bytes):
    """Put an optional file into a bundle and list it in the manifest."""
    import hashlib

    (bundle_dir / name).write_bytes(data)
    man = json.loads((bundle_dir / bundle.MANIFEST_FILE).read_text())
    man["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle_dir / bundle.MANIFEST_FILE).write_text(json.dumps(man))


@pytest.mark.parametrize("kind", ["litert", "onnxruntime"])
def test_raspberry_pi_engines(tiny_bundle, device_root, kind):
    """On CPython the helmet can run LiteRT or onnxruntime instead of its own interpreter:
    chosen by the config, self-tested at load, and within a few int8 steps of TFLM."""
    from painhelm.compress.export import export_onnx
    from painhelm.firmware import engine

    root = device_root / bundle.BUNDLE_DIR
    if kind == "onnxruntime":
        onx = export_onnx(tiny_bundle["model"], tiny_bundle["x_test"][:32], device_root / "onnx")
        _add_file(root, engine.ONNX_FILE, open(onx["int8"], "rb").read())
    assert kind in engine.available(str(root)) and engine.choose("auto", str(root)) == "litert"
    h = app.Helmet(str(root), kind)
    assert h.engine.name == kind and h.selftest_cases == 2
    test = tiny_bundle["test"]
    lv, lc = [], []
    for i in range(8):
        r = wire.unpack_report(h.infer(wire.pack_window(np.ascontiguousarray(test.data[i], "<f4").tobytes(),
                                                        *test.data[i].shape, tiny_bundle["sfreq"])))
        lv.append(r["level_q"])
        lc.append(r["location_q"])
    got = np.concatenate([np.array(lv), np.array(lc)], axis=1)
    ref = np.concatenate([tiny_bundle["level_q"][:8], tiny_bundle["location_q"][:8]], axis=1)
    assert np.abs(got.astype(int) - ref).max() <= engine.TOLERANCE[kind]
    print("%s vs TFLM: %.1f %% of logits identical, max diff %d" % (kind, 100 * (got == ref).mean(), np.abs(got.astype(int) - ref).max()))


def test_engine_setting_errors(device_root):
    """An engine that cannot run here, or an unknown one, is a clear error at load."""
    rt = app.Runtime(MemLink(), dict(app.config.DEFAULTS, engine="onnxruntime"))  # no model.onnx shipped
    assert rt.helmet is None and "cannot run here" in rt.error()
    with pytest.raises(ValueError, match="unknown setting"):
        app.config.merge(app.config.DEFAULTS, {"engin": "micro"})


def test_watchdog_is_fed_where_the_port_has_one(device_root, monkeypatch):
    """A board's machine.WDT is created with the configured timeout and fed every loop pass."""
    import sys
    import types

    fed = []

    class WDT:
        def __init__(self, timeout):
            fed.append(("timeout", timeout))

        def feed(self):
            fed.append("feed")

    monkeypatch.setitem(sys.modules, "machine", types.SimpleNamespace(WDT=WDT))
    rt = app.Runtime(MemLink(), dict(app.config.DEFAULTS, watchdog_ms=5000))
    rt.step()
    rt.step()
    assert fed == [("timeout", 5000), "feed", "feed"]
