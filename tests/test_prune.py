"""compress.prune: structured (torch-pruning) and unstructured pruning with fine-tuning; fit(init=...)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from painhelm.compress.prune import prune, weight_sparsity, zero_channels
from painhelm.train.fit import Fitted, TrainConfig, fit, split_validation
from painhelm.train.model import build_model, count_macs, count_params


@pytest.fixture(scope="module")
def ws(synthetic4):
    return synthetic4


def _cfg(**kw) -> TrainConfig:
    # one thread: fast on a shared 2-core machine, and bitwise reproducible
    return TrainConfig(**{"epochs": 12, "threads": 1, "patience": 50, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def fitted(ws):
    """PainNet (CNN -> LSTM -> attention) trained briefly."""
    return fit(ws, _cfg())


def _same_logits(a: dict, b: dict, atol=0.0):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol)


def test_structured_removes_channels_params_and_macs(fitted, ws, tmp_path):
    """Half the encoder channels go: >= 50 % fewer parameters, fewer MACs; it saves and loads identically."""
    before = fitted.predict(ws)
    small, rep = prune(fitted, ws, method="structured", amount=0.5, epochs=3)
    m = small.model
    assert (m.cfg.conv1, m.cfg.conv2, m.cfg.frame_features) == (4, 8, 16)
    assert (m.cnn.conv1.out_channels, m.cnn.conv2.in_channels, m.cnn.fc.in_features) == (4, 4, 8 * 4 * 4)
    assert m.agg.lstm.x2g.in_features == 16 and m.agg.lstm.n_hidden == 32  # the LSTM keeps its size
    assert rep["widths"] == {"cnn.conv1": [8, 4], "cnn.conv2": [16, 8], "cnn.fc": [32, 16]}
    assert rep["params_before"] == count_params(fitted.model) == 18167
    assert rep["params_after"] == count_params(m) and rep["params_removed"] >= 0.5
    assert rep["macs_after"] == count_macs(m, (1, 4, 3, 16, 16)) < 0.5 * rep["macs_before"]
    for key in ("val_before", "val_pruned", "val_finetuned", "val_after"):
        assert set(rep[key]) == {"acc_level", "bacc_level", "acc_location", "bacc_location", "score"}
    # the pruned model before fine-tuning competes as epoch 0: the better of the two is returned
    assert rep["val_after"] == (rep["val_finetuned"] if rep["finetune_kept"] else rep["val_pruned"])
    assert rep["val_after"]["score"] >= rep["val_pruned"]["score"]
    assert rep["validation"]["by"] == "subject" and rep["validation"]["same_as_training"]
    assert 1 <= rep["finetune_epochs"] <= 3 and rep["finetune_seconds"] > 0
    _same_logits(fitted.predict(ws), before)  # the input predictor is left as it was
    p = small.predict(ws)
    assert p["level"].shape == (len(ws), 4) and np.isfinite(p["level"]).all()
    loaded = Fitted.load(small.save(tmp_path / "pruned"))
    _same_logits(loaded.predict(ws), p)
    assert loaded.model.cfg == m.cfg and count_params(loaded.model) == rep["params_after"]
    saved = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert saved["compression"] == [{"step": "prune", "method": "structured", "amount": 0.5, "epochs": 3}]


@pytest.mark.parametrize("name", ["painnet", "edge-lstm", "edge-max", "edge-conv1d", "edge-mixed"])
def test_structured_is_exactly_channel_removal(ws, name):
    """Without fine-tuning, the pruned model computes what the original does with those channels zeroed."""
    f = fit(ws, _cfg(model=name, epochs=1))
    small, rep = prune(f, ws, method="structured", amount=0.4, epochs=0)
    assert rep["finetune_epochs"] == 0 and rep["params_after"] < rep["params_before"]
    assert set(rep["removed"]) == {"cnn.conv1", "cnn.conv2", "cnn.fc"}
    assert [len(v) for v in rep["removed"].values()] == [b - a for b, a in rep["widths"].values()]
    x = torch.from_numpy(f.images(ws))
    with torch.no_grad():
        got = small.model(x)[0]
        ref = zero_channels(f.model, rep["removed"])(x)[0]
    for k in got:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-5)
    assert rep["val_pruned"] == rep["val_after"] and not rep["finetune_kept"]


def test_unstructured_keeps_the_requested_zeros(fitted, ws, tmp_path):
    """Global magnitude pruning: the masks hold through fine-tuning, then become plain zero weights."""
    sparse, rep = prune(fitted, ws, method="unstructured", amount=0.6, epochs=3)
    n = sum(mod.weight.numel() for mod in sparse.model.modules()
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)))
    assert rep["weight_sparsity"] == weight_sparsity(sparse.model)
    assert abs(rep["weight_sparsity"] - 0.6) <= 1 / n  # exactly round(0.6 n) weights are zero
    assert rep["finetune_epochs"] >= 1 and any(h["loss"] != sparse.history[0]["loss"] for h in sparse.history[1:])
    assert not any(k.endswith(("_orig", "_mask")) for k in sparse.model.state_dict())
    assert rep["params_after"] == rep["params_before"] and rep["macs_after"] == rep["macs_before"]
    assert rep["nonzero_params_after"] <= rep["nonzero_params_before"] - 0.6 * n + 1
    assert rep["nonzero_removed"] > 0.5
    assert weight_sparsity(fitted.model) < 0.01  # the input predictor keeps its weights
    loaded = Fitted.load(sparse.save(tmp_path / "sparse"))
    _same_logits(loaded.predict(ws), sparse.predict(ws))
    assert weight_sparsity(loaded.model) == rep["weight_sparsity"]


def test_unstructured_fit_with_masks_saves_a_plain_model(fitted, ws, tmp_path):
    """fit(init=masked model, out_dir=...) writes a folder whose model.pt loads into a plain PainNet."""
    from painhelm.compress.prune import mask_weights

    masked = dataclasses.replace(fitted, model=mask_weights(fitted.model, 0.5))
    tuned = fit(ws, dataclasses.replace(fitted.cfg, epochs=1), init=masked, out_dir=tmp_path / "m")
    loaded = Fitted.load(tmp_path / "m")
    _same_logits(loaded.predict(ws), tuned.predict(ws), atol=1e-6)
    assert abs(weight_sparsity(loaded.model) - 0.5) < 0.01


def test_bad_arguments(fitted, ws):
    """An unknown method, an amount outside (0, 1), negative epochs and vgg structured pruning are refused."""
    with pytest.raises(ValueError, match="method must be one of"):
        prune(fitted, ws, method="channels", amount=0.5, epochs=1)
    for amount in (0, 1, 1.5, -0.2, True, "0.5"):
        with pytest.raises(ValueError, match=r"amount must be a number in \(0, 1\)"):
            prune(fitted, ws, method="unstructured", amount=amount, epochs=1)
    with pytest.raises(ValueError, match="epochs must be"):
        prune(fitted, ws, method="structured", amount=0.5, epochs=-1)
    vgg = dataclasses.replace(fitted, model=build_model("vgg-max", 4, 3, 16, 4, 2))
    with pytest.raises(ValueError, match="supports the edge models .*not 'vgg-max'"):
        prune(vgg, ws, method="structured", amount=0.5, epochs=1)
    with pytest.raises(ValueError, match="val_fraction"):
        prune(dataclasses.replace(fitted, cfg=dataclasses.replace(fitted.cfg, val_fraction=0.0)), ws,
              method="structured", amount=0.5, epochs=1)


# --- fit(init=...): the one training loop that pruning and QAT fine-tune with --------------------------

def test_fit_init_starts_from_the_model_and_keeps_the_preprocessing(fitted, ws):
    """A fine-tune starts from init's weights and preprocessing, splits as fit does, and leaves init alone."""
    state = {k: v.clone() for k, v in fitted.model.state_dict().items()}
    cfg = dataclasses.replace(fitted.cfg, epochs=2, lr=1e-12)
    tuned = fit(ws, cfg, init=fitted)
    assert tuned.pre is fitted.pre and tuned.model is not fitted.model
    _same_logits(tuned.predict(ws), fitted.predict(ws), atol=1e-5)  # lr ~0: the same predictor
    for k, v in fitted.model.state_dict().items():
        assert torch.equal(v, state[k])
    tr, va, info = split_validation(ws, cfg.val_fraction, cfg.seed)
    assert tuned.extra["validation"]["groups"] == info["groups"] and tuned.summary["epochs_run"] == 2
    again = fit(ws, dataclasses.replace(fitted.cfg, epochs=2), init=fitted)
    same = fit(ws, dataclasses.replace(fitted.cfg, epochs=2), init=fitted)
    _same_logits(again.predict(ws), same.predict(ws))  # deterministic
    with pytest.raises(ValueError, match="cfg differs from init.cfg in: model='edge-max'"):
        fit(ws, dataclasses.replace(fitted.cfg, model="edge-max"), init=fitted)
    with pytest.raises(ValueError, match="level_names"):
        fit(dataclasses.replace(ws, level_names=["a", "b", "c", "d"]), fitted.cfg, init=fitted)


