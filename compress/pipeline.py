"""`painhelm compress MODEL_DIR`: prune, quantize and export a trained model folder.

    model folder (painhelm train) -> [prune + fine-tune] -> [QAT fine-tune]
        -> model/ (the float model that is exported) -> ONNX fp32/int8, TFLite fp32/int8
        -> bundle/ (the helmet's int8 model + preprocessing + manifest) -> compress.json

The calibration set and any fine-tuning use the model's own training subjects and
sessions only (``compress.source``); the folder's held-out data are left for
``painhelm compare``. Every exported file is re-loaded in its runtime and checked against
torch (``compress.export``). The output folder is built under a temporary name and
renamed into place at the end, so an interrupted run never leaves a half-written folder
that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from painhelm.train.dataset import json_default

PRUNE_METHODS = ("none", "structured", "unstructured")
FORMATS = ("onnx", "tflite", "bundle")
COMPRESS_FILE = "compress.json"
MODEL_SUBDIR = "model"
BUNDLE_SUBDIR = "bundle"


class CompressError(ValueError):
    """A model folder that cannot be compressed, or settings that do not fit it."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_model_folder(folder: str | Path):
    """Load a model folder written by ``painhelm train`` and check that its parts agree.

    Raises :class:`CompressError` naming the folder and the problem for a missing,
    unreadable or inconsistent folder (weights that do not fit the config, preprocessing
    that does not make the model's input, label names that do not fit the heads).
    """
    from painhelm.train.fit import CONFIG_FILE, MODEL_FILE, Fitted

    folder = Path(folder)
    if not folder.is_dir():
        raise CompressError(f"{folder}: no such model folder")
    if (folder / COMPRESS_FILE).is_file():
        try:
            src = json.loads((folder / COMPRESS_FILE).read_text())["source"]["model_dir"]
        except (ValueError, KeyError, TypeError):
            src = "the model folder it came from"
        raise CompressError(f"{folder} is already a compressed folder; compress {src} instead "
                            "(or compare this one with painhelm compare)")
    try:
        fitted = Fitted.load(folder)
    except FileNotFoundError as e:
        raise CompressError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CompressError(f"{folder}: a JSON file is corrupt ({e})") from None
    except RuntimeError as e:  # torch: not a zip/pickle, or weights of other shapes
        if "size mismatch" in str(e) or "state_dict" in str(e):
            raise CompressError(f"{folder / MODEL_FILE} does not match {CONFIG_FILE}: {first_line(e)}") from None
        raise CompressError(f"{folder / MODEL_FILE} is not a readable PyTorch file: {first_line(e)}") from None
    except pickle.UnpicklingError:
        raise CompressError(f"{folder / MODEL_FILE} is not a readable PyTorch file (corrupt, or not "
                            "written by painhelm train)") from None
    except (KeyError, ValueError, TypeError, EOFError, OSError) as e:
        raise CompressError(f"{folder}: unreadable model folder ({type(e).__name__}: {e})") from None
    check_model_folder(fitted, folder)
    return fitted


def check_model_folder(fitted, folder: str | Path = "model folder") -> None:
    """Raise CompressError when the preprocessing, model and labels do not fit together."""
    cfg, pre = fitted.model.cfg, fitted.pre
    problems = []
    if (pre.n_frames, len(pre.bands), pre.image_size) != (cfg.n_frames, cfg.n_bands, cfg.image_size):
        problems.append(f"preprocessing makes {pre.n_frames} frames x {len(pre.bands)} bands x "
                        f"{pre.image_size}^2 but the model takes {cfg.n_frames} x {cfg.n_bands} x {cfg.image_size}^2")
    if pre.W is not None and tuple(np.shape(pre.W)) != (pre.image_size ** 2, len(pre.ch_names)):
        problems.append(f"topomap matrix is {np.shape(pre.W)}, expected "
                        f"{(pre.image_size ** 2, len(pre.ch_names))}")
    if len(fitted.level_names) != cfg.n_levels or len(fitted.location_names) != cfg.n_locations:
        problems.append(f"{len(fitted.level_names)} level / {len(fitted.location_names)} location names "
                        f"for a model with {cfg.n_levels} / {cfg.n_locations} classes")
    if problems:
        raise CompressError(f"{folder}: inconsistent model folder: " + "; ".join(problems))


def _step(log: Callable[[str], None] | None, msg: str) -> None:
    if log is not None:
        log(msg)


