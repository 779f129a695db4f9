"""The helmet application: bundle loading and window -> report, on CPython and MicroPython."""

import json
import shutil

import numpy as np
import pytest

from painhelm.firmware import app, bundle, wire
from painhelm.host_tools.image import firmware_files

from .mpy import run_micropython


def _payload(window, sfreq):
    n_ch, n_times = window.shape
    return wire.pack_window(np.ascontiguousarray(window, "<f4").tobytes(), n_ch, n_times, sfreq)


def test_cpython_reports_equal_host_int8(tiny_bundle):
    """On CPython (Raspberry Pi path) the firmware's int8 logits equal TFLM's, window by window."""
    h = app.Helmet(str(tiny_bundle["bundle"]), "micro")  # the helmet's own interpreter = TFLM
    for i in range(6):
        r = wire.unpack_report(h.infer(_payload(tiny_bundle["test"].data[i], tiny_bundle["sfreq"])))
        assert r["level_q"] == tiny_bundle["level_q"][i].tolist()
        assert r["location_q"] == tiny_bundle["location_q"][i].tolist()
        assert r["level"] == int(np.argmax(tiny_bundle["level_q"][i])) and 0 < r["level_conf"] <= 255


def test_micropython_reports_equal_host_int8(tiny_bundle, tmp_path):
    """Under MicroPython (512K heap) the app computes the same int8 logits from raw samples."""
    for name, data in firmware_files().items():
        (tmp_path / name).write_bytes(data)
    shutil.copytree(tiny_bundle["bundle"], tmp_path / bundle.BUNDLE_DIR)
    n = 4
    with open(tmp_path / "windows.bin", "wb") as f:
        for i in range(n):
            f.write(_payload(tiny_bundle["test"].data[i], tiny_bundle["sfreq"]))
    size = len(_payload(tiny_bundle["test"].data[0], tiny_bundle["sfreq"]))
    code = (
        "import app, wire, gc\n"
        "h = app.Helmet()\ngc.collect()\nprint('mem', gc.mem_alloc())\n"
        "f = open('windows.bin', 'rb')\n"
        "for i in range(%d):\n"
        "    r = wire.unpack_report(h.infer(f.read(%d)))\n"
        "    print(r['level_q'], r['location_q'])\n" % (n, size)
    )
    lines = run_micropython(code, cwd=tmp_path, heapsize="512K", path=[tmp_path]).strip().splitlines()
    print(lines.pop(0))  # heap in use after loading, shown with -s
    assert len(lines) == n
    for i, line in enumerate(lines):
        lq, cq = line.replace("] [", "]|[").split("|")
        assert json.loads(lq) == tiny_bundle["level_q"][i].tolist()
        assert json.loads(cq) == tiny_bundle["location_q"][i].tolist()


def test_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    """A bundle file that does not match its manifest SHA-256 is refused by name."""
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], b)
    data = bytearray((b / bundle.MODEL_FILE).read_bytes())
    data[100] ^= 0xFF
    (b / bundle.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(bundle.BundleError, match="model.tflite"):
        app.Helmet(str(b))


def test_missing_manifest_means_no_bundle(tiny_bundle, tmp_path):
    """An interrupted copy (no manifest yet) is not used."""
    b = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], b)
    (b / bundle.MANIFEST_FILE).unlink()
    with pytest.raises(bundle.BundleError, match="manifest"):
        app.Helmet(str(b))