def test_fit_init_resumes(fitted, ws, tmp_path):
    """A fine-tune stopped after 1 epoch and resumed to 3 equals the 3-epoch fine-tune; another init is refused."""
    cfg = dataclasses.replace(fitted.cfg, epochs=3)
    full = fit(ws, cfg, init=fitted)
    fit(ws, dataclasses.replace(cfg, epochs=1), init=fitted, out_dir=tmp_path / "ft")
    resumed = fit(ws, cfg, init=fitted, out_dir=tmp_path / "ft", resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    _same_logits(resumed.predict(ws), full.predict(ws))
    with pytest.raises(ValueError, match="another init model"):
        fit(ws, cfg, init=resumed, out_dir=tmp_path / "ft", resume=True)
    with pytest.raises(ValueError, match="another init model"):
        fit(ws, cfg, out_dir=tmp_path / "ft", resume=True)


def test_start_is_kept_when_fine_tuning_scores_lower(fitted, ws):
    """A fine-tune that wrecks the model (huge lr) loses to epoch 0: the pruned model is returned, masks folded."""
    sparse, rep = prune(fitted, ws, method="unstructured", amount=0.3, epochs=1, lr=50.0)
    assert rep["val_finetuned"]["score"] < rep["val_pruned"]["score"] and not rep["finetune_kept"]
    assert rep["val_after"] == rep["val_pruned"] and sparse.summary["kept"].startswith("start")
    assert abs(weight_sparsity(sparse.model) - 0.3) < 0.01
    assert not any(k.endswith(("_orig", "_mask")) for k in sparse.model.state_dict())
