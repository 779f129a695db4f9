"""Shared fixtures: one small trained, exported and bundled model per test session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Keep the dataset / band-power cache of a test run out of the user's ~/.cache."""
    old = os.environ.get("PAINHELM_CACHE")
    os.environ["PAINHELM_CACHE"] = str(tmp_path_factory.mktemp("painhelm-cache"))
    yield
    if old is None:
        os.environ.pop("PAINHELM_CACHE", None)
    else:
        os.environ["PAINHELM_CACHE"] = old


@pytest.fixture(scope="session")
def synthetic4():
    """4 synthetic subjects x 8 classes x 3 windows (fit's validation: one whole subject)."""
    from painhelm.train.synthetic import make_synthetic

    return make_synthetic(n_subjects=4, windows_per_class=3, seed=2)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Train PainNet briefly on 3 synthetic subjects, export int8, write a bundle.

    Returns a dict with the bundle folder, the held-out windows and their labels, the
    host int8 runner (TensorFlow Lite Micro) and the host int8 logits of those windows.
    """
    from painhelm.compress.bundle import write_bundle
    from painhelm.compress.export import TFLMRunner, export_tflite, quantize_array
    from painhelm.train.features import Preprocessing
    from painhelm.train.synthetic import make_synthetic
    from painhelm.train.trainer import train_model

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny")
    ws = make_synthetic(n_subjects=3, windows_per_class=6, seed=1)
    train, test = ws.subset(ws.subject != "S03"), ws.subset(ws.subject == "S03")
    pre = Preprocessing.for_trials(train, n_frames=4, image_size=16)  # compact 16x16 for the helmet
    x_train, x_test = pre.images(train.data), pre.images(test.data)
    model, _ = train_model(x_train, train.level, train.location, seconds=5, max_epochs=15, progress=False)
    tfl = export_tflite(model, x_train[:64], out / "export")
    runner = TFLMRunner(tfl["int8"])  # the interpreter the helmet reproduces bit for bit
    bundle = write_bundle(out / "bundle", tfl["int8"], pre, ws.level_names, ws.location_names,
                          runner.input_scale, runner.input_zero_point)
    level_q, location_q = runner.predict_int8(quantize_array(x_test, runner.input_scale, runner.input_zero_point))
    return {"bundle": bundle, "test": test, "x_test": x_test, "runner": runner, "model": model,
            "level_q": level_q, "location_q": location_q, "sfreq": ws.sfreq, "pre": pre, "tflite": tfl["int8"]}