def test_runtime_answers_ping_infer_and_unknown(tiny_bundle, tmp_path, monkeypatch):
    """The device loop announces itself, answers PING, INFER, and unknown types and damaged
    frames with an error frame."""
    from .test_runtime import MemLink, frames

    shutil.copytree(tiny_bundle["bundle"], tmp_path / bundle.BUNDLE_DIR)
    monkeypatch.chdir(tmp_path)
    test = tiny_bundle["test"]
    rt = app.Runtime(MemLink(), dict(app.config.DEFAULTS, heartbeat_ms=0))
    rt._send(wire.MSG_PONG, 0, rt.info().encode())  # what run() announces first
    rt.link.inbox += (wire.encode_line(wire.MSG_PING, 1) + wire.encode_line(wire.MSG_INFER, 2, _payload(test.data[0], 128.0))
                      + wire.encode_line(0x55, 3) + b"$garbage\n")
    rt.step()
    got = frames(rt.link.out)
    assert [(t, s) for t, s, _ in got] == [(wire.MSG_PONG, 0), (wire.MSG_PONG, 1), (wire.MSG_REPORT, 2),
                                           (wire.MSG_ERROR, 3), (wire.MSG_ERROR, 0)]
    assert json.loads(got[1][2])["protocol"] == wire.PROTOCOL_VERSION
    assert wire.unpack_error(got[3][2])[0] == wire.ERR_UNKNOWN_TYPE
    assert wire.unpack_error(got[4][2])[0] == wire.ERR_BAD_FRAME


def test_cleaning_matrix_travels_in_the_bundle(tiny_bundle, tmp_path):
    """A bundle with a cleaning matrix: the helmet applies it before the DSP, as the host does.

    Host int8 logits come from ``pre.images`` (matrix in float64, then numpy DSP); the
    firmware applies the float32 matrix per window on CPython and under MicroPython.
    """
    import dataclasses

    from painhelm.compress.bundle import write_bundle
    from painhelm.compress.export import quantize_array

    pre, runner, test = tiny_bundle["pre"], tiny_bundle["runner"], tiny_bundle["test"]
    rng = np.random.default_rng(7)
    n_ch = len(pre.ch_names)
    M = (np.eye(n_ch) + 0.3 * rng.standard_normal((n_ch, n_ch))).astype(np.float32)
    pre_c = dataclasses.replace(pre, clean=M)
    b = write_bundle(tmp_path / "cleaned", tiny_bundle["tflite"], pre_c, test.level_names, test.location_names,
                     runner.input_scale, runner.input_zero_point)
    assert (b / bundle.CLEAN_FILE).stat().st_size == 4 * n_ch * n_ch
    n = 4
    x = quantize_array(pre_c.images(test.data[:n]), runner.input_scale, runner.input_zero_point)
    host = np.concatenate(runner.predict_int8(x), axis=1)
    plain = np.concatenate(runner.predict_int8(
        quantize_array(pre.images(test.data[:n]), runner.input_scale, runner.input_zero_point)), axis=1)
    assert not np.array_equal(host, plain)  # the matrix really changes what the model sees

    h = app.Helmet(str(b), "micro")
    cpy = np.array([sum(map(list, (lambda r: (r["level_q"], r["location_q"]))(
        wire.unpack_report(h.infer(_payload(test.data[i], tiny_bundle["sfreq"]))))), []) for i in range(n)])

    for name, data in firmware_files().items():
        (tmp_path / name).write_bytes(data)
    shutil.copytree(b, tmp_path / bundle.BUNDLE_DIR)
    with open(tmp_path / "windows.bin", "wb") as f:
        for i in range(n):
            f.write(_payload(test.data[i], tiny_bundle["sfreq"]))
    size = len(_payload(test.data[0], tiny_bundle["sfreq"]))
    code = ("import app, wire\nh = app.Helmet()\nassert h.clean is not None\nf = open('windows.bin', 'rb')\n"
            "for i in range(%d):\n    r = wire.unpack_report(h.infer(f.read(%d)))\n"
            "    print(list(r['level_q']) + list(r['location_q']))\n" % (n, size))
    out = run_micropython(code, cwd=tmp_path, heapsize="512K", path=[tmp_path]).strip().splitlines()
    dev = np.array([json.loads(line) for line in out])
    # the float32 matrix on the helmet vs float64 on the host: a rare ±1 at a rounding tie
    for got in (cpy, dev):
        assert got.shape == host.shape
        assert np.abs(got - host).max() <= 1 and (got == host).mean() >= 0.95
