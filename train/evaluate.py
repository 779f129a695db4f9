"""Subject-independent evaluation: folds, per-fold metrics, and running folds on Ray.

The protocol follows the seed: **leave-one-subject-out** (LOSO) when a dataset has two or
more subjects, **leave-one-run-out** (by ``session``) when it has one. Each fold trains a
fresh model on every other group and tests on the held-out one; the test group's trials
never reach the fit function, so preprocessing (normalisation), early stopping and class
weights are all fitted on training groups only.

Per fold and labelled head (``level`` = pain intensity, ``location``) we report accuracy
with a 95 % Wilson score interval, macro-F1, Cohen's kappa, the confusion matrix and the
number of test trials; across folds the mean and sample standard deviation. An optional
permutation test refits every fold on shuffled training labels.

Folds run one after another in this process (``workers=1``) or as Ray tasks
(``workers>1`` starts a local Ray, ``ray_address`` joins a cluster). Each fold seeds
itself from ``(seed, fold name)`` and runs torch on a fixed number of threads, so a
parallel run gives exactly the sequential run's numbers.

Public API: :func:`folds`, :func:`select_task`, :func:`classification_metrics`,
:func:`wilson_interval`, :func:`run_fold`, :func:`evaluate`, :func:`known_models`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np

from .dataset import UNLABELLED, BandPowerTrials, DataError, Trials

logger = logging.getLogger(__name__)

HEADS = ("level", "location")
HEAD_TITLES = {"level": "intensity", "location": "location"}  # the seed's column names
SPLITS = ("auto", "subject", "session")
CI_METHOD = "Wilson score interval, 95 %"  # sound at n = 15 and at 0 % / 100 %, unlike the normal one
_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def _check_option(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


# --- tasks: which trials and classes one evaluation uses ---------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """A named sub-task of a built-in dataset (``--task``)."""

    dataset: str
    description: str
    load: tuple = ()  # (param, value) pairs given to load_dataset
    where: tuple = ()  # (metadata key, value) pairs a trial must match
    classes: tuple = ()  # location classes kept (all when empty)


TASKS = {
    "executed-lr": TaskSpec("physionet-mi", "executed left vs right fist (runs R03/R07)",
                            where=(("task", "executed"), ("pair", "left_right")),
                            classes=("left_hand", "right_hand")),
    "imagined-lr": TaskSpec("physionet-mi", "imagined left vs right fist (runs R04/R08)",
                            where=(("task", "imagined"), ("pair", "left_right")),
                            classes=("left_hand", "right_hand")),
    "executed-ff": TaskSpec("physionet-mi", "executed both fists vs feet (runs R05/R09)",
                            where=(("task", "executed"), ("pair", "fists_feet")),
                            classes=("both_hands", "feet")),
    "imagined-ff": TaskSpec("physionet-mi", "imagined both fists vs feet (runs R06/R10)",
                            where=(("task", "imagined"), ("pair", "fists_feet")),
                            classes=("both_hands", "feet")),
    "where-5": TaskSpec("physionet-mi", "where in the body: left hand, right hand, both hands, feet, rest "
                        "(all runs, rest included)", load=(("include_rest", True),)),
}


def compact_labels(trials: Trials | BandPowerTrials) -> Trials | BandPowerTrials:
    """Drop class names no trial carries and renumber the labels to match.

    A head's logits then have one entry per class that occurs (left vs right: 2, not the
    5 of the full PhysioNet location list).
    """
    changes = {}
    for head in HEADS:
        y = getattr(trials, head)
        names = getattr(trials, head + "_names")
        used = sorted(int(c) for c in np.unique(y) if c != UNLABELLED)
        if len(used) == len(names):
            continue
        remap = np.full(max(len(names), 1), UNLABELLED, np.int64)
        remap[used] = np.arange(len(used))
        changes[head] = np.where(y == UNLABELLED, UNLABELLED, remap[np.maximum(y, 0)])
        changes[head + "_names"] = [names[i] for i in used]
    return dataclasses.replace(trials, **changes) if changes else trials


def select_task(trials: Trials | BandPowerTrials, task: str) -> Trials | BandPowerTrials:
    """The trials and classes of ``task`` (a key of :data:`TASKS`), labels renumbered.

    Parameters
    ----------
    trials : Trials | BandPowerTrials
        The dataset loaded with the task's ``load`` parameters.
    task : str
        A task name, e.g. ``"executed-lr"``.

    Returns
    -------
    trials : Trials | BandPowerTrials
        The matching trials, with only the task's classes in ``location_names``.
    """
    _check_option("task", task, tuple(TASKS))
    spec = TASKS[task]
    keep = np.ones(len(trials), bool)
    for key, value in spec.where:
        keep &= np.array([m.get(key) == value for m in trials.metadata], bool)
    if spec.classes:
        names = trials.location_names
        missing = [c for c in spec.classes if c not in names]
        if missing:
            raise DataError(None, f"task {task!r} needs location classes {missing}, dataset has {names}")
        codes = [names.index(c) for c in spec.classes]
        keep &= np.isin(trials.location, codes)
    if not keep.any():
        raise DataError(None, f"task {task!r} ({spec.description}) matches no trial of dataset {trials.name!r}")
    return compact_labels(trials.subset(keep))


def load_task_trials(dataset: str, mapping: str | None = None, task: str | None = None):
    """What ``--dataset`` / ``--mapping`` / ``--task`` name, as one trial table.

    One rule for train, evaluate, compress and compare, so a model folder's recorded
    dataset and task reload exactly its data. Raises ValueError for a task that does not
    fit the dataset (a user mistake) and DataError for unusable data.
    """
    from . import datasets

    if task is None:
        return datasets.load_trials(dataset, mapping)
    if mapping:
        raise ValueError("--task applies to built-in datasets only, not to --mapping recordings")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    if spec.dataset != dataset:
        raise ValueError(f"--task {task} is a task of {spec.dataset}, not of {dataset}")
    return select_task(datasets.load_dataset(dataset, **dict(spec.load)), task)


# --- folds -------------------------------------------------------------------------------

class Fold(NamedTuple):
    """One cross-validation fold: the held-out group's name and the trial indices."""

    name: str
    train_idx: np.ndarray
    test_idx: np.ndarray


