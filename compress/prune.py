"""Pruning for `painhelm compress`: structured channel pruning and unstructured magnitude pruning.

Both prune a trained predictor (a :class:`~painhelm.train.fit.Fitted`), fine-tune it with the
one training loop (``fit(..., init=...)``) on the training trials, and report parameters,
MACs and validation accuracy before and after::

    from painhelm.compress.prune import prune

    small, report = prune(fitted, train_trials, method="structured", amount=0.5, epochs=10)
    small.save("runs/compress/pruned")      # Fitted.load rebuilds it from its own config

``structured``
    torch-pruning removes whole channels for real: ``amount`` of the output channels of the
    edge encoder's conv1 and conv2 and of its frame FC features (D), chosen by the L2
    magnitude of each channel's coupled weights (torch-pruning's group magnitude
    importance). The layers that consume them (conv2, the frame FC, the aggregator's input)
    shrink with them; the LSTM's hidden size, the attention, the temporal conv's kernels
    and the heads' outputs are left alone. The smaller model has a config of its own
    (``conv1``, ``conv2``, ``frame_features``), so it saves, loads and exports as any zoo
    model. Edge models only.
``unstructured``
    ``torch.nn.utils.prune`` zeroes the ``amount`` of all conv and linear weights (biases
    kept) with the smallest magnitude, globally over the layers. The masks stay on during
    fine-tuning, so pruned weights stay zero, and are then made permanent: the model keeps
    its shape (dense kernels compute as many MACs) but has that many zero weights. Any
    zoo model.

Accuracy is measured on the validation split that ``fit`` draws from the training trials
(``split_validation``: whole subjects when there are 3 or more), never on test data. With
the seed the model was trained with (the default) and the same training trials this is the
split the model was early-stopped on, so its trials were never trained on; note that the
fine-tune early-stops on it too.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import numpy as np
import torch
import torch.nn as nn

from ..train.dataset import UNLABELLED
from ..train.fit import Fitted, balanced_accuracy, fit, split_validation
from ..train.model import PainNet, count_macs, count_params, model_from_config

logger = logging.getLogger(__name__)

METHODS = ("structured", "unstructured")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)  # the layers with prunable weights


# --- shared by prune and qat: the validation split, scores and sizes ---------------------------

def finetune_config(fitted: Fitted, epochs: int, seed: int | None, lr: float | None):
    """``fitted.cfg`` with the fine-tune's epochs, seed (None: the model's own) and lr (None: the same)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0 (0 = no fine-tuning), got {epochs!r}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive or None, got {lr!r}")
    cfg = fitted.cfg
    if not cfg.val_fraction > 0:
        raise ValueError("compress measures accuracy on fit's validation split, but the model's "
                         f"val_fraction is {cfg.val_fraction}; it must be > 0")
    return dataclasses.replace(cfg, epochs=max(epochs, 1), seconds=None,
                               seed=cfg.seed if seed is None else int(seed), lr=cfg.lr if lr is None else float(lr))


def head_scores(logits: dict, trials, idx: np.ndarray, heads: list[str]) -> dict:
    """Accuracy and balanced accuracy per labelled head of ``logits`` of the trials ``idx``.

    Returns ``{"acc_<head>": float, "bacc_<head>": float, ..., "score": mean bacc}``.
    """
    rec, baccs = {}, []
    for h in heads:
        truth, pred = getattr(trials, h)[idx], np.asarray(logits[h]).argmax(1)
        lab = truth != UNLABELLED
        if lab.any():
            rec[f"acc_{h}"] = float(np.mean(pred[lab] == truth[lab]))
            rec[f"bacc_{h}"] = balanced_accuracy(truth, pred)
            baccs.append(rec[f"bacc_{h}"])
    rec["score"] = float(np.mean(baccs)) if baccs else float("nan")
    return rec


def validation_scores(fitted: Fitted, images: np.ndarray, trials, val_idx: np.ndarray) -> dict:
    """`head_scores` of ``fitted``'s float logits of ``images[val_idx]`` (the validation trials)."""
    return head_scores(fitted.predict_images(images[val_idx]), trials, val_idx, fitted.heads)


def validation_split(fitted: Fitted, trials, cfg) -> tuple[np.ndarray, np.ndarray, dict]:
    """``split_validation`` as ``fit`` draws it under ``cfg``, plus whether it is the model's own split."""
    train_idx, val_idx, split = split_validation(trials, cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0:
        raise ValueError(f"the validation split of {len(trials)} training trials is empty")
    own = fitted.extra.get("validation", {})
    same = (split["by"] != "trials" and own.get("by") == split["by"] and own.get("groups") == split["groups"])
    return train_idx, val_idx, {**split, "n_trials": int(len(val_idx)), "same_as_training": bool(same)}


def nonzero_params(model: nn.Module) -> int:
    """Trainable parameters that are not exactly zero (a model without pruning masks)."""
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters() if p.requires_grad))


