"""Float vs int8: how much the helmet's int8 model loses against the float model it came from.

``compare(folder, test_trials)`` reads a compressed folder (what ``painhelm compress``
writes)::

    folder/
      model/               the float model folder (painhelm.train.fit.Fitted.save)
      model_fp32.onnx  model_int8.onnx  model_fp32.tflite  model_int8.tflite
      compress.json        optional: what compress did (copied into the result as is)

and scores it on trials the model never saw. Per labelled head it gives the three rows
embedded engineers know (float vs truth, int8 vs truth, int8 vs float = "cross"), the
ONNX int8 model as an extra cross row, confusion matrices, a per-subject (or per-session)
breakdown and a runtime table (median latency at batch 1, file size, TFLite Micro arena).

"int8" is the helmet's ``model_int8.tflite`` run by LiteRT's reference kernels
(:class:`painhelm.compress.export.TFLiteRunner`), whose arithmetic the helmet's own
interpreter reproduces bit for bit; its int8 logits are dequantized before comparing.

Public API: :func:`held_out`, :func:`compare`, :func:`logit_errors`, :func:`find_arena_size`,
:data:`RUNTIMES`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..train.dataset import UNLABELLED
from ..train.evaluate import HEADS, classification_metrics
from . import export as E
from .pipeline import first_line, load_model_folder
from .source import held_out  # noqa: F401  (part of this module's API)

MODEL_DIR = "model"
COMPRESS_JSON = "compress.json"
EXPORTS = (E.TFLITE_INT8, E.TFLITE_FP32, E.ONNX_INT8, E.ONNX_FP32)
# the runtime table's rows, in this order (key, label)
RUNTIMES = (
    ("torch", "torch fp32 (CPU, 1 thread)"),
    ("onnx_fp32", "onnxruntime fp32"),
    ("onnx_int8", "onnxruntime int8 (QDQ)"),
    ("litert_fp32", "LiteRT fp32"),
    ("litert_int8", "LiteRT int8"),
    ("tflm_int8", "TFLite Micro int8"),
)
ROW_LABELS = {"float": "float vs truth", "int8": "int8 vs truth", "cross": "int8 vs float (cross)",
              "onnx_cross": "ONNX int8 vs float (cross)"}
TARGETS = {"accuracy_drop_pp": 0.5, "agreement": 0.99, "size_ratio": 0.3}  # issue 6: <=, >=, <=
_WARMUP = 5
_ARENA_STEP = 256  # bisection resolution of the TFLM arena, bytes
_ARENA_MAX = 64 * 1024 * 1024


# --- which trials -----------------------------------------------------------------------------

def logit_errors(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How far logits ``a`` (e.g. int8, dequantized) are from reference logits ``b`` (float).

    Both arrays are flattened over trials and classes.

    Parameters
    ----------
    a, b : array, shape (n_trials, n_classes)

    Returns
    -------
    errors : dict
        ``cos``: cosine similarity; ``rmse``: root mean square difference; ``l2r``: the
        relative L2 error ``||a - b|| / ||b||``; ``max_abs``: the largest absolute
        difference. NaN when the arrays are empty (or ``b`` is all zeros, for ``l2r``).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"logits must have the same shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        return {"cos": math.nan, "rmse": math.nan, "l2r": math.nan, "max_abs": math.nan}
    d = a - b
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return {"cos": float(a @ b / (na * nb)) if na and nb else math.nan,
            "rmse": float(np.sqrt(np.mean(d * d))),
            "l2r": float(np.linalg.norm(d) / nb) if nb else math.nan,
            "max_abs": float(np.abs(d).max())}


def _truth_row(kind: str, truth: np.ndarray, logits: np.ndarray, n_classes: int) -> dict:
    lab = truth != UNLABELLED
    m = classification_metrics(truth[lab], logits[lab].argmax(1), n_classes)
    return {"kind": kind, "row": ROW_LABELS[kind], **m}


def _cross_row(kind: str, q: np.ndarray, ref: np.ndarray, n_classes: int) -> dict:
    """``q``'s argmax scored against ``ref``'s argmax as the truth, plus the logit errors.

    Every test trial counts here, labelled or not: agreement needs no label.
    """
    m = classification_metrics(ref.argmax(1), q.argmax(1), n_classes)
    flips = _flip_margins(q, ref)
    return {"kind": kind, "row": ROW_LABELS[kind], **m, "agreement": m["accuracy"], **logit_errors(q, ref),
            "n_flips": int(flips.size), "flip_margin_max": float(flips.max()) if flips.size else None}


def _flip_margins(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Float's logit margin (best minus runner-up) on each trial whose argmax ``q`` changed.

    Flips at margins far below the logit rmse are ties that any rounding breaks either
    way; a flip at a large margin is a real quantization error.
    """
    ref = np.asarray(ref, np.float64)
    if ref.shape[1] < 2:
        return np.zeros(0)
    top2 = np.sort(ref, axis=1)[:, -2:]
    flipped = np.asarray(q).argmax(1) != ref.argmax(1)
    return (top2[:, 1] - top2[:, 0])[flipped]


