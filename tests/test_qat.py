"""compress.qat: fake quantization, quantization-aware fine-tuning, and the int8 export of its result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from painhelm.compress import qat as Q
from painhelm.compress.prune import validation_split
from painhelm.train.fit import Fitted, TrainConfig, fit


@pytest.fixture(scope="module")
def ws(synthetic4):
    return synthetic4


@pytest.fixture(scope="module")
def trained(ws):
    """PainNet trained briefly (one thread: fast here and reproducible), then fine-tuned with QAT."""
    f = fit(ws, TrainConfig(epochs=12, threads=1, patience=50, device="cpu"))
    tuned, report = Q.qat_finetune(f, ws, epochs=3)
    return f, tuned, report


def test_weight_fake_quant_is_per_channel_symmetric_int8():
    """Each output channel is rounded to k * max|w_c| / 127 with |k| <= 127; gradients pass straight through."""
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).reshape(6, 1, 1, 1)
    w.requires_grad_(True)
    q = Q.fake_quant_weight(w)
    scale = w.detach().abs().amax(dim=(1, 2, 3)) / 127
    k = q.detach() / scale.reshape(6, 1, 1, 1)
    np.testing.assert_allclose(k.numpy(), np.round(k.numpy()), atol=1e-3)
    assert float(k.abs().max()) == pytest.approx(127, abs=1e-3)
    assert float((q - w).detach().abs().max()) <= float(scale.max()) / 2 + 1e-6
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    torch.testing.assert_close(Q.fake_quant_weight(q.detach()), q.detach(), rtol=0, atol=1e-7)  # on the grid


def test_activation_qparams_match_the_exporter():
    """Activation scale and zero point follow ai-edge-quantizer's asymmetric int8 rule (0 always representable)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize.uniform_quantize_tensor import tensor_zp_scale_from_min_max

    for lo, hi in ((-1.5, 3.25), (0.2, 7.0), (-4.0, -0.5), (0.0, 1e-3)):
        scale, zero = Q.activation_qparams(torch.tensor(lo), torch.tensor(hi))
        zp_ref, scale_ref = tensor_zp_scale_from_min_max(np.array([lo]), np.array([hi]), 8, False,
                                                         qtyping.QuantGranularity.TENSORWISE)
        assert float(scale) == pytest.approx(float(scale_ref[0]), rel=1e-6)
        assert int(zero) == int(zp_ref[0])
    fq = Q.ActFakeQuant().eval()
    assert torch.equal(fq(torch.tensor([5.0])), torch.tensor([5.0]))  # nothing observed yet: identity
    assert not torch.isfinite(fq.lo)  # eval mode observes nothing
    fq.train()(torch.tensor([-1.0, 2.0]))
    fq.eval()
    y = fq(torch.tensor([-3.0, 0.0, 1.0, 9.0]))
    assert float(y[0]) == pytest.approx(-1.0, abs=3 / 255) and float(y[3]) == pytest.approx(2.0, abs=3 / 255)
    assert float(y[1]) == 0.0  # zero is exact


def test_qat_returns_a_plain_model_on_the_int8_grid(trained, ws, tmp_path):
    """The result is a plain PainNet with the same config, weights on their int8 grid; it saves and loads."""
    f, tuned, rep = trained
    m = tuned.model
    assert type(m) is type(f.model) and m.cfg == f.model.cfg
    assert not any(isinstance(mod, (Q._QATLayer, Q.ActFakeQuant)) for mod in m.modules())
    assert list(m.state_dict()) == list(f.model.state_dict())
    assert rep["weight_grid_error"] == 0.0 == Q.weight_grid_error(m)
    assert Q.weight_grid_error(f.model) > 0  # the input predictor keeps its float weights
    for key in ("val_before", "val_fake_quant_before", "val_fake_quant_after", "val_after"):
        assert set(rep[key]) == {"acc_level", "bacc_level", "acc_location", "bacc_location", "score"}
    best = max(rep["val_fake_quant_before"]["score"], rep["val_fake_quant_after"]["score"])
    assert rep["finetune_kept"] == (rep["val_fake_quant_after"]["score"] == best)
    assert 1 <= rep["finetune_epochs"] <= 3 and rep["validation"]["same_as_training"]
    assert tuned.extra["compression"][-1]["step"] == "qat"
    loaded = Fitted.load(tuned.save(tmp_path / "qat"))
    p = tuned.predict(ws)
    for k in p:
        np.testing.assert_array_equal(loaded.predict(ws)[k], p[k])


def test_qat_model_exports_to_full_int8_and_agrees(trained, ws, tmp_path):
    """The QAT model exports to full-int8 TFLite whose weights are exactly its own; int8 and float mostly agree."""
    from ai_edge_litert.interpreter import Interpreter

    from painhelm.compress.export import TFLiteRunner, tflite_op_names

    f, tuned, rep = trained
    images = tuned.images(ws)
    train_idx, val_idx, _ = validation_split(tuned, ws, tuned.cfg)
    scores = Q.int8_scores(tuned, images, ws, val_idx, images[train_idx], out_dir=tmp_path)
    r8 = TFLiteRunner(scores["tflite"])
    assert r8.is_int8 and r8._lvl["dtype"] == np.int8 and r8._loc["dtype"] == np.int8
    assert not {"DEQUANTIZE", "WHILE"} & set(tflite_op_names(scores["tflite"]))
    assert scores["agree_level"] >= 0.75 and scores["agree_location"] >= 0.75
    assert set(scores) >= {"acc_level", "bacc_level", "acc_location", "bacc_location", "score"}
    # the export's per-channel int8 weights dequantize to the QAT weights themselves
    it = Interpreter(model_path=scores["tflite"])
    weights = {n: p.detach().numpy() for n, p in tuned.model.named_parameters()
               if n.endswith("weight") and p.shape[0] > 1}
    matched = set()
    for d in it.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] != np.int8 or len(scales) < 2:
            continue
        v = it.get_tensor(d["index"])
        deq = v.astype(np.float64) * scales.reshape((-1,) + (1,) * (v.ndim - 1))
        for n, w in weights.items():
            w = np.moveaxis(w, 1, -1) if w.ndim == 4 else w  # conv: torch OIHW, TFLite OHWI
            if w.shape == deq.shape and np.abs(deq - w).max() <= 1e-6 * max(1.0, np.abs(w).max()):
                matched.add(n)
    assert matched == set(weights)


def test_compare_int8_reports_ptq_and_qat(trained, ws):
    """compare_int8 exports the model before and after QAT and scores both int8 models on validation."""
    f, _, _ = trained
    tuned, rep = Q.qat_finetune(f, ws, epochs=1, compare_int8=True, n_calib=32)
    for key in ("int8_before", "int8_after"):
        assert set(rep[key]) >= {"acc_level", "bacc_level", "agree_level", "agree_location", "score"}
        assert 0 <= rep[key]["score"] <= 1 and rep[key]["agree_level"] >= 0.75


def test_bad_arguments(trained, ws):
    """QAT needs at least one epoch and a validation split."""
    f, _, _ = trained
    for epochs in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="epochs must be an int >= 1"):
            Q.qat_finetune(f, ws, epochs=epochs)
    with pytest.raises(ValueError, match="val_fraction"):
        Q.qat_finetune(dataclasses.replace(f, cfg=dataclasses.replace(f.cfg, val_fraction=0.0)), ws, epochs=1)