def _input_shape(fitted: Fitted) -> tuple:
    pre = fitted.pre
    return (1, pre.n_frames, len(pre.bands), pre.image_size, pre.image_size)


def _with_step(fitted: Fitted, model: nn.Module, step: dict) -> Fitted:
    """``fitted`` around ``model``, with ``step`` appended to ``extra["compression"]`` (saved in config.json)."""
    extra = {**fitted.extra, "compression": [*fitted.extra.get("compression", []), step]}
    return dataclasses.replace(fitted, model=model, extra=extra)


def _finetune(start: Fitted, trials, cfg, epochs: int, progress: bool, images: np.ndarray,
              val_idx: np.ndarray) -> tuple[Fitted, dict, dict, bool]:
    """``fit(init=start)`` for ``epochs`` epochs, with ``start`` counted as epoch 0.

    ``fit`` keeps its best epoch by validation score; here the starting point competes
    too: it is kept when it scores strictly higher than the best fine-tuned epoch (a
    fine-tune of a model already early-stopped on this split often cannot beat it).

    Returns
    -------
    result : Fitted
        The fine-tuned predictor, or one around ``start.model`` (``summary["kept"]`` says which).
    start_scores, tuned_scores : dict
        `validation_scores` of the start and of the best fine-tuned epoch.
    finetuned : bool
        Whether ``result`` holds the fine-tuned weights.
    """
    start_scores = validation_scores(start, images, trials, val_idx)
    if epochs == 0:
        summary = {"epochs_run": 0, "stopped": "epochs", "seconds": 0.0, "kept": "start (epochs=0)"}
        return dataclasses.replace(start, history=[], summary=summary), start_scores, start_scores, False
    tuned = fit(trials, cfg, progress=progress, init=start)
    tuned_scores = validation_scores(tuned, images, trials, val_idx)
    if start_scores["score"] > tuned_scores["score"]:
        summary = {**tuned.summary, "kept": "start (it scored higher on validation than every fine-tuned epoch)"}
        return dataclasses.replace(tuned, model=start.model, summary=summary), start_scores, tuned_scores, False
    return dataclasses.replace(tuned, summary={**tuned.summary, "kept": "fine-tuned"}), start_scores, tuned_scores, True


# --- structured: torch-pruning on the edge encoder ------------------------------------------------

def _outputs(out):
    """torch-pruning traces from these tensors: both heads' logits."""
    logits, _ = out
    return [logits["level"], logits["location"]]


def _ensure_flatten_mapping(dg, cnn) -> None:
    """Make conv2's channel c map to the frame FC's inputs c*S..c*S+S-1 (S = pooled pixels).

    torch-pruning infers this flatten from the reshape before the FC, but skips every
    reshape once any Linear sees a 3-D input (the attention score does, over (B, T, Hd)),
    so the FC would lose one input per channel instead of S. Then its reshape rule is
    applied to that one reshape, and the result is checked either way.
    """
    import torch_pruning as tp
    from torch_pruning import ops
    from torch_pruning.dependency.index_mapping import update_reshape_index_mapping

    side = cnn.fc.in_features // cnn.conv2.out_channels

    def fc_inputs_of_channel0():
        group = dg.get_pruning_group(cnn.conv2, tp.prune_conv_out_channels, idxs=[0])
        return sum(len(it.idxs) for it in group
                   if it.dep.target.module is cnn.fc and it.dep.handler.__name__ == "prune_in_channels")

    if fc_inputs_of_channel0() != side:
        old, dg._2d_4d = dg._2d_4d, True
        try:
            for node in dg.module2node[cnn.fc].inputs:
                if node.type == ops.OPTYPE.RESHAPE:
                    update_reshape_index_mapping(dg, node)
        finally:
            dg._2d_4d = old
    got = fc_inputs_of_channel0()
    if got != side:
        raise RuntimeError(f"torch-pruning maps one conv2 channel to {got} frame-FC inputs, expected {side}")


def _check_structured(model: nn.Module) -> None:
    cfg = getattr(model, "cfg", None)
    if not isinstance(model, PainNet) or cfg.encoder != "edge":
        what = f"{cfg.name!r} (encoder {cfg.encoder!r})" if isinstance(model, PainNet) else type(model).__name__
        raise ValueError(f"structured pruning supports the edge models (painnet, edge-lstm-attn, edge-lstm, "
                         f"edge-max, edge-conv1d, edge-mixed), not {what}; use method='unstructured'")


