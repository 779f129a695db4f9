"""Export of PainNet to TFLite and ONNX, and the runners over the exported files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from painhelm.compress import export as E
from painhelm.train.model import PainNet, PainNetConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export a seeded random PainNet to both formats once per module."""
    torch.manual_seed(0)
    model = PainNet(PainNetConfig()).eval()
    calib = np.random.default_rng(0).standard_normal((64, 4, 3, 16, 16)).astype(np.float32)
    out = tmp_path_factory.mktemp("export")
    return model, calib, E.export_tflite(model, calib, out), E.export_onnx(model, calib, out)


def test_files_written(exported):
    """All four model files exist."""
    _, _, t, o = exported
    for p in (t["fp32"], t["int8"], o["fp32"], o["int8"]):
        assert open(p, "rb").read(4)


def test_int8_tflite_is_full_int8(exported):
    """The int8 .tflite has int8 input/outputs and no float or loop ops."""
    _, _, t, _ = exported
    r = E.TFLiteRunner(t["int8"])
    assert r.is_int8 and r._lvl["dtype"] == np.int8 and r._loc["dtype"] == np.int8
    assert not {"DEQUANTIZE", "WHILE"} & set(t["ops"])
    assert "CONV_2D" in t["ops"] and "SOFTMAX" in t["ops"]


def test_runners_agree_with_torch(exported):
    """fp32 runners match torch closely; int8 runners keep the argmax on most inputs."""
    model, calib, t, o = exported
    x = calib[:16]
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x))
    ref = (logits["level"].numpy(), logits["location"].numpy())
    for got in (E.TFLiteRunner(t["fp32"]).predict(x), E.OnnxRunner(o["fp32"]).predict(x)):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, atol=1e-4)
    for got in (E.TFLiteRunner(t["int8"]).predict(x), E.OnnxRunner(o["int8"]).predict(x)):
        assert got[0].shape == (16, 4) and got[1].shape == (16, 2)
        assert np.mean(got[0].argmax(1) == ref[0].argmax(1)) >= 0.75


def test_tflm_runs_int8(exported):
    """TFLite Micro loads the int8 model and returns int8 outputs of the right shapes."""
    _, calib, t, _ = exported
    r8 = E.TFLiteRunner(t["int8"])
    xq = E.quantize_array(calib[:4], r8.input_scale, r8.input_zero_point)
    lv, lc = E.TFLMRunner(t["int8"]).predict_int8(xq)
    assert lv.shape == (4, 4) and lc.shape == (4, 2) and lv.dtype == np.int8


def test_predict_int8_shapes(exported):
    """predict_int8 identifies level (4) and location (2) outputs by shape."""
    _, calib, t, _ = exported
    r8 = E.TFLiteRunner(t["int8"])
    lv, lc = r8.predict_int8(E.quantize_array(calib[:3], r8.input_scale, r8.input_zero_point))
    assert lv.shape == (3, 4) and lc.shape == (3, 2)