def compress_model(model_dir: str | Path, out_dir: str | Path | None = None, *,
                   prune: str = "none", amount: float = 0.5, prune_epochs: int = 30,
                   qat: bool = False, qat_epochs: int = 10, calib_size: int = 256,
                   formats: tuple[str, ...] = FORMATS, dataset: str | None = None,
                   mapping: str | None = None, task: str | None = None, seed: int | None = None,
                   progress: bool = False, log: Callable[[str], None] | None = print) -> dict:
    """Compress one model folder; return the summary that is also written to compress.json.

    Parameters
    ----------
    model_dir : folder written by ``painhelm train``.
    out_dir : output folder (default ``<model_dir>/compressed``); replaced when it exists.
    prune : "none", "structured" (channels removed with torch-pruning) or "unstructured"
        (magnitude); either is followed by ``prune_epochs`` of fine-tuning.
    amount : fraction of channels (structured) or weights (unstructured) to remove.
    qat : fine-tune ``qat_epochs`` with int8 fake quantization before the static export.
    calib_size : images from the training subjects used to calibrate int8 ranges.
    formats : any of "onnx", "tflite", "bundle" (the bundle needs "tflite").
    dataset, mapping, task : override the data the folder recorded (see compress.source).
    seed : seed of fine-tuning and calibration sampling; None: the model's own training
        seed, so fine-tuning validates on the very subjects the model was validated on.
    """
    from painhelm.compress import export
    from painhelm.compress.bundle import versions, write_bundle
    from painhelm.compress.source import calibration_images, load_source, training_part

    if prune not in PRUNE_METHODS:
        raise CompressError(f"prune must be one of {PRUNE_METHODS}, got {prune!r}")
    if prune != "none" and not 0 < amount < 1:
        raise CompressError(f"amount must be in (0, 1), got {amount}")
    bad = sorted(set(formats) - set(FORMATS))
    if bad or not formats:
        raise CompressError(f"formats must be some of {FORMATS}, got {list(formats)}")
    if "bundle" in formats and "tflite" not in formats:
        raise CompressError("the bundle holds the int8 .tflite: formats with 'bundle' need 'tflite'")
    if calib_size < 1:
        raise CompressError(f"calib_size must be at least 1, got {calib_size}")

    t0 = time.monotonic()
    model_dir = Path(model_dir)
    fitted = load_model_folder(model_dir)
    calib_seed = fitted.cfg.seed if seed is None else seed
    out = Path(out_dir) if out_dir is not None else model_dir / "compressed"
    if out.resolve() == model_dir.resolve():
        raise CompressError("the output folder must not be the model folder itself")
    try:
        trials = load_source(fitted, dataset, mapping, task)
        train = training_part(fitted, trials)
    except ValueError as e:
        if type(e).__name__ == "DataError":
            raise
        raise CompressError(str(e)) from None
    wants_bundle = "bundle" in formats
    if wants_bundle and not fitted.pre.n_times:
        _step(log, "note: this model starts from band-power tables, not raw EEG; no helmet bundle is written")
        wants_bundle = False

    summary: dict = {"source": {"model_dir": str(model_dir.resolve()),
                                "model_sha256": sha256_file(model_dir / "model.pt"),
                                "model": fitted.model_name, "dataset": fitted.dataset,
                                "data": fitted.extra.get("data")},
                     "settings": {"prune": prune, "amount": amount if prune != "none" else None,
                                  "prune_epochs": prune_epochs if prune != "none" else None,
                                  "qat": qat, "qat_epochs": qat_epochs if qat else None,
                                  "calib_size": calib_size, "formats": list(formats), "seed": seed},
                     "versions": versions()}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if prune != "none":
            from painhelm.compress.prune import prune as prune_fn

            _step(log, f"pruning ({prune}, {amount:.0%}) and fine-tuning up to {prune_epochs} epochs "
                       f"on {len(train)} training trials")
            try:
                fitted, summary["prune"] = prune_fn(fitted, train, method=prune, amount=amount,
                                                    epochs=prune_epochs, seed=seed, progress=progress)
            except ValueError as e:
                raise CompressError(str(e)) from None
        if qat:
            from painhelm.compress.qat import qat_finetune

            _step(log, f"quantization-aware fine-tuning, up to {qat_epochs} epochs")
            fitted, summary["qat"] = qat_finetune(fitted, train, epochs=qat_epochs, seed=seed, progress=progress)
        fitted.save(tmp / MODEL_SUBDIR)

        calib = calibration_images(fitted, train, calib_size, calib_seed)
        summary["calibration"] = {"n_images": int(len(calib)),
                                  "subjects": sorted(set(train.subject.tolist())),
                                  "method": "min/max over every image (no moving average)"}
        model = fitted.model.eval()
        if "tflite" in formats:
            _step(log, f"exporting TFLite fp32 and full int8 ({len(calib)} calibration images) and checking them in LiteRT")
            tfl = export.export_tflite(model, calib, tmp)
            summary["tflite"] = {k: (Path(v).name if k in ("fp32", "int8") else v) for k, v in tfl.items()}
        if "onnx" in formats:
            _step(log, "exporting ONNX fp32 and int8 (QDQ, per-channel) and checking them in onnxruntime")
            onx = export.export_onnx(model, calib, tmp)
            summary["onnx"] = {k: (Path(v).name if k in ("fp32", "int8") else v) for k, v in onx.items()}
        if wants_bundle:
            from painhelm.compress.decisions import calibrate_for_model

            _step(log, "calibrating the helmet's decision gates (quality, OOD, confidence) on the training trials")
            decision, summary["decision"] = calibrate_for_model(fitted, train, tmp / export.TFLITE_INT8)
            _step(log, "writing the helmet bundle")
            write_bundle(tmp / BUNDLE_SUBDIR, tmp / export.TFLITE_INT8, fitted.pre, fitted.level_names,
                         fitted.location_names, tfl["input_scale"], tfl["input_zero_point"], decision=decision,
                         source={"model_sha256": summary["source"]["model_sha256"],
                                 "model": fitted.model_name, "prune": prune, "qat": qat})
        summary["files"] = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
                            for p in sorted(tmp.rglob("*")) if p.is_file()}
        summary["seconds"] = round(time.monotonic() - t0, 1)
        (tmp / COMPRESS_FILE).write_text(json.dumps(summary, indent=1, default=json_default))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary

