"""Fit one model on a table of trials: preprocessing + model + training loop, and save/load it.

CONTRACT (issue 5; used by ``painhelm train``, evaluation, compress and flash):

    cfg = TrainConfig(model="painnet", n_frames=4, image_size=16, epochs=80, seed=0, ...)
    fitted = fit(train_trials, cfg, progress=True, out_dir=None, resume=False)
    tuned = fit(train_trials, replace(fitted.cfg, epochs=5), init=fitted)   # fine-tune (compress)
    logits = fitted.predict(test_trials)     # {"level": (n, n_levels), "location": (n, n_loc)} float
    fitted.save(model_dir); Fitted.load(model_dir)

``fit`` draws its validation split (early stopping) from the training trials only: whole
subjects when there are at least 3, else whole sessions when there are at least 3, else a
stratified random fraction of trials. The test data never enter it.

A model folder (``out_dir`` or :meth:`Fitted.save`) holds everything compress and flash
need (see ``docs/training.md``)::

    model.pt              {"model": state_dict, "model_name": str, "model_args": dict}
    config.json           TrainConfig, model config, dataset name, label names, heads, split
    preprocessing.npz     W, mean, std, pos (and clean when fitted) of the Preprocessing
    preprocessing.json    sfreq, ch_names, n_times, n_frames, image_size, bands, n_per_seg, norm
    history.json          one record per epoch and the early-stopping summary
    checkpoint.pt         (fit with out_dir only) the last epoch's full state, for resume
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import hash_arrays
from .dataset import UNLABELLED, BandPowerTrials, Trials, json_default
from .datasets import default_n_frames
from .features import NORMS, Preprocessing
from .model import build_model, joint_loss, model_from_config

logger = logging.getLogger(__name__)

HEADS = ("level", "location")
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
PREPROCESSING_NPZ = "preprocessing.npz"
PREPROCESSING_JSON = "preprocessing.json"
HISTORY_FILE = "history.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Every knob of one training run (a TOML config file sets these; CLI overrides win)."""

    model: str = "painnet"  # a name of the model zoo (train/model.py)
    model_args: dict = field(default_factory=dict)  # overrides of the model's own config
    n_frames: int | None = None  # frames per trial; None = the dataset's default
    image_size: int = 16  # topomap grid G; 16x16 keeps the helmet's arena small
    norm: str = "band"  # "band" or "channel" normalisation of log band powers
    clean: bool = False  # fit an ICA cleaning matrix on the training trials (raw Trials only)
    epochs: int = 80  # at most this many passes over the training split
    seconds: float | None = None  # time box of one fit call (None: no limit)
    batch_size: int = 32
    lr: float = 3e-3  # constant: resuming with more epochs must not change earlier steps
    weight_decay: float = 1e-4  # AdamW
    patience: int = 15  # stop after this many epochs without a better validation score
    val_fraction: float = 0.2  # share of training subjects (sessions, trials) held out; 0 = none
    class_weights: bool = True  # inverse class frequency weights in the loss
    seed: int = 0
    threads: int | None = None  # torch CPU threads during the fit; None = leave as is
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the allowed values and what was given."""
        def bad(name, allowed):
            raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")

        from .model import MODELS

        if self.model not in MODELS:
            bad("model", f"one of {sorted(MODELS)}")
        if not isinstance(self.model_args, dict):
            bad("model_args", "a table of model settings")
        if self.n_frames is not None and self.n_frames < 1:
            bad("n_frames", "at least 1 or None")
        if self.image_size < 4 or self.image_size % 4:
            bad("image_size", "a multiple of 4, at least 4")
        if self.norm not in NORMS:
            bad("norm", f"one of {NORMS}")
        if self.epochs < 1:
            bad("epochs", "at least 1")
        if self.seconds is not None and not self.seconds > 0:
            bad("seconds", "positive or None")
        if self.batch_size < 2:
            bad("batch_size", "at least 2")
        if not self.lr > 0:
            bad("lr", "positive")
        if self.weight_decay < 0:
            bad("weight_decay", "at least 0")
        if self.patience < 1:
            bad("patience", "at least 1")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", "in [0, 1)")
        if self.threads is not None and self.threads < 1:
            bad("threads", "at least 1 or None")
        if not (self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", '"auto", "cpu" or "cuda[:N]"')


# --- config from TOML / key=value ------------------------------------------------------

def _field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value, kind):
    """``value`` (from TOML or a ``key=value`` string) as the type of field ``name``."""
    args = typing.get_args(kind)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), kind) if args else kind
    if isinstance(value, str) and base is not str:
        text = value.strip()
        if optional and text.lower() in ("none", "null", ""):
            return None
        if base is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"{name} must be true or false, got {value!r}")
        if base is dict:
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{name} must be a JSON object, got {value!r}") from None
        else:
            try:
                return base(text)
            except ValueError:
                raise ValueError(f"{name} must be {base.__name__}, got {value!r}") from None
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ValueError(f"{name} must be {base.__name__}{' or none' if optional else ''}, got {value!r}")
    return value


def _scalar(text: str):
    """A ``model_args.KEY=VALUE`` value: JSON when it parses (numbers, true, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_dict(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping of field names (e.g. a parsed TOML file).

    An unknown key or a value of the wrong type raises ValueError naming it; keys not
    given keep their value in ``base`` (default: the defaults).
    """
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(types)}")
    current = asdict(base) if base is not None else {}
    current.update({k: _coerce(k, v, types[k]) for k, v in values.items()})
    return TrainConfig(**current)


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML config file (keys = TrainConfig fields), then apply ``key=value`` overrides.

    ``overrides`` are strings such as ``"epochs=20"``, ``"seconds=none"`` or
    ``"model_args.lstm_hidden=16"``; they are typed from the dataclass. Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for anything else wrong.
    """
    import tomllib

    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            values = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: not valid TOML: {e}") from None
    cfg = config_from_dict(values, base)
    sets: dict = {}
    model_args = dict(cfg.model_args)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key.startswith("model_args."):
            model_args[key[len("model_args."):]] = _scalar(text.strip())
        else:
            sets[key] = text
    if model_args != cfg.model_args:
        sets["model_args"] = model_args
    return config_from_dict(sets, cfg) if sets else cfg


# --- validation split and class weights -----------------------------------------------

def split_validation(trials: Trials | BandPowerTrials, val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Split training trials into a fitting part and a validation part (for early stopping).

    Whole subjects are held out when there are at least 3 subjects (``round(val_fraction
    * n_subjects)``, at least 1, at most all but one); else whole sessions when there are
    at least 3 (subject, session) pairs; else a random ``val_fraction`` of each
    (level, location) class. ``val_fraction=0`` holds out nothing.

    Returns
    -------
    train_idx, val_idx : array of int
        Indices into ``trials``, ascending.
    info : dict
        ``{"by": "subject" | "session" | "trials" | "none", "groups": [held-out names]}``.
    """
    n = len(trials)
    everything = np.arange(n)
    if val_fraction <= 0 or n < 2:
        return everything, everything[:0], {"by": "none", "groups": []}
    rng = np.random.default_rng([seed, 0x5EED])  # its own stream: the split does not move the shuffles
    for by, keys in (("subject", trials.subject),
                     ("session", trials.session_keys())):
        groups = np.unique(keys)
        if len(groups) >= 3:
            k = min(len(groups) - 1, max(1, int(round(val_fraction * len(groups)))))
            held = sorted(rng.choice(groups, size=k, replace=False).tolist())
            is_val = np.isin(keys, held)
            return everything[~is_val], everything[is_val], {"by": by, "groups": held}
    strata = trials.level * 10_000 + trials.location
    val = []
    for s in np.unique(strata):
        idx = everything[strata == s]
        val.extend(rng.permutation(idx)[: int(round(val_fraction * len(idx)))])
    if not val:
        val = [int(rng.integers(n))]
    is_val = np.isin(everything, val)
    return everything[~is_val], everything[is_val], {"by": "trials", "groups": []}


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse class frequency weights ``n / (n_present_classes * count_c)`` of labelled trials.

    Unlabelled trials (-1) are left out; a class without trials gets weight 0 (it never
    appears as a target). Balanced data give all ones.

    Parameters
    ----------
    labels : array of int, shape (n_trials,)
    n_classes : int

    Returns
    -------
    weights : array of float32, shape (n_classes,)
    """
    y = np.asarray(labels)
    y = y[y != UNLABELLED]
    counts = np.bincount(y, minlength=n_classes)[:n_classes].astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    if present.any():
        w[present] = counts.sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (unlabelled -1 left out); NaN when none."""
    keep = y_true != UNLABELLED
    y_true, y_pred = y_true[keep], y_pred[keep]
    if len(y_true) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


# --- the fitted predictor -----------------------------------------------------------------

def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")
    tmp.replace(path)


def save_preprocessing(pre: Preprocessing, folder: str | Path) -> None:
    """Write ``pre`` as ``preprocessing.npz`` (arrays) + ``preprocessing.json`` (the rest)."""
    folder = Path(folder)
    arrays = {"W": pre.W, "mean": pre.mean, "std": pre.std, "pos": np.asarray(pre.pos, np.float64)}
    if pre.clean is not None:
        arrays["clean"] = pre.clean
    tmp = folder / (PREPROCESSING_NPZ + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(folder / PREPROCESSING_NPZ)
    meta = {"sfreq": pre.sfreq, "ch_names": list(pre.ch_names), "n_times": pre.n_times,
            "n_frames": pre.n_frames, "image_size": pre.image_size,
            "bands": [list(b) for b in pre.bands], "n_per_seg": pre.n_per_seg, "norm": pre.norm,
            "clean": pre.clean is not None, "arrays": sorted(arrays)}
    _write_json(folder / PREPROCESSING_JSON, meta)


def load_preprocessing(folder: str | Path) -> Preprocessing:
    """Read what :func:`save_preprocessing` wrote."""
    folder = Path(folder)
    meta = json.loads((folder / PREPROCESSING_JSON).read_text())
    with np.load(folder / PREPROCESSING_NPZ, allow_pickle=False) as z:
        arr = {k: z[k] for k in z.files}
    return Preprocessing(sfreq=float(meta["sfreq"]), ch_names=list(meta["ch_names"]), n_times=int(meta["n_times"]),
                         n_frames=int(meta["n_frames"]), image_size=int(meta["image_size"]), W=arr["W"],
                         mean=arr["mean"], std=arr["std"], bands=tuple(tuple(b) for b in meta["bands"]),
                         pos=arr["pos"], n_per_seg=meta["n_per_seg"], norm=meta["norm"], clean=arr.get("clean"))


def _plain_state_dict(model: torch.nn.Module) -> dict:
    """CPU state dict with pruning masks folded in (``w = w_orig * w_mask``), so it loads into a plain model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for k in [k for k in state if k.endswith("_orig") and k[:-5] + "_mask" in state]:
        state[k[:-5]] = state.pop(k) * state.pop(k[:-5] + "_mask")
    return state


@dataclass
class Fitted:
    """A trained predictor: preprocessing + model + what it was trained on."""

    model: torch.nn.Module  # on the CPU, in eval mode
    pre: Preprocessing
    cfg: TrainConfig
    model_name: str
    level_names: list[str]
    location_names: list[str]
    heads: list[str]  # heads that had labels in training
    dataset: str = ""
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # best epoch / score, why training stopped, split
    extra: dict = field(default_factory=dict)  # class weights, trial counts, ...

    def images(self, trials: Trials | BandPowerTrials) -> np.ndarray:
        """Images (n, n_frames, n_bands, G, G) of ``trials`` through the fitted preprocessing."""
        if list(trials.ch_names) != list(self.pre.ch_names):
            raise ValueError(f"the model was trained on channels {self.pre.ch_names}, "
                             f"but the trials have {list(trials.ch_names)}")
        return self.pre.trial_images(trials).astype(np.float32)

    @torch.no_grad()
    def predict_images(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Float logits of images (n, F, C, G, G): ``{"level": (n, n_levels), "location": (n, n_loc)}``."""
        from .trainer import predict

        logits = predict(self.model, np.asarray(images, np.float32), batch_size)
        # a head without classes keeps one dummy output in the model; callers see (n, 0)
        sizes = {"level": len(self.level_names), "location": len(self.location_names)}
        return {k: v[:, : sizes[k]] if sizes[k] == 0 else v for k, v in logits.items()}

    def predict(self, trials: Trials | BandPowerTrials) -> dict[str, np.ndarray]:
        """Float logits of every trial: ``{"level": (n, n_levels), "location": (n, n_locations)}``."""
        return self.predict_images(self.images(trials))

    def save(self, folder: str | Path) -> Path:
        """Write the model folder (see the module docstring); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_preprocessing(self.pre, folder)
        state = _plain_state_dict(self.model)
        _atomic_torch_save({"model": state, "model_name": self.model_name,
                            "model_args": self.model.cfg.to_dict()}, folder / MODEL_FILE)
        _write_json(folder / HISTORY_FILE, {"epochs": self.history, **self.summary})
        _write_json(folder / CONFIG_FILE, {
            "format": FORMAT_VERSION, "train": asdict(self.cfg),
            "model": {"name": self.model_name, "config": self.model.cfg.to_dict()},
            "dataset": self.dataset, "level_names": list(self.level_names),
            "location_names": list(self.location_names), "heads": list(self.heads),
            "input_shape": [self.pre.n_frames, len(self.pre.bands), self.pre.image_size, self.pre.image_size],
            **self.extra})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Fitted":
        """Read a model folder written by :meth:`save` (or by :func:`fit` with ``out_dir``)."""
        folder = Path(folder)
        missing = [f for f in (MODEL_FILE, CONFIG_FILE, PREPROCESSING_NPZ, PREPROCESSING_JSON)
                   if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a model folder: {', '.join(missing)} missing")
        config = json.loads((folder / CONFIG_FILE).read_text())
        ckpt = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        model = model_from_config(dict(ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        model.eval()
        hist = json.loads((folder / HISTORY_FILE).read_text()) if (folder / HISTORY_FILE).is_file() else {}
        known = {"format", "train", "model", "dataset", "level_names", "location_names", "heads", "input_shape"}
        return cls(model=model, pre=load_preprocessing(folder), cfg=config_from_dict(config["train"]),
                   model_name=ckpt["model_name"], level_names=config["level_names"],
                   location_names=config["location_names"], heads=config["heads"], dataset=config["dataset"],
                   history=hist.pop("epochs", []), summary=hist,
                   extra={k: v for k, v in config.items() if k not in known})


def _atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` under a temporary name, then rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- fit --------------------------------------------------------------------------------------

def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device='auto' or 'cpu'")
    return torch.device(device)


def _digest(trials) -> str:
    """Hash of the training table, so resume refuses a checkpoint made on other data."""
    h = hashlib.sha256()
    lead = trials.data if isinstance(trials, Trials) else trials.logbp
    hash_arrays(h, (lead, trials.level, trials.location))
    h.update("|".join(trials.subject.tolist() + trials.session.tolist() + list(trials.ch_names)).encode())
    return h.hexdigest()


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of ``order``; a last batch of one joins the previous one (batch norm)."""
    parts = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [np.concatenate(parts[-2:])]
    return parts


@torch.no_grad()
def _evaluate(model, x, y, weights, heads, batch_size=256) -> dict:
    """Validation loss (weighted as in training), accuracy and balanced accuracy per head."""
    model.eval()
    parts = {k: [] for k in heads}
    for i in range(0, len(x), batch_size):
        logits, _ = model(x[i : i + batch_size])
        for k in heads:
            parts[k].append(logits[k])
    logits = {k: torch.cat(v) for k, v in parts.items()}
    loss = joint_loss(logits, {k: y[k] for k in heads}, weights)
    rec = {"val_loss": float(loss)}
    scores = []
    for k in heads:
        truth = y[k].cpu().numpy()
        pred = logits[k].argmax(1).cpu().numpy()
        lab = truth != UNLABELLED
        if lab.any():
            rec[f"val_acc_{k}"] = float(np.mean(pred[lab] == truth[lab]))
            rec[f"val_bacc_{k}"] = bacc = balanced_accuracy(truth, pred)
            scores.append(bacc)
    rec["val_score"] = float(np.mean(scores)) if scores else float("nan")
    return rec


def _better(rec: dict, best: dict) -> bool:
    """Higher mean balanced accuracy wins; a tie goes to the lower validation loss."""
    s, bs = rec["val_score"], best["score"]
    if math.isnan(s):  # no labelled validation trial: the loss decides
        return rec["val_loss"] < best["loss"]
    if s > bs + 1e-9:
        return True
    return abs(s - bs) <= 1e-9 and rec["val_loss"] < best["loss"]


class _Determinism:
    """Deterministic kernels and a fixed thread count during a fit; the old settings come back after."""

    def __init__(self, threads: int | None, device: torch.device):
        self.threads, self.device = threads, device

    def __enter__(self):
        self.old_threads = torch.get_num_threads()
        self.old_det = torch.are_deterministic_algorithms_enabled()
        self.old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.device.type == "cuda":
            # cuBLAS needs this to be deterministic; it only takes effect before its first use
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.old_threads)
        torch.use_deterministic_algorithms(self.old_det, warn_only=self.old_warn)
        return False


def fit(trials: Trials | BandPowerTrials, cfg: TrainConfig, *, progress: bool = False,
        out_dir: str | Path | None = None, resume: bool = False, init: Fitted | None = None,
        source: dict | None = None) -> Fitted:
    """Fit preprocessing and a model on training trials, with early stopping on a validation split.

    With ``init`` it fine-tunes instead: training starts from a deep copy of ``init.model``
    (architecture and weights, whatever module that is) and uses ``init.pre`` as it is.

    Parameters
    ----------
    trials : Trials | BandPowerTrials
        The training table; the test data must not be in it. Trials without a label for a
        head (-1) still train the other head.
    cfg : TrainConfig
        Model, features and optimisation settings.
    progress : bool
        Show a tqdm bar over epochs with the loss and the validation balanced accuracies.
    out_dir : path | None
        Model folder to write: a checkpoint after every epoch (``checkpoint.pt``, written
        atomically) and the model files at the end.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (needs ``out_dir``). The training data and
        every setting except ``epochs``, ``seconds``, ``patience``, ``threads`` and
        ``device`` must match the checkpoint's; the result equals an uninterrupted run.
    init : Fitted | None
        Start from this predictor: a deep copy of ``init.model`` is trained (``init`` is not
        changed) and ``init.pre`` is used unrefitted. Compress passes pruned or
        fake-quantized models this way (``dataclasses.replace(fitted, model=ready_model)``);
        the model must take this preprocessing's images and have the trials' classes. The
        settings that define the model and its input (``model``, ``model_args``,
        ``n_frames``, ``image_size``, ``norm``, ``clean``) must equal ``init.cfg``'s; the
        rest (epochs, lr, seed, ...) apply as usual, as do the validation split, class
        weights, early stopping, determinism and resume (the checkpoint remembers ``init``).
    source : dict | None
        Where ``trials`` came from (``dataset``, ``mapping``, ``task``), recorded as
        ``extra["data"]`` in config.json so compress and compare reload the same table.

    Returns
    -------
    fitted : Fitted
        The best validation epoch's weights (the last epoch's when nothing is held out).
    """
    if not isinstance(trials, (Trials, BandPowerTrials)):
        raise TypeError(f"trials must be Trials or BandPowerTrials, got {type(trials).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg.validate()
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the folder holding checkpoint.pt)")
    if len(trials) < 2:
        raise ValueError(f"need at least 2 training trials, got {len(trials)}")
    heads = [h for h in HEADS if getattr(trials, h + "_names") and np.any(getattr(trials, h) != UNLABELLED)]
    if not heads:
        raise ValueError("the training trials have no labels (every level and location is -1)")
    if cfg.clean and not isinstance(trials, Trials):
        raise ValueError("clean=True needs raw EEG Trials; these trials are band powers already")
    if init is not None:
        _check_init(init, cfg, trials)
    device = _resolve_device(cfg.device)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"cannot resume: {ckpt_path} does not exist")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resume(ckpt, cfg, trials, init)

    with _Determinism(cfg.threads, device):
        return _fit(trials, cfg, heads, device, out, ckpt_path, ckpt, progress, init, source)


_RESUMABLE = ("epochs", "seconds", "patience", "threads", "device")
_FROM_INIT = ("model", "model_args", "n_frames", "image_size", "norm", "clean")  # fixed by fit(init=...)


def _check_init(init: Fitted, cfg: TrainConfig, trials) -> None:
    """``init`` must fit the trials, and ``cfg`` must not claim another model or preprocessing."""
    if not isinstance(init, Fitted):
        raise TypeError(f"init must be a Fitted, got {type(init).__name__}")
    diff = [k for k in _FROM_INIT if getattr(init.cfg, k) != getattr(cfg, k)]
    if diff:
        raise ValueError("init fixes the model and its preprocessing, but cfg differs from init.cfg in: "
                         + ", ".join(f"{k}={getattr(cfg, k)!r} (init: {getattr(init.cfg, k)!r})" for k in diff)
                         + "; pass dataclasses.replace(init.cfg, ...)")
    for what in ("level_names", "location_names"):
        if list(getattr(trials, what)) != list(getattr(init, what)):
            raise ValueError(f"init was trained with {what} {getattr(init, what)}, "
                             f"but the trials have {list(getattr(trials, what))}")
    if list(trials.ch_names) != list(init.pre.ch_names):
        raise ValueError(f"init's preprocessing takes channels {init.pre.ch_names}, "
                         f"but the trials have {list(trials.ch_names)}")


def _model_digest(model: torch.nn.Module) -> str:
    """Hash of a model's state (names, shapes, values), so resume refuses another ``init``."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        hash_arrays(h, (v.detach().cpu().numpy(),))
    return h.hexdigest()


def _check_resume(ckpt: dict, cfg: TrainConfig, trials, init: Fitted | None = None) -> None:
    old = ckpt["cfg"]
    diff = [k for k, v in asdict(cfg).items() if k not in _RESUMABLE and old.get(k) != v]
    if diff:
        raise ValueError("cannot resume: the checkpoint was made with other settings: "
                         + ", ".join(f"{k}={old.get(k)!r} (now {getattr(cfg, k)!r})" for k in diff))
    if ckpt["digest"] != _digest(trials):
        raise ValueError("cannot resume: the checkpoint was made on other training trials")
    if ckpt.get("init") != (None if init is None else _model_digest(init.model)):
        raise ValueError("cannot resume: the checkpoint was started from another init model "
                         "(or init was given to only one of the two runs)")


def _fit(trials, cfg, heads, device, out, ckpt_path, ckpt, progress, init=None, source=None) -> Fitted:
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # preprocessing: fitted on every training trial (validation ones included), never on test data
    if init is not None:  # fine-tuning: the predictor's own preprocessing, unrefitted
        pre = init.pre
        if out is not None and ckpt is None:
            out.mkdir(parents=True, exist_ok=True)
            save_preprocessing(pre, out)
    elif ckpt is not None:
        pre = load_preprocessing(out)
    else:
        kw = {"norm": cfg.norm}
        if cfg.clean:
            from .cleaning import fit_cleaning

            kw["clean"] = fit_cleaning(trials, random_state=cfg.seed).matrix
        n_frames = cfg.n_frames or default_n_frames(trials)
        pre = Preprocessing.for_trials(trials, n_frames=n_frames, image_size=cfg.image_size, **kw)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            save_preprocessing(pre, out)
    images = pre.trial_images(trials).astype(np.float32)
    logger.info("fit: %d trials -> images %s", len(trials), images.shape)

    train_idx, val_idx, split = split_validation(trials, cfg.val_fraction, cfg.seed)
    n_levels, n_locations = len(trials.level_names), len(trials.location_names)
    sizes = {"level": n_levels, "location": n_locations}
    weights_np = {h: (class_weights(getattr(trials, h)[train_idx], sizes[h]) if cfg.class_weights
                      else np.ones(sizes[h], np.float32)) for h in heads}

    if init is not None:
        model = copy.deepcopy(init.model)
        init_digest = _model_digest(init.model)
    else:
        model = build_model(cfg.model, pre.n_frames, len(pre.bands), pre.image_size, n_levels, n_locations,
                            **cfg.model_args)
        init_digest = None
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x = torch.from_numpy(images).to(device)
    y = {h: torch.from_numpy(getattr(trials, h).astype(np.int64)).to(device) for h in heads}
    weights = {h: torch.from_numpy(w).to(device) for h, w in weights_np.items()}
    tr = torch.from_numpy(train_idx).to(device)
    x_tr, y_tr = x[tr], {h: v[tr] for h, v in y.items()}
    has_val = len(val_idx) > 0
    if has_val:
        va = torch.from_numpy(val_idx).to(device)
        x_va, y_va = x[va], {h: v[va] for h, v in y.items()}

    state = {"epoch": 0, "history": [], "best": {"score": -math.inf, "loss": math.inf, "epoch": -1},
             "best_weights": None, "bad_epochs": 0, "stopped": None}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        state = ckpt["state"]
        logger.info("fit: resuming after epoch %d", state["epoch"])

    bar = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), desc=f"train {cfg.model}",
               unit="epoch", disable=not progress, leave=False)
    stop_reason = state["stopped"]
    try:
        while stop_reason is None and state["epoch"] < cfg.epochs:
            if cfg.seconds is not None and time.monotonic() - t0 >= cfg.seconds:
                stop_reason = "time"
                break
            epoch = state["epoch"]
            model.train()
            total, seen = 0.0, 0
            for idx in _batches(rng.permutation(len(train_idx)), cfg.batch_size):
                b = torch.from_numpy(idx).to(device)
                targets = {h: v[b] for h, v in y_tr.items() if bool((v[b] != UNLABELLED).any())}
                _, loss = model(x_tr[b], targets, weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            rec = {"epoch": epoch + 1, "loss": total / seen}  # 1-based, as people count
            if has_val:
                rec.update(_evaluate(model, x_va, y_va, weights, heads))
                if _better(rec, state["best"]):
                    state["best"] = {"score": rec["val_score"], "loss": rec["val_loss"], "epoch": epoch + 1}
                    state["best_weights"] = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                    state["bad_epochs"] = 0
                else:
                    state["bad_epochs"] += 1
            rec["seconds"] = round(time.monotonic() - t0, 3)
            state["history"].append(rec)
            state["epoch"] = epoch + 1
            if has_val and state["bad_epochs"] >= cfg.patience:
                stop_reason = state["stopped"] = "early stopping"
            if ckpt_path is not None:
                _atomic_torch_save({
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "state": state, "cfg": asdict(cfg), "digest": _digest(trials), "init": init_digest}, ckpt_path)
            bar.update(1)
            post = {"loss": f"{rec['loss']:.3f}"}
            for h in heads:
                if f"val_bacc_{h}" in rec:
                    post[f"val_{h}"] = f"{rec[f'val_bacc_{h}']:.2f}"
            bar.set_postfix(post)
    finally:
        bar.close()
    if stop_reason is None:
        stop_reason = "epochs"

    if has_val and state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    model.cpu().eval()
    best = state["best"]
    summary = {"epochs_run": state["epoch"], "stopped": stop_reason,
               "best_epoch": best["epoch"] if has_val else state["epoch"],
               "best_val_score": None if not has_val or best["epoch"] < 1 else best["score"],
               "best_val_loss": None if not has_val or best["epoch"] < 1 else best["loss"],
               "val_metric": "mean over labelled heads of balanced accuracy (ties: lower loss)",
               "seconds": round(time.monotonic() - t0, 3)}
    if has_val and best["epoch"] >= 1:
        summary.update({k: v for k, v in state["history"][best["epoch"] - 1].items() if k.startswith("val_")})
    subjects = sorted(set(trials.subject.tolist()))
    extra = {"validation": {**split, "n_trials": int(len(val_idx))},
             "n_train_trials": int(len(train_idx)), "train_subjects": sorted(set(trials.subject[train_idx].tolist())),
             "subjects": subjects,
             "sessions": sorted(set(trials.session_keys().tolist())),
             "class_weights": {h: w.tolist() for h, w in weights_np.items()}}
    if source is not None:
        extra["data"] = dict(source)
    if init is not None:  # what was done to the model before (compress records its steps here)
        extra = {**{k: v for k, v in init.extra.items() if k not in extra}, **extra}
    fitted = Fitted(model=model, pre=pre, cfg=cfg, model_name=cfg.model, level_names=list(trials.level_names),
                    location_names=list(trials.location_names), heads=heads, dataset=trials.name,
                    history=state["history"], summary=summary, extra=extra)
    if out is not None:
        fitted.save(out)
    return fitted
