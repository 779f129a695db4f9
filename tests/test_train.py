"""Synthetic data, features and the model: shapes, determinism and that training learns."""

import numpy as np
import torch

from painhelm.train.features import Preprocessing
from painhelm.train.model import PainNet, PainNetConfig
from painhelm.train.synthetic import make_synthetic
from painhelm.train.trainer import predict, train_model


def test_synthetic_is_deterministic_and_labelled():
    """The same seed gives the same windows; all levels, locations and subjects appear."""
    a, b = make_synthetic(n_subjects=2, windows_per_class=2, seed=3), make_synthetic(n_subjects=2, windows_per_class=2, seed=3)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.data.shape == (2 * 4 * 2 * 2, 16, 256)
    assert set(a.level) == {0, 1, 2, 3} and set(a.location) == {0, 1} and set(a.subject) == {"S01", "S02"}


def test_pain_suppresses_alpha():
    """Band powers follow the documented physiology: posterior alpha falls as pain level rises."""
    ws = make_synthetic(n_subjects=2, windows_per_class=6)
    pre = Preprocessing.fit(ws.data, ws.sfreq, ws.ch_names)
    from painhelm.train.dsp import band_powers

    # posterior electrodes: frontally, the 2 Hz bins of 0.5 s frames let the rising theta leak into alpha
    posterior = [ws.ch_names.index(ch) for ch in ("P3", "Pz", "P4", "O1", "Oz", "O2")]
    alpha = band_powers(ws.data, ws.sfreq, 4)[:, :, 1][:, :, posterior].mean(axis=(1, 2))
    means = [alpha[ws.level == lv].mean() for lv in range(4)]
    assert means == sorted(means, reverse=True)
    assert pre.images(ws.data[:3]).shape == (3, 4, 3, 16, 16)


def test_model_shapes_and_loss():
    """Two heads with the configured class counts; targets give one summed loss."""
    m = PainNet(PainNetConfig())
    logits, loss = m(torch.zeros(2, 4, 3, 16, 16), {"level": torch.tensor([0, 3]), "location": torch.tensor([1, 0])})
    assert logits["level"].shape == (2, 4) and logits["location"].shape == (2, 2) and loss.ndim == 0
    assert sum(p.numel() for p in m.parameters()) < 50_000


def test_training_learns_the_training_set():
    """A few seconds of training beat chance clearly on the training windows."""
    ws = make_synthetic(n_subjects=2, windows_per_class=6)
    pre = Preprocessing.fit(ws.data, ws.sfreq, ws.ch_names)
    x = pre.images(ws.data)
    model, hist = train_model(x, ws.level, ws.location, seconds=8, max_epochs=40, progress=False)
    p = predict(model, x)
    assert (p["level"].argmax(1) == ws.level).mean() > 0.5  # chance 0.25
    assert hist[-1]["loss"] < hist[0]["loss"]
