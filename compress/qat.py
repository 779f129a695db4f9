"""Quantization-aware fine-tuning (QAT) for `painhelm compress`.

The int8 export (``compress/export.py``) quantizes a float model after training: weights
per output channel, symmetric (scale = max|w| / 127, codes -127..127), and every activation
per tensor, asymmetric (scale = (max - min) / 255 over the calibration set's min/max, zero
included). QAT fine-tunes the model while it sees that rounding, so the weights settle where
int8 costs little accuracy::

    from painhelm.compress.qat import qat_finetune

    tuned, report = qat_finetune(fitted, train_trials, epochs=5)
    export_tflite(tuned.model, calib_images, "runs/compress/export")   # the usual static int8

During the fine-tune (one ``fit(init=...)`` with the usual validation split and early
stopping) every Conv1d, Conv2d and Linear layer:

- fake-quantizes its weight per output channel as above, and
- fake-quantizes its output per tensor with the running min/max it has observed on the
  training batches (the first layer also its input, the images), after a calibration pass
  over the training part so that no range starts empty.

The rounding is skipped in the backward pass (straight-through estimator; activations
outside the observed range get no gradient). Element-wise ops (LSTM gates, attention
products, pooling) are not fake-quantized; the export still quantizes them.

Afterwards the fake quantization is removed: the result is a plain float PainNet with the
same config (it saves, loads and exports as any model) whose weights lie exactly on their
int8 grid, so the export's per-channel weight quantization no longer changes them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..train.fit import Fitted
from .prune import _finetune, _with_step, finetune_config, head_scores, validation_scores, validation_split

logger = logging.getLogger(__name__)

QMIN, QMAX = -128, 127  # int8 activations
WMAX = 127  # int8 weights: symmetric narrow range -127..127, as ai-edge-quantizer and TFLite use


# --- fake quantization ---------------------------------------------------------------------------

def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to its per-output-channel symmetric int8 grid (scale = max|w_c| / 127).

    The gradient passes straight through (every value lies inside the grid's range).
    """
    bound = w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-9)  # (out,)
    scale = (bound / WMAX).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -WMAX, WMAX)


