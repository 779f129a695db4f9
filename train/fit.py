"""Fit one model on a table of trials: preprocessing + model + training loop, and save/load it.

CONTRACT (issue 5; implemented by the training work, used by evaluation):

    cfg = TrainConfig(model="painnet", n_frames=4, image_size=16, epochs=80, seed=0, ...)
    fitted = fit(train_trials, cfg, progress=True, out_dir=None, resume=False)
    logits = fitted.predict(test_trials)     # {"level": (n, n_levels), "location": (n, n_loc)} float
    fitted.save(model_dir); Fitted.load(model_dir)

``fit`` draws its validation split (early stopping) from the training trials only, by
subject (or by session when there is one subject); the test data never enter it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Every knob of one training run (a TOML config file sets these; CLI overrides win)."""

    model: str = "painnet"


def fit(trials, cfg: TrainConfig, *, progress: bool = False, out_dir=None, resume: bool = False):
    raise NotImplementedError("train.fit.fit is being written (issue 5)")