def prune_channels(model: PainNet, amount: float, example: torch.Tensor) -> tuple[PainNet, dict]:
    """Remove ``amount`` of the channels of conv1, conv2 and the frame FC of an edge PainNet.

    Parameters
    ----------
    model : PainNet
        An edge model (``cfg.encoder == "edge"``); it is not changed.
    amount : float
        Share of each layer's output channels removed, in (0, 1); at least one stays.
    example : tensor, shape (n, n_frames, n_bands, G, G)
        Images for tracing the graph and for checking the result.

    Returns
    -------
    pruned : PainNet
        A fresh model built from its new config (``conv1``, ``conv2``, ``frame_features``)
        with the kept weights, in eval mode.
    info : dict
        ``{"widths": {layer: [before, after]}, "removed": {layer: [channel indices]}}``.
    """
    import torch_pruning as tp

    _check_structured(model)
    model = copy.deepcopy(model).cpu().eval()
    cnn = model.cnn
    targets = {"cnn.conv1": cnn.conv1, "cnn.conv2": cnn.conv2, "cnn.fc": cnn.fc}
    widths = {k: [m.weight.shape[0]] for k, m in targets.items()}
    keep_alone = [m for m in model.modules() if isinstance(m, _LAYERS) and all(m is not t for t in targets.values())]
    pruner = tp.pruner.MetaPruner(model, example[:1], tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=amount, ignored_layers=keep_alone, output_transform=_outputs)
    _ensure_flatten_mapping(pruner.DG, cnn)
    pruner.step()
    history = {name: sorted(int(i) for i in idxs) for name, is_out, idxs in pruner.DG.pruning_history() if is_out}
    removed = {k: history.get(k, []) for k in targets}
    cfg = dataclasses.replace(model.cfg, conv1=cnn.conv1.out_channels, conv2=cnn.conv2.out_channels,
                              frame_features=cnn.fc.out_features)
    pruned = model_from_config(cfg.to_dict())
    pruned.load_state_dict(model.state_dict())  # strict: every shape must match the new config
    pruned.eval()
    for k, m in targets.items():
        widths[k].append(getattr(pruned.cnn, k.split(".")[1]).weight.shape[0])
    return pruned, {"widths": widths, "removed": removed}


def zero_channels(model: PainNet, removed: dict) -> PainNet:
    """A copy of ``model`` whose ``removed`` output channels give 0 (ReLU follows each layer).

    It computes what the structurally pruned model computes before fine-tuning: a check
    that torch-pruning removed matching inputs downstream.
    """
    model = copy.deepcopy(model).eval()
    mods = dict(model.named_modules())
    with torch.no_grad():
        for name, idxs in removed.items():
            mods[name].weight[idxs] = 0
            if mods[name].bias is not None:
                mods[name].bias[idxs] = 0
    return model


# --- unstructured: global magnitude masks ---------------------------------------------------------