def resolve_split(trials: Trials | BandPowerTrials, by: str = "auto") -> str:
    """``"subject"`` when ``by="auto"`` and there are >= 2 subjects, else ``"session"``."""
    _check_option("by", by, SPLITS)
    if by != "auto":
        return by
    return "subject" if len(np.unique(trials.subject)) >= 2 else "session"


def folds(trials: Trials | BandPowerTrials, by: str = "auto") -> list[Fold]:
    """Leave-one-group-out folds: each subject (or session) is the test set once.

    Parameters
    ----------
    trials : Trials | BandPowerTrials
        The table to split.
    by : "auto" | "subject" | "session"
        What to hold out; ``"auto"`` holds out subjects when there are at least two, else
        sessions (runs).

    Returns
    -------
    folds : list of Fold
        ``(name, train_idx, test_idx)`` per group in sorted order; ``name`` is the held-out
        group, ``test_idx`` all its trials and ``train_idx`` all other trials. No trial of
        the held-out group is ever in ``train_idx``.
    """
    by = resolve_split(trials, by)
    groups = np.asarray(getattr(trials, by)).astype(str)
    names = sorted(np.unique(groups))
    if len(names) < 2:
        what = "subjects" if by == "subject" else "sessions (runs)"
        raise DataError(None, f"dataset {trials.name or '?'!r} has {len(names)} {what} "
                              f"({', '.join(names) or 'none'}); leave-one-{by}-out needs at least 2")
    out = []
    for name in names:
        test = np.flatnonzero(groups == name)
        train = np.flatnonzero(groups != name)
        out.append(Fold(str(name), train, test))
    return out


def fold_seed(seed: int, fold_name: str, *salt) -> int:
    """A 31-bit seed that depends only on ``seed``, the fold's name and ``salt``.

    Hashing (not ``hash()``, which Python randomises per process) makes it the same in
    every worker and independent of the order in which folds run.
    """
    text = ":".join(str(p) for p in (seed, fold_name, *salt))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


# --- metrics -----------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95 % by default).

    Returns ``(nan, nan)`` for ``n = 0``.
    """
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy (+ 95 % Wilson interval), macro-F1, Cohen's kappa and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array of int, shape (n,)
        True and predicted class indices (no unlabelled entries).
    n_classes : int
        Number of classes of the head; the confusion matrix is ``n_classes x n_classes``
        (rows true, columns predicted).

    Returns
    -------
    metrics : dict
        ``n``, ``correct``, ``accuracy``, ``ci95`` ([low, high]), ``f1_macro`` (over the
        classes present in ``y_true`` or ``y_pred``), ``kappa`` (NaN when undefined, i.e.
        when truth and prediction are one and the same single class) and ``confusion``.
    """
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    n = len(y_true)
    if n == 0:
        return {"n": 0, "correct": 0, "accuracy": math.nan, "ci95": [math.nan, math.nan],
                "f1_macro": math.nan, "kappa": math.nan, "confusion": np.zeros((n_classes, n_classes), int).tolist()}
    correct = int(np.sum(y_true == y_pred))
    # one class on both sides: kappa is 0/0; sklearn warns and returns nan, we return nan quietly
    if len(np.union1d(y_true, y_pred)) < 2:
        kappa = math.nan
    else:
        kappa = float(cohen_kappa_score(y_true, y_pred))
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "ci95": list(wilson_interval(correct, n)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "kappa": kappa,
        "confusion": confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).tolist(),
    }


