"""The helmet's pure-Python int8 interpreter against LiteRT (reference kernels) and TFLM."""

from __future__ import annotations

import struct
from array import array

import numpy as np
import pytest
import torch

from painhelm.compress import export as E
from painhelm.firmware import interp
from painhelm.train.model import PainNet, PainNetConfig

from .mpy import run_micropython

N_INPUTS = 20


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export a seeded random PainNet once; return (out_dir, int8 path, int8 inputs)."""
    torch.manual_seed(0)
    model = PainNet(PainNetConfig())
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 4, 3, 16, 16)).astype(np.float32)
    out = tmp_path_factory.mktemp("interp_export")
    info = E.export_tflite(model, calib, out)
    x = rng.standard_normal((N_INPUTS, 4, 3, 16, 16)) * rng.uniform(0.3, 1.5, (N_INPUTS, 1, 1, 1, 1))
    xq = E.quantize_array(x, info["input_scale"], info["input_zero_point"])
    return out, info["int8"], xq


def _litert(path, xq):
    lv, lc = E.TFLiteRunner(path).predict_int8(xq)
    return np.concatenate([lv, lc], axis=1)


def _cpython(path, xq):
    it = interp.Interpreter(open(path, "rb").read())
    rows = []
    for x in xq:
        it.invoke(array("b", x.tobytes()))
        rows.append(list(it.output(0)) + list(it.output(1)))
    return np.array(rows, np.int8)


def test_quantize_rule_numpy_matches_firmware():
    """The host's vectorised quantize_array equals the firmware's quantize_value, ties included."""
    rng = np.random.default_rng(1)
    scale, zp = 0.0365, -3
    ties = (np.arange(-140, 140) - zp + 0.5) * scale  # x/scale lands on (near) .5
    xs = np.concatenate([rng.normal(0, 3, 5000), ties, [0.0, -0.0, 1e9, -1e9]])
    ref = [interp.quantize_value(float(v), scale, zp) for v in xs]
    assert E.quantize_array(xs, scale, zp).tolist() == ref
    assert interp.quantize_value(0.5, 1.0, 0) == 1 and interp.quantize_value(-0.5, 1.0, 0) == 0


def test_cpython_matches_litert_exactly(exported):
    """Under CPython every output value equals LiteRT's (reference kernels)."""
    _, path, xq = exported
    mine, ref = _cpython(path, xq), _litert(path, xq)
    assert np.array_equal(mine, ref), "%d of %d values differ" % ((mine != ref).sum(), ref.size)


def test_micropython_uses_the_viper_dot():
    """On the unix port the viper kernel is the one in use (so the MicroPython tests run it)."""
    assert run_micropython("import interp\nprint(interp._dot is interp._viper.dot)").strip() == "True"


def test_plain_and_viper_dot_agree(exported, monkeypatch):
    """The plain-Python dot kernel gives LiteRT's outputs too (MicroPython runs viper below)."""
    _, path, xq = exported
    monkeypatch.setattr(interp, "_dot", interp._dot_plain)
    assert np.array_equal(_cpython(path, xq[:3]), _litert(path, xq[:3]))


def test_close_to_tflm(exported):
    """TFLM (fixed-point LOGISTIC/TANH) stays within a few steps and mostly agrees."""
    _, path, xq = exported
    ref = _litert(path, xq)
    lv, lc = E.TFLMRunner(path).predict_int8(xq)
    tflm = np.concatenate([lv, lc], axis=1)
    assert np.abs(tflm.astype(int) - ref).max() <= 3
    assert (tflm == ref).mean() >= 0.7


def test_micropython_matches_litert(exported, tmp_path):
    """Under real MicroPython (256K heap) the interpreter reproduces LiteRT value by value."""
    _, path, xq = exported
    (tmp_path / "x.bin").write_bytes(xq.tobytes())
    n = xq[0].size
    code = """
import gc, interp
from array import array
f = open(%r, 'rb'); mb = f.read(); f.close()
it = interp.Interpreter(mb)
x = array('b', bytes(%d))
f = open('x.bin', 'rb')
for k in range(%d):
    f.readinto(x)
    it.invoke(x)
    print(bytes(it.output(0)).hex() + bytes(it.output(1)).hex())
f.close()
""" % (str(path), n, len(xq))
    out = run_micropython(code, cwd=tmp_path, heapsize="256K")
    lines = [ln for ln in out.split() if ln]
    mine = np.array([list(struct.unpack("%db" % 6, bytes.fromhex(ln))) for ln in lines], np.int8)
    ref = _litert(path, xq)
    assert np.array_equal(mine, ref), "%d of %d values differ" % ((mine != ref).sum(), ref.size)


def _replace_first_opcode(model: bytes, new_code: int) -> bytes:
    """Copy of the model with operator_codes[0].builtin_code set to new_code."""
    fb = interp._FB(memoryview(model))
    root = fb.u32(0)
    code0 = fb.vec_tables(root, 1)[0]
    buf = bytearray(model)
    p = fb.field(code0, 3)
    struct.pack_into("<i", buf, p, new_code)
    dep = fb.field(code0, 0)
    if dep:
        struct.pack_into("<b", buf, dep, min(new_code, 127))
    return bytes(buf)


def test_unknown_operator_raises(exported):
    """An operator the interpreter lacks fails at load with a ValueError naming it."""
    _, path, _ = exported
    bad = _replace_first_opcode(open(path, "rb").read(), 4)  # DEPTHWISE_CONV_2D
    with pytest.raises(ValueError, match="DEPTHWISE_CONV_2D"):
        interp.Interpreter(bad)