def mask_weights(model: nn.Module, amount: float) -> nn.Module:
    """A copy of ``model`` with ``amount`` of all conv/linear weights masked to zero (global L1).

    The masks are ``torch.nn.utils.prune`` hooks: they stay applied while the copy is
    trained. `make_permanent` removes them. The masked weights are computed without a
    graph here, so the copy can be deep-copied (as ``fit(init=...)`` does) until a forward
    pass with gradients recomputes them.
    """
    from torch.nn.utils import prune as tprune

    model = copy.deepcopy(model)
    params = [(m, "weight") for m in model.modules() if isinstance(m, _LAYERS)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=float(amount))
    with torch.no_grad():
        for m, name in params:
            setattr(m, name, getattr(m, name + "_orig") * getattr(m, name + "_mask"))
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (``weight = weight_orig * weight_mask``), in place."""
    from torch.nn.utils import prune as tprune

    for m in model.modules():
        if hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero entries among all conv/linear weights."""
    ws = [m.weight for m in model.modules() if isinstance(m, _LAYERS)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


# --- the entry point ---------------------------------------------------------------------------------

def prune(fitted: Fitted, train_trials, *, method: str, amount: float, epochs: int, seed: int | None = None,
          lr: float | None = None, progress: bool = False) -> tuple[Fitted, dict]:
    """Prune a trained predictor, fine-tune it on the training trials, report the change.

    Parameters
    ----------
    fitted : Fitted
        The trained predictor; it is not changed.
    train_trials : Trials | BandPowerTrials
        The training trials (never test data): the fine-tune trains on them, and the
        accuracies are measured on the validation split ``fit`` draws from them.
    method : "structured" | "unstructured"
        Remove channels of the edge encoder (torch-pruning), or zero weights (global
        magnitude). See the module docstring.
    amount : float
        In (0, 1). structured: share of the output channels of conv1, conv2 and the frame
        FC removed (parameters removed overall are reported); unstructured: share of all
        conv/linear weights set to zero.
    epochs : int
        Fine-tuning epochs (early stopping on the validation split as in ``fit``); 0 = none.
    seed : int | None
        Seed of the fine-tune and of its validation split; None = the model's own
        ``cfg.seed``, so the split is the one the model was trained with.
    lr : float | None
        Fine-tuning learning rate; None = the model's ``cfg.lr``.
    progress : bool
        Show the fine-tune's progress bar.

    Returns
    -------
    pruned : Fitted
        The pruned, fine-tuned predictor: a plain PainNet (no masks) whose config rebuilds
        it, the same preprocessing, and ``extra["compression"]`` recording this step.
    report : dict
        ``method``, ``amount``; ``params_before``/``params_after`` (trainable parameters,
        dense) and ``params_removed`` (share); ``nonzero_params_before``/``_after`` and
        ``nonzero_removed`` (what unstructured pruning removes); ``macs_before``/``_after``
        (dense, per decision: unstructured leaves them unchanged); ``val_before``,
        ``val_pruned`` (no fine-tune yet), ``val_finetuned`` (the best fine-tuned epoch)
        and ``val_after`` (the returned model), each ``acc_<head>``, ``bacc_<head>``,
        ``score`` (mean bacc); ``validation`` (the split); ``weight_sparsity``
        (unstructured) or ``widths``/``removed`` (structured); ``finetune_epochs``,
        ``finetune_best_epoch``, ``finetune_seconds``, ``finetune_kept`` (False when the
        pruned model before fine-tuning scored higher and is returned instead), ``seconds``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount < 1:
        raise ValueError(f"amount must be a number in (0, 1) (share removed), got {amount!r}")
    if method == "structured":
        _check_structured(fitted.model)
    cfg = finetune_config(fitted, epochs, seed, lr)
    t0 = time.monotonic()
    images = fitted.images(train_trials)
    _, val_idx, split = validation_split(fitted, train_trials, cfg)
    shape = _input_shape(fitted)
    base = fitted.model.cpu().eval()
    report = {"method": method, "amount": float(amount),
              "params_before": count_params(base), "nonzero_params_before": nonzero_params(base),
              "macs_before": count_macs(base, shape), "validation": split,
              "val_before": validation_scores(fitted, images, train_trials, val_idx)}

    example = torch.from_numpy(images[val_idx[:8]])
    if method == "structured":
        model, info = prune_channels(base, amount, example)
        with torch.no_grad():  # before fine-tuning, pruning = zeroing the removed channels
            got, ref = model(example)[0], zero_channels(base, info["removed"])(example)[0]
        err = max(float((got[k] - ref[k]).abs().max()) for k in got)
        if err > 1e-4:
            raise RuntimeError(f"structured pruning changed the model beyond removing channels (max error {err:.3g})")
        report.update(info)
    else:
        model = mask_weights(base, amount)
    step = {"step": "prune", "method": method, "amount": float(amount), "epochs": epochs}
    start = _with_step(fitted, model, step)
    tuned, report["val_pruned"], report["val_finetuned"], report["finetune_kept"] = _finetune(
        start, train_trials, cfg, epochs, progress, images, val_idx)
    final = make_permanent(tuned.model).eval()
    if method == "structured":  # a fresh module from its own config: exactly what Fitted.load builds
        rebuilt = model_from_config(final.cfg.to_dict())
        rebuilt.load_state_dict(final.state_dict())
        final = rebuilt.eval()
    tuned = dataclasses.replace(tuned, model=final)

    report.update({
        "params_after": count_params(final), "nonzero_params_after": nonzero_params(final),
        "macs_after": count_macs(final, shape),
        "val_after": validation_scores(tuned, images, train_trials, val_idx),
        "finetune_epochs": int(tuned.summary.get("epochs_run", 0)),
        "finetune_best_epoch": tuned.summary.get("best_epoch"),
        "finetune_seconds": float(tuned.summary.get("seconds", 0.0)),
    })
    report["params_removed"] = 1 - report["params_after"] / report["params_before"]
    report["nonzero_removed"] = 1 - report["nonzero_params_after"] / report["nonzero_params_before"]
    if method == "unstructured":
        report["weight_sparsity"] = weight_sparsity(final)
    report["seconds"] = round(time.monotonic() - t0, 3)
    logger.info("prune %s %.2f: params %d -> %d, nonzero %d -> %d, MACs %d -> %d, val score %.3f -> %.3f",
                method, amount, report["params_before"], report["params_after"], report["nonzero_params_before"],
                report["nonzero_params_after"], report["macs_before"], report["macs_after"],
                report["val_before"]["score"], report["val_after"]["score"])
    return tuned, report