def labelled_heads(trials: Trials | BandPowerTrials) -> list[str]:
    """The heads with at least two class names and at least one labelled trial."""
    return [h for h in HEADS
            if len(getattr(trials, h + "_names")) >= 2 and np.any(getattr(trials, h) != UNLABELLED)]


# --- one fold ----------------------------------------------------------------------------

def _default_fit():
    from .fit import fit

    return fit


def _shuffle_within(labels: dict[str, np.ndarray], groups: np.ndarray, rng: np.random.Generator) -> dict:
    """Permute whole label rows within each group (subject / run) of the training set.

    Rows move together, so level and location stay paired; staying within a group keeps
    each group's class mix, so the null model cannot win by recognising the group.
    """
    perm = np.arange(len(groups))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        perm[idx] = idx[rng.permutation(len(idx))]
    return {h: y[perm] for h, y in labels.items()}


def run_fold(trials: Trials | BandPowerTrials, fold: Fold, cfg, fit_fn: Callable | None = None, *,
             heads: list[str] | None = None, split: str = "subject", permutation: int | None = None,
             threads: int | None = 1) -> dict[str, Any]:
    """Fit on the fold's training trials, predict its test trials, score every head.

    Parameters
    ----------
    trials : Trials | BandPowerTrials
        The whole table; the fold's indices select from it.
    fold : Fold
        ``(name, train_idx, test_idx)`` from :func:`folds`.
    cfg : dataclass
        Training config with ``seed`` and ``model`` fields (``train.fit.TrainConfig``);
        its ``seed`` is replaced by :func:`fold_seed` of the fold.
    fit_fn : callable, optional
        ``fit_fn(train_trials, cfg, progress=False) -> fitted`` with
        ``fitted.predict(test_trials) -> {head: logits (n, n_classes)}``;
        ``train.fit.fit`` by default.
    heads : list of str, optional
        Heads to score (default: :func:`labelled_heads`).
    split : str
        ``"subject"`` or ``"session"``; a permutation shuffles labels within these groups.
    permutation : int, optional
        When given, the training labels are shuffled with a seed drawn from
        ``(seed, fold, "perm", permutation)`` before fitting.
    threads : int | None
        torch threads while this fold runs (1 makes results independent of the machine's
        core count and of parallel vs sequential runs); None leaves torch's setting.

    Returns
    -------
    result : dict
        ``name``, ``seed``, ``n_train``, ``n_test``, ``wall_s`` and ``heads``:
        {head: metrics of :func:`classification_metrics`} (heads without labelled test
        trials or without logits are left out).
    """
    import random

    fit_fn = fit_fn or _default_fit()
    heads = labelled_heads(trials) if heads is None else heads
    base_seed = int(getattr(cfg, "seed", 0) or 0)
    seed = fold_seed(base_seed, fold.name) if permutation is None else fold_seed(base_seed, fold.name, "fit", permutation)
    if hasattr(cfg, "seed"):
        cfg = dataclasses.replace(cfg, seed=seed)
    if threads and hasattr(cfg, "threads"):
        cfg = dataclasses.replace(cfg, threads=int(threads))
    train, test = trials.subset(fold.train_idx), trials.subset(fold.test_idx)
    if permutation is not None:
        rng = np.random.default_rng(fold_seed(base_seed, fold.name, "perm", permutation))
        shuffled = _shuffle_within({h: getattr(train, h) for h in HEADS}, getattr(train, split), rng)
        train = dataclasses.replace(train, **shuffled)

    t0 = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    saved_threads = None
    # torch only when loaded already: train.fit imports it and seeds itself from cfg.seed,
    # and a fit function that never uses torch need not pay for importing it in every worker
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        if threads:
            saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(threads))
    try:
        fitted = fit_fn(train, cfg, progress=False)
        logits = fitted.predict(test)
    finally:
        if saved_threads is not None:
            torch.set_num_threads(saved_threads)
    wall = time.perf_counter() - t0

    scores = {}
    for head in heads:
        y = getattr(test, head)
        lab = y != UNLABELLED
        if head not in logits or not lab.any():
            continue
        z = np.asarray(logits[head])
        n_classes = len(getattr(trials, head + "_names"))
        if z.shape != (len(test), n_classes):
            raise ValueError(f"fit's {head} logits have shape {z.shape}, expected ({len(test)}, {n_classes})")
        scores[head] = classification_metrics(y[lab], z[lab].argmax(axis=1), n_classes)
    return {"name": fold.name, "seed": seed, "n_train": len(fold.train_idx), "n_test": len(fold.test_idx),
            "wall_s": wall, "heads": scores}