def activation_qparams(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of per-tensor asymmetric int8 over [min(lo, 0), max(hi, 0)]."""
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp(hi - lo, min=1e-9) / (QMAX - QMIN)
    zero = torch.round(QMIN - lo / scale).to(torch.int32)
    return scale.float(), zero


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization of an activation, with a running min/max.

    In training mode the range grows to cover every batch seen; in eval mode it is fixed.
    Until something has been observed it passes the tensor through. Its buffers are not
    saved (``persistent=False``), so a model carrying it has a plain model's state dict.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("lo", torch.tensor(float("inf")), persistent=False)
        self.register_buffer("hi", torch.tensor(float("-inf")), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.lo = torch.minimum(self.lo, x.min())
                self.hi = torch.maximum(self.hi, x.max())
        if not bool(torch.isfinite(self.lo)):
            return x
        scale, zero = activation_qparams(self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, QMIN, QMAX)


class _QATLayer:
    """Mixed into a Conv/Linear subclass: fake-quantized weight, input (first layer) and output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "in_fq" in self._modules:
            x = self.in_fq(x)
        return self.out_fq(self._forward_with(x, fake_quant_weight(self.weight)))


class QATConv1d(_QATLayer, nn.Conv1d):
    def _forward_with(self, x, w):
        return self._conv_forward(x, w, self.bias)


class QATConv2d(_QATLayer, nn.Conv2d):
    def _forward_with(self, x, w):
        return self._conv_forward(x, w, self.bias)


class QATLinear(_QATLayer, nn.Linear):
    def _forward_with(self, x, w):
        return F.linear(x, w, self.bias)


_QAT = {nn.Conv1d: QATConv1d, nn.Conv2d: QATConv2d, nn.Linear: QATLinear}
_FLOAT = {v: k for k, v in _QAT.items()}


def attach_fake_quant(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose Conv1d/Conv2d/Linear layers fake-quantize (same parameters and state dict)."""
    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if type(m) in _QAT]
    if not layers:
        raise ValueError("the model has no Conv1d, Conv2d or Linear layer to quantize")
    for m in layers:
        m.__class__ = _QAT[type(m)]  # same attributes; only forward changes
        m.out_fq = ActFakeQuant()
    layers[0].in_fq = ActFakeQuant()  # the images: the export's int8 input
    return model


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Turn the QAT layers of ``model`` back into plain ones, weights rounded to their int8 grid (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if type(m) in _FLOAT:
                m.weight.copy_(fake_quant_weight(m.weight))
                for name in ("in_fq", "out_fq"):
                    if name in m._modules:
                        del m._modules[name]
                m.__class__ = _FLOAT[type(m)]
    return model


@torch.no_grad()
def observe(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> None:
    """Let every activation quantizer of ``model`` see ``images`` (training mode, no gradient)."""
    was = model.training
    model.train()
    for i in range(0, len(images), batch_size):
        model(torch.from_numpy(images[i : i + batch_size]))
    model.train(was)


def weight_grid_error(model: nn.Module) -> float:
    """Largest change per-channel int8 rounding would make to a conv/linear weight (0: on the grid)."""
    with torch.no_grad():
        return max(float((m.weight - fake_quant_weight(m.weight)).abs().max())
                   for m in model.modules() if isinstance(m, tuple(_QAT)))


# --- int8 check through the real export -------------------------------------------------------------

def int8_scores(fitted: Fitted, images: np.ndarray, trials, val_idx: np.ndarray, calib: np.ndarray,
                out_dir=None) -> dict:
    """Export ``fitted.model`` to full-int8 TFLite (``export_tflite``) and score it on ``val_idx``.

    Returns the validation scores of the int8 model (``acc_<head>``, ``bacc_<head>``,
    ``score``), ``agreement`` (share of validation trials where the int8 argmax equals the
    float argmax, per head: ``agree_<head>``) and ``tflite`` (the file; in a temporary
    folder unless ``out_dir`` is given).
    """
    from .export import TFLiteRunner, export_tflite

    with tempfile.TemporaryDirectory() as tmp:
        res = export_tflite(fitted.model, calib, out_dir or tmp, min_agree=0.0)
        level, location = TFLiteRunner(res["int8"]).predict(images[val_idx])
    q = {"level": level, "location": location}
    ref = fitted.predict_images(images[val_idx])
    scores = head_scores(q, trials, val_idx, fitted.heads)
    for h in fitted.heads:
        scores[f"agree_{h}"] = float(np.mean(q[h].argmax(1) == ref[h].argmax(1)))
    scores["tflite"] = res["int8"] if out_dir else None
    return scores


# --- the entry point ---------------------------------------------------------------------------------

def qat_finetune(fitted: Fitted, train_trials, *, epochs: int, seed: int | None = None, lr: float | None = None,
                 compare_int8: bool = False, n_calib: int = 256, progress: bool = False) -> tuple[Fitted, dict]:
    """Quantization-aware fine-tuning of a trained predictor; returns a plain float model for the int8 export.

    Parameters
    ----------
    fitted : Fitted
        The trained (possibly pruned) predictor; it is not changed.
    train_trials : Trials | BandPowerTrials
        The training trials (never test data): calibration, fine-tuning, and the
        validation split ``fit`` draws from them for early stopping and the report.
    epochs : int
        Fine-tuning epochs, at least 1.
    seed : int | None
        Seed of the fine-tune and of its validation split; None = the model's ``cfg.seed``.
    lr : float | None
        Fine-tuning learning rate; None = a tenth of the model's ``cfg.lr`` (the weights
        only need to settle on the grid).
    compare_int8 : bool
        Also export the model before and after QAT to full-int8 TFLite (``export_tflite``,
        calibrated on up to ``n_calib`` images of the training part) and score both on the
        validation split: post-training quantization vs QAT. About 15 s per export.
    n_calib : int
        Calibration images for ``compare_int8``.
    progress : bool
        Show the fine-tune's progress bar.

    Returns
    -------
    tuned : Fitted
        A plain float PainNet (no fake quantization, same config) with every conv/linear
        weight on its per-channel int8 grid, the same preprocessing, and
        ``extra["compression"]`` recording this step.
    report : dict
        ``val_before`` (float model), ``val_fake_quant_before`` (the model under fake
        quantization before training: simulated post-training int8), ``val_fake_quant_after``
        (the best QAT epoch, what early stopping chose on) and ``val_after`` (the returned
        float model), each ``acc_<head>``, ``bacc_<head>``, ``score``; ``validation`` (the
        split); ``weight_grid_error`` (0.0: on the grid); ``finetune_epochs``,
        ``finetune_best_epoch``, ``finetune_seconds``, ``finetune_kept`` (False when the
        model before QAT scored higher under fake quantization: then its weights, rounded to
        the grid, are returned), ``seconds``; with ``compare_int8``
        also ``int8_before`` and ``int8_after`` (scores of the exported int8 models and
        ``agree_<head>``, their argmax agreement with the float model).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1 for quantization-aware training, got {epochs!r}")
    if not isinstance(n_calib, int) or n_calib < 1:
        raise ValueError(f"n_calib must be an int >= 1, got {n_calib!r}")
    cfg = finetune_config(fitted, epochs, seed, fitted.cfg.lr / 10 if lr is None else lr)
    t0 = time.monotonic()
    images = fitted.images(train_trials)
    train_idx, val_idx, split = validation_split(fitted, train_trials, cfg)
    base = fitted.model.cpu().eval()
    report = {"validation": split, "val_before": validation_scores(fitted, images, train_trials, val_idx)}

    qmodel = attach_fake_quant(base)
    observe(qmodel, images[train_idx])  # the running ranges start from the training part
    qmodel.eval()
    start = _with_step(fitted, qmodel, {"step": "qat", "epochs": epochs, "lr": cfg.lr})
    tuned, report["val_fake_quant_before"], report["val_fake_quant_after"], report["finetune_kept"] = _finetune(
        start, train_trials, cfg, epochs, progress, images, val_idx)
    plain = strip_fake_quant(tuned.model).eval()
    tuned = dataclasses.replace(tuned, model=plain)
    report.update({
        "val_after": validation_scores(tuned, images, train_trials, val_idx),
        "weight_grid_error": weight_grid_error(plain),
        "finetune_epochs": int(tuned.summary.get("epochs_run", 0)),
        "finetune_best_epoch": tuned.summary.get("best_epoch"),
        "finetune_seconds": float(tuned.summary.get("seconds", 0.0)),
    })
    if compare_int8:
        calib = images[train_idx[np.linspace(0, len(train_idx) - 1, min(n_calib, len(train_idx))).astype(int)]]
        report["int8_before"] = int8_scores(fitted, images, train_trials, val_idx, calib)
        report["int8_after"] = int8_scores(tuned, images, train_trials, val_idx, calib)
    report["seconds"] = round(time.monotonic() - t0, 3)
    logger.info("qat: val score float %.3f, fake-quant %.3f -> %.3f, float after %.3f",
                report["val_before"]["score"], report["val_fake_quant_before"]["score"],
                report["val_fake_quant_after"]["score"], report["val_after"]["score"])
    return tuned, report