def _group_rows(groups: np.ndarray, truth: dict, logits: dict, heads: list[str]) -> list[dict]:
    """Float and int8 accuracy and their agreement per test group (subject or session)."""
    rows = []
    for g in sorted(set(groups.tolist())):
        sel = groups == g
        row = {"name": g, "n": int(sel.sum()), "heads": {}}
        for h in heads:
            t = truth[h][sel]
            lab = t != UNLABELLED
            pf, p8 = logits["float"][h][sel].argmax(1), logits["int8"][h][sel].argmax(1)
            po = logits["onnx_int8"][h][sel].argmax(1)
            acc = (lambda p: float(np.mean(p[lab] == t[lab])) if lab.any() else math.nan)
            row["heads"][h] = {"n_labelled": int(lab.sum()), "float_accuracy": acc(pf), "int8_accuracy": acc(p8),
                               "agreement": float(np.mean(pf == p8)), "onnx_agreement": float(np.mean(pf == po))}
        rows.append(row)
    return rows


# --- runners, arena and latency ---------------------------------------------------------------

def _quietly(fn: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """``fn()`` with LiteRT's / TFLM's own output silenced; returns ``(value, None)`` or ``(None, error)``.

    The error is caught inside the silenced block, so its chatter is never replayed on stderr.
    """
    with E._quiet():
        try:
            return fn(), None
        except Exception as e:  # noqa: BLE001 - the caller turns it into one clear message
            return None, e


def _open(kind: str, path: Path, **kw):
    """A runner over one exported file; a file its runtime cannot load becomes a ValueError."""
    cls = {"tflite": E.TFLiteRunner, "onnx": E.OnnxRunner, "tflm": E.TFLMRunner}[kind]
    runner, err = _quietly(lambda: cls(path, **kw))
    if err is not None:
        raise ValueError(f"{path.name} cannot be loaded ({first_line(err)}); the file is corrupt or not a "
                         "model this version exports: run painhelm compress again")
    return runner


def _tflm_fits(model: bytes, arena_size: int, x_int8: np.ndarray) -> bool:
    """Whether TFLM allocates ``model`` in an arena of ``arena_size`` bytes and then invokes it."""
    from tflite_micro.python.tflite_micro import runtime

    def run():
        it = runtime.Interpreter.from_bytes(model, arena_size=int(arena_size))
        it.set_input(x_int8[:1], 0)
        it.invoke()

    _, err = _quietly(run)  # TFLM prints each failed allocation on fd 2
    if err is not None and not isinstance(err, (RuntimeError, ValueError)):
        raise err
    return err is None


def find_arena_size(path: str | Path, x_int8: np.ndarray, step: int = _ARENA_STEP) -> int:
    """The smallest TFLite Micro arena (to ``step`` bytes) that allocates and invokes the model.

    Bisection between 0 and the first power-of-two multiple of 64 KB that works. The
    Python TFLM interpreter records its allocations inside the arena, so the figure
    includes that bookkeeping (a few hundred bytes): an upper bound for a device build.

    Parameters
    ----------
    path : path
        An int8 ``.tflite`` file.
    x_int8 : array of int8, shape (n, F, C, H, W)
        A quantized input (the first one is used).
    step : int
        Resolution in bytes.

    Returns
    -------
    arena_size : int
        A multiple of ``step``: ``arena_size`` works, ``arena_size - step`` does not.
    """
    model = Path(path).read_bytes()
    hi = 64 * 1024
    while not _tflm_fits(model, hi, x_int8):
        hi *= 2
        if hi > _ARENA_MAX:
            raise ValueError(f"TFLite Micro cannot run {Path(path).name} even with a "
                             f"{_ARENA_MAX // (1024 * 1024)} MB arena")
    lo = 0  # an arena of 0 bytes never works
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            mid = lo + step
        if _tflm_fits(model, mid, x_int8):
            hi = mid
        else:
            lo = mid
    return hi


def _median_ms(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """Median and 90th percentile of ``n`` timed calls of ``fn`` after a short warm-up, in ms."""
    for _ in range(_WARMUP):
        fn()
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return {"median_ms": float(np.median(times) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3)}


def _torch_runner(model, x1: np.ndarray) -> Callable[[], Any]:
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x1, np.float32))

    def run():
        with torch.inference_mode():
            return model(xt)

    return run