# --- summaries ---------------------------------------------------------------------------

def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values; NaN when none."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return (math.nan, math.nan)
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def summarize(fold_results: list[dict], heads: list[str], class_names: dict[str, list[str]]) -> dict:
    """Across-fold mean and sd per metric and head, plus pooled accuracy and confusion."""
    out = {}
    for head in heads:
        rows = [f["heads"][head] for f in fold_results if head in f["heads"]]
        if not rows:
            continue
        s = {"n_folds": len(rows), "n": int(sum(r["n"] for r in rows))}
        for key in ("accuracy", "f1_macro", "kappa"):
            s[key + "_mean"], s[key + "_sd"] = _mean_sd([r[key] for r in rows])
        correct = int(sum(r["correct"] for r in rows))
        s["pooled_accuracy"] = correct / s["n"] if s["n"] else math.nan
        s["pooled_ci95"] = list(wilson_interval(correct, s["n"]))
        s["confusion"] = np.sum([r["confusion"] for r in rows], axis=0).tolist()
        s["chance"] = 1.0 / len(class_names[head])
        out[head] = s
    return out


# --- running many folds ------------------------------------------------------------------

def _run_job(trials, job: dict, fit_fn, heads, split, threads) -> dict:
    """One unit of work (a fold of one model, maybe under one label permutation)."""
    res = run_fold(trials, job["fold"], job["cfg"], fit_fn, heads=heads, split=split,
                   permutation=job["permutation"], threads=threads)
    res["model"] = job["model"]
    res["permutation"] = job["permutation"]
    return res


def _run_sequential(trials, jobs, fit_fn, heads, split, threads, on_result):
    for i, job in enumerate(jobs):
        on_result(i, _run_job(trials, job, fit_fn, heads, split, threads))