def _runtime_table(folder: Path, fitted, x1: np.ndarray, xq1: np.ndarray, wanted, n: int, say) -> list[dict]:
    """One row per runtime of :data:`RUNTIMES` in ``wanted``: latency, file size, arena."""
    import torch

    files = {"torch": folder / MODEL_DIR / "model.pt", "onnx_fp32": folder / E.ONNX_FP32,
             "onnx_int8": folder / E.ONNX_INT8, "litert_fp32": folder / E.TFLITE_FP32,
             "litert_int8": folder / E.TFLITE_INT8, "tflm_int8": folder / E.TFLITE_INT8}
    notes = {"torch": "eager, torch.inference_mode", "onnx_fp32": "CPUExecutionProvider, 1 intra-op thread",
             "onnx_int8": "CPUExecutionProvider, 1 intra-op thread",
             "litert_fp32": "LiteRT default (optimized) kernels",
             "litert_int8": "LiteRT default (optimized) kernels; int8 in, int8 out",
             "tflm_int8": "TFLite Micro (PyPI tflite_micro), reference kernels; int8 in, int8 out"}
    rows = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, label in RUNTIMES:
            if key not in wanted:
                continue
            path = files[key]
            row = {"key": key, "runtime": label, "file": str(path.relative_to(folder)),
                   "bytes": path.stat().st_size, "arena_bytes": None, "notes": notes[key]}
            if key == "torch":
                fn = _torch_runner(fitted.model, x1)
            elif key.startswith("onnx"):
                r = _open("onnx", path)
                fn = lambda r=r: r.predict(x1)  # noqa: E731
            elif key == "litert_fp32":
                r = _open("tflite", path, reference_kernels=False)
                fn = lambda r=r: r.predict(x1)  # noqa: E731
            elif key == "litert_int8":
                r = _open("tflite", path, reference_kernels=False)
                fn = lambda r=r: r.predict_int8(xq1)  # noqa: E731
            else:
                say("compare: searching the smallest TFLite Micro arena")
                row["arena_bytes"] = arena = find_arena_size(path, xq1)
                r = _open("tflm", path, arena_size=arena)
                fn = lambda r=r: r.predict_int8(xq1)  # noqa: E731
            row.update(_median_ms(fn, n))
            say(f"compare: {label}: median {row['median_ms']:.3f} ms over {n} runs, {row['bytes']:,} bytes"
                + (f", arena {row['arena_bytes']:,} bytes" if row["arena_bytes"] else ""))
            rows.append(row)
    finally:
        torch.set_num_threads(old_threads)
    return rows


# --- compare ------------------------------------------------------------------------------------

def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path after checking it holds ``model/`` and the four exports.

    Raises FileNotFoundError naming what is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (or is not a folder)")
    missing = [] if (folder / MODEL_DIR / "model.pt").is_file() else [MODEL_DIR + "/"]
    missing += [n for n in EXPORTS if not (folder / n).is_file()]
    if missing and (folder / "model.pt").is_file():
        raise FileNotFoundError(f"{folder} is a model folder (painhelm train), not a compressed one; "
                                "run painhelm compress on it first")
    if missing:
        raise FileNotFoundError(f"{folder} is not a compressed model folder ({', '.join(missing)} missing); "
                                "run painhelm compress first")
    return folder


def _say_fn(progress) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return lambda line: None


def _predict(runner, images: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """``{head: logits}`` of one export; a file that cannot run on the model's images is a ValueError."""
    out, err = _quietly(lambda: runner.predict(images))
    if err is not None:
        raise ValueError(f"{name} cannot run on this model's input {images.shape[1:]} ({first_line(err)}): "
                         "the exports belong to another model; run painhelm compress again")
    return dict(zip(HEADS, out))


def compare(folder: str | Path, test_trials, *, fitted=None, runtimes=None, n_latency: int = 50,
            progress: bool | Callable[[str], None] = False) -> dict[str, Any]:
    """Score the float model and its int8 exports on test trials, and time every runtime.

    Parameters
    ----------
    folder : path
        A compressed folder: ``model/`` (float model folder) and ``model_fp32.onnx``,
        ``model_int8.onnx``, ``model_fp32.tflite``, ``model_int8.tflite``.
    test_trials : Trials | BandPowerTrials
        Trials to score, normally :func:`held_out` of the training dataset; same channels
        and class names as the model's.
    fitted : Fitted | None
        ``folder/model`` when the caller has loaded it already; else it is loaded here.
    runtimes : iterable of str | None
        Keys of :data:`RUNTIMES` to time; None: all six; ``()``: no runtime table.
    n_latency : int
        Timed runs per runtime (batch 1, after 5 warm-up runs).
    progress : bool | callable
        True prints one line per step on stderr; a callable receives the lines instead.

    Returns
    -------
    result : dict (JSON-able apart from NaN, which the report writes as null)
        ``folder``, ``model``, ``dataset``, ``heads``, ``class_names``; ``test`` (``n``,
        ``by``, ``groups``, ``seen_in_training``); ``rows``: per head a list of rows with
        ``kind`` in float / int8 / cross / onnx_cross, ``row`` (label), ``n``, ``correct``,
        ``accuracy`` (cross rows: argmax agreement with float), ``ci95``, ``f1_macro``,
        ``kappa``, ``confusion`` and for cross rows ``agreement``, ``cos``, ``rmse``, ``l2r``,
        ``max_abs``; ``confusion``: per head ``float``, ``int8`` (rows truth) and ``cross``
        (rows float, columns int8); ``per_group``; ``fp32_check`` (largest |logit - torch|
        of the fp32 exports); ``sizes``; ``targets``; ``runtimes`` (list of rows with
        ``key``, ``runtime``, ``file``, ``bytes``, ``median_ms``, ``p90_ms``,
        ``arena_bytes``, ``notes``; empty when not asked for); ``n_latency``;
        ``compress`` (compress.json or None); ``wall_s``.
    """
    t0 = time.monotonic()
    say = _say_fn(progress)
    folder = check_folder(folder)
    wanted = [k for k, _ in RUNTIMES] if runtimes is None else list(runtimes)
    unknown = sorted(set(wanted) - {k for k, _ in RUNTIMES})
    if unknown:
        raise ValueError(f"runtimes must be among {', '.join(k for k, _ in RUNTIMES)}, got {unknown}")
    if n_latency < 1:
        raise ValueError(f"n_latency must be at least 1, got {n_latency}")
    if len(test_trials) == 0:
        raise ValueError("no test trials to compare on")

    if fitted is None:
        fitted = load_model_folder(folder / MODEL_DIR)
    names = {"level": list(fitted.level_names), "location": list(fitted.location_names)}
    for h in HEADS:
        got = list(getattr(test_trials, h + "_names"))
        if h in fitted.heads and got != names[h]:
            raise ValueError(f"the test trials' {h} classes {got} differ from the model's {names[h]}")
    heads = [h for h in fitted.heads if len(names[h]) > 0]
    n_classes = {h: len(names[h]) for h in heads}

    say(f"compare: {len(test_trials)} test trials -> images")
    images = fitted.images(test_trials)
    say("compare: float model (torch)")
    float_logits = fitted.predict_images(images)

    r8 = _open("tflite", folder / E.TFLITE_INT8)
    if not r8.is_int8:
        raise ValueError(f"{E.TFLITE_INT8} takes float input, so it is not the helmet's full-int8 model; "
                         "run painhelm compress again")
    if r8.input_shape[1:] != images.shape[1:]:
        raise ValueError(f"{E.TFLITE_INT8} takes input {r8.input_shape[1:]} but the model in model/ makes "
                         f"{images.shape[1:]}: the exports belong to another model; run painhelm compress again")
    say("compare: int8 model (LiteRT reference kernels)")
    q = _predict(r8, images, E.TFLITE_INT8)
    say("compare: ONNX int8 and the fp32 exports")
    onnx8 = _predict(_open("onnx", folder / E.ONNX_INT8), images, E.ONNX_INT8)
    fp32 = {"tflite": _predict(_open("tflite", folder / E.TFLITE_FP32), images, E.TFLITE_FP32),
            "onnx": _predict(_open("onnx", folder / E.ONNX_FP32), images, E.ONNX_FP32)}
    for h in heads:
        for lg, what in ((q, E.TFLITE_INT8), (onnx8, E.ONNX_INT8)):
            if lg[h].shape != float_logits[h].shape:
                raise ValueError(f"{what} gives {h} logits of shape {lg[h].shape[1:]}, the model "
                                 f"{float_logits[h].shape[1:]}: the exports belong to another model; "
                                 "run painhelm compress again")
    fp32_check = {}
    for fmt, lg in fp32.items():
        err = max(float(np.abs(lg[h] - float_logits[h]).max()) for h in heads)
        scale = max(1.0, max(float(np.abs(float_logits[h]).max()) for h in heads))
        fp32_check[fmt] = err
        if err > 1e-2 * scale:
            raise ValueError(f"model_fp32.{fmt} does not reproduce the float model in model/ (largest logit "
                             f"difference {err:.3g}): the exports belong to another model; run painhelm "
                             "compress again")

    truth = {h: np.asarray(getattr(test_trials, h), np.int64) for h in heads}
    rows, confusion = {}, {}
    for h in heads:
        k = n_classes[h]
        rows[h] = [_truth_row("float", truth[h], float_logits[h], k), _truth_row("int8", truth[h], q[h], k),
                   _cross_row("cross", q[h], float_logits[h], k),
                   _cross_row("onnx_cross", onnx8[h], float_logits[h], k)]
        confusion[h] = {"float": rows[h][0]["confusion"], "int8": rows[h][1]["confusion"],
                        "cross": rows[h][2]["confusion"]}

    subjects = test_trials.subject.astype(str)
    # per subject; one test subject with several sessions (a one-subject dataset): per session
    one_subject = len(set(subjects.tolist())) == 1
    by = "session" if one_subject and len(set(test_trials.session_keys().tolist())) > 1 else "subject"
    groups = subjects if by == "subject" else test_trials.session_keys()
    logits = {"float": float_logits, "int8": q, "onnx_int8": onnx8}
    per_group = {"by": by, "rows": _group_rows(groups, truth, logits, heads)}
    seen_subjects = set(fitted.extra.get("subjects", []))
    seen_sessions = set(fitted.extra.get("sessions", []))
    seen_groups = seen_subjects if by == "subject" else seen_sessions
    seen = sorted(g for g in set(groups.tolist()) if g in seen_groups)

    size = {n: (folder / n).stat().st_size for n in EXPORTS}
    size["model.pt"] = (folder / MODEL_DIR / "model.pt").stat().st_size
    weights = {n: E.tflite_weight_bytes(folder / n) for n in (E.TFLITE_INT8, E.TFLITE_FP32)}
    sizes = {"bytes": size, "tflite_ratio": size[E.TFLITE_INT8] / size[E.TFLITE_FP32],
             "onnx_ratio": size[E.ONNX_INT8] / size[E.ONNX_FP32], "tflite_weight_bytes": weights,
             # the constant data alone: what int8 shrinks; the graph (ops, shapes, quantization
             # parameters) is a fixed cost that dominates a model of a few thousand weights
             "tflite_weight_ratio": weights[E.TFLITE_INT8] / max(weights[E.TFLITE_FP32], 1)}
    targets = {"limits": dict(TARGETS), "heads": {}, "size_ratio": sizes["tflite_ratio"],
               "size_ok": sizes["tflite_ratio"] <= TARGETS["size_ratio"]}
    for h in heads:
        fa, qa, agree = rows[h][0]["accuracy"], rows[h][1]["accuracy"], rows[h][2]["agreement"]
        drop = 100 * (fa - qa) if np.isfinite(fa) and np.isfinite(qa) else math.nan
        targets["heads"][h] = {"accuracy_drop_pp": drop,
                               "accuracy_drop_ok": bool(drop <= TARGETS["accuracy_drop_pp"] + 1e-9)
                               if np.isfinite(drop) else None,
                               "agreement": agree, "agreement_ok": bool(agree >= TARGETS["agreement"])}

    runtime_rows = []
    if wanted:
        x1 = images[:1]
        xq1 = E.quantize_array(x1, r8.input_scale, r8.input_zero_point)
        runtime_rows = _runtime_table(folder, fitted, x1, xq1, wanted, n_latency, say)

    cj = folder / COMPRESS_JSON
    compress_info = json.loads(cj.read_text()) if cj.is_file() else None
    return {
        "folder": str(folder.resolve()), "model": fitted.model_name, "dataset": fitted.dataset,
        "heads": heads, "class_names": {h: names[h] for h in heads},
        "test": {"n": len(test_trials), "by": by, "groups": sorted(set(groups.tolist())),
                 "seen_in_training": seen},
        "rows": rows, "confusion": confusion, "per_group": per_group, "fp32_check": fp32_check,
        "int8_input": {"scale": r8.input_scale, "zero_point": r8.input_zero_point},
        "sizes": sizes, "targets": targets, "runtimes": runtime_rows, "n_latency": n_latency if wanted else 0,
        "compress": compress_info, "wall_s": round(time.monotonic() - t0, 3),
    }