def _run_ray(trials, jobs, fit_fn, heads, split, threads, on_result, workers: int, ray_address: str | None):
    """Run the jobs as Ray tasks, one CPU each; results are reported as they finish."""
    try:
        import ray
    except ImportError:
        raise DataError(None, "--workers > 1 and --ray-address need Ray (pip install 'ray[default]')") from None
    started = False
    if not ray.is_initialized():
        # Ray's start-up chatter (INFO lines, token notice) would bury the per-fold lines
        kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            ray.init(num_cpus=workers, **kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_run_job)
        trials_ref = ray.put(trials)  # shipped to the object store once, not once per task
        fit_ref = ray.put(fit_fn)
        pending = {remote.remote(trials_ref, job, fit_ref, heads, split, threads): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            on_result(i, ray.get(done[0]))
    finally:
        if started:
            ray.shutdown()


def evaluate(trials: Trials | BandPowerTrials, cfg, *, models: list[str] | None = None, by: str = "auto",
             fit_fn: Callable | None = None, workers: int = 1, ray_address: str | None = None,
             permutations: int = 0, threads: int | None = 1,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Cross-validate one or more models on ``trials`` with leave-one-group-out folds.

    Parameters
    ----------
    trials : Trials | BandPowerTrials
        The dataset (already reduced to a task, see :func:`select_task`).
    cfg : dataclass
        Training config (``train.fit.TrainConfig``); ``cfg.seed`` seeds every fold.
    models : list of str, optional
        Model names to compare (each replaces ``cfg.model``); default ``[cfg.model]``.
    by : "auto" | "subject" | "session"
        What each fold holds out (see :func:`folds`).
    fit_fn : callable, optional
        The fit function (``train.fit.fit`` by default; tests pass a fast stand-in).
    workers : int
        1 runs folds here, one after another; more starts a local Ray with that many CPUs.
    ray_address : str, optional
        Address of a running Ray cluster (``"auto"``, ``"ray://host:10001"``); implies Ray.
    permutations : int
        Number of label permutations for the permutation test (0: none). Each refits every
        fold, so the cost is ``(1 + permutations) x`` the plain run.
    threads : int | None
        torch threads per fold (default 1, which keeps results identical everywhere).
    progress : callable, optional
        Called with one line of text per finished fold.

    Returns
    -------
    results : dict
        JSON-ready: dataset name, protocol, heads, class names, folds, per-model ``folds``
        and ``summary`` (see :func:`summarize`), ``permutation`` (when asked), wall times.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    split = resolve_split(trials, by)
    fold_list = folds(trials, split)
    heads = labelled_heads(trials)
    if not heads:
        raise DataError(None, f"dataset {trials.name!r} has no labelled head (level and location are all unlabelled)")
    models = list(models) if models else [getattr(cfg, "model", "model")]
    class_names = {h: list(getattr(trials, h + "_names")) for h in heads}
    fit_fn = fit_fn or _default_fit()

    jobs = []
    for model in models:
        mcfg = dataclasses.replace(cfg, model=model) if hasattr(cfg, "model") else cfg
        for perm in [None, *range(permutations)]:
            for fold in fold_list:
                jobs.append({"model": model, "cfg": mcfg, "fold": fold, "permutation": perm})

    results: list[dict | None] = [None] * len(jobs)
    n_done = [0]

    def on_result(i: int, res: dict) -> None:
        results[i] = res
        n_done[0] += 1
        if progress is not None:
            progress(_progress_line(res, n_done[0], len(jobs), class_names))

    t0 = time.perf_counter()
    use_ray = workers > 1 or bool(ray_address)
    if use_ray:
        _run_ray(trials, jobs, fit_fn, heads, split, threads, on_result, workers, ray_address)
    else:
        _run_sequential(trials, jobs, fit_fn, heads, split, threads, on_result)
    wall = time.perf_counter() - t0

    per_model = {}
    for model in models:
        real = [r for r in results if r["model"] == model and r["permutation"] is None]
        real.sort(key=lambda r: r["name"])
        entry = {"folds": real, "summary": summarize(real, heads, class_names),
                 "fit_wall_s": float(sum(r["wall_s"] for r in real))}
        if permutations:
            entry["permutation"] = _permutation_summary(results, model, heads, entry["summary"], permutations)
        per_model[model] = entry

    cfg_dict = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    return {
        "dataset": trials.name,
        "protocol": f"leave-one-{split}-out",
        "split": split,
        "folds": [f.name for f in fold_list],
        "n_trials": len(trials),
        "heads": heads,
        "class_names": class_names,
        "models": per_model,
        "config": cfg_dict,
        "seed": int(getattr(cfg, "seed", 0) or 0),
        "ci_method": CI_METHOD,
        "sd": "sample standard deviation over folds (ddof=1)",
        "permutations": permutations,
        "workers": workers,
        "engine": ("ray " + (ray_address or "local")) if use_ray else "sequential",
        "threads_per_fold": threads,
        "wall_s": wall,
    }


def _permutation_summary(results: list[dict], model: str, heads: list[str], summary: dict, n_perm: int) -> dict:
    """p-value of the mean-over-folds accuracy against the permuted-label null.

    ``p = (1 + #{null >= observed}) / (1 + n_permutations)`` (the +1 counts the observed
    labelling as one permutation, so p is never 0).
    """
    out = {}
    for head in heads:
        if head not in summary:
            continue
        null = []
        for k in range(n_perm):
            accs = [r["heads"][head]["accuracy"] for r in results
                    if r["model"] == model and r["permutation"] == k and head in r["heads"]]
            null.append(float(np.mean(accs)) if accs else math.nan)
        obs = summary[head]["accuracy_mean"]
        arr = np.asarray(null)
        out[head] = {"observed": obs, "null_accuracies": null, "null_mean": float(np.nanmean(arr)),
                     "p_value": float((1 + np.sum(arr >= obs - 1e-12)) / (1 + n_perm)), "n_permutations": n_perm}
    return out


def _progress_line(res: dict, i: int, n: int, class_names: dict) -> str:
    parts = []
    for head, m in res["heads"].items():
        parts.append(f"{HEAD_TITLES[head]} {100 * m['accuracy']:.1f} % (n={m['n']})")
    perm = "" if res["permutation"] is None else f" permutation {res['permutation'] + 1}"
    return (f"[{i}/{n}] {res['model']}{perm} fold {res['name']}: {', '.join(parts) or 'no labelled test trials'}"
            f"  ({res['wall_s']:.1f} s)")


# --- models ------------------------------------------------------------------------------

def known_models() -> list[str]:
    """Model names of the zoo (``train/model.py: MODELS``) that ``--models`` accepts."""
    from .model import MODELS

    return list(MODELS)
