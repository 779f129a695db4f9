"""The data behind a model folder: its training trials (for calibration and fine-tuning)
and the trials it never saw (for `painhelm compare`).

``painhelm train`` records where its table came from (``config.json`` → ``data``:
dataset, mapping, task) and which subjects and sessions entered the fit (``subjects``,
``sessions``), so compress and compare reload exactly that table without being told.
"""

from __future__ import annotations

import numpy as np

from painhelm.train.dataset import BandPowerTrials, Trials


def load_source(fitted, dataset: str | None = None, mapping: str | None = None,
                task: str | None = None) -> Trials | BandPowerTrials:
    """The whole trial table the model folder was trained from (training and held-out parts).

    ``dataset``/``mapping``/``task`` override what the folder recorded (needed for folders
    written before that was recorded, or when the recordings moved). Raises ValueError with
    a message for the user when the table cannot be found or does not fit the model.
    """
    from painhelm.train.evaluate import load_task_trials

    rec = fitted.extra.get("data") or {}
    if dataset is None:
        dataset, mapping = rec.get("dataset") or fitted.dataset, rec.get("mapping")
        task = rec.get("task") if task is None else task
    if not dataset:
        raise ValueError("the model folder does not say which data it was trained on; pass --dataset "
                         "(and --mapping for own recordings)")
    trials = load_task_trials(dataset, mapping, task)
    if list(trials.ch_names) != list(fitted.pre.ch_names):
        raise ValueError(f"dataset {dataset!r} has channels {list(trials.ch_names)[:6]}..., but the model "
                         f"was trained on {list(fitted.pre.ch_names)[:6]}...; pass the model's own --dataset")
    if list(trials.level_names) != list(fitted.level_names) or \
            list(trials.location_names) != list(fitted.location_names):
        raise ValueError(f"dataset {dataset!r} has classes {list(trials.level_names)} / "
                         f"{list(trials.location_names)}, the model {fitted.level_names} / "
                         f"{fitted.location_names}; pass the model's own --dataset/--task")
    return trials


def training_part(fitted, trials: Trials | BandPowerTrials) -> Trials | BandPowerTrials:
    """The trials of ``trials`` that entered the model's fit (its subjects and sessions)."""
    keep = np.isin(trials.subject, fitted.extra.get("subjects", []))
    if "sessions" in fitted.extra:
        keep &= np.isin(trials.session_keys(), fitted.extra["sessions"])
    if not keep.any():
        raise ValueError("none of the dataset's trials belong to the model's training subjects "
                         f"{fitted.extra.get('subjects')}; pass the model's own --dataset")
    return trials.subset(keep)


def calibration_images(fitted, train_trials: Trials | BandPowerTrials, n: int = 256,
                       seed: int = 0) -> np.ndarray:
    """A representative int8 calibration set: ``n`` images drawn from the training trials,
    stratified over subjects so every training subject's range is seen."""
    rng = np.random.default_rng(seed)
    subjects = sorted(set(train_trials.subject.tolist()))
    per = max(1, -(-n // len(subjects)))
    idx = []
    for s in subjects:
        own = np.flatnonzero(train_trials.subject == s)
        idx.extend(rng.permutation(own)[:per].tolist())
    idx = np.sort(rng.permutation(np.asarray(idx))[:n])
    return fitted.images(train_trials.subset(idx))


def held_out(fitted, trials):
    """The trials of ``trials`` that the model never saw in training.

    Subjects not in ``fitted.extra["subjects"]`` (training and validation subjects); when
    every subject was seen and the data have a single subject, the sessions not in
    ``fitted.extra["sessions"]`` ("subject/session").

    Parameters
    ----------
    fitted : painhelm.train.fit.Fitted
        The float model (``Fitted.load(folder / "model")``).
    trials : Trials | BandPowerTrials
        The dataset, typically the one the model was trained on.

    Returns
    -------
    test : Trials | BandPowerTrials
        The unseen trials.

    Raises
    ------
    ValueError
        When nothing is held out (or the model folder does not record its training
        subjects); the message says how to get test data.
    """
    seen = fitted.extra.get("subjects")
    if not seen:
        raise ValueError("the model folder does not record its training subjects (config.json 'subjects'); "
                         "pass the test data explicitly")
    unseen = ~np.isin(trials.subject.astype(str), list(seen))
    if unseen.any():
        return trials.subset(unseen)
    subjects = sorted(set(trials.subject.astype(str).tolist()))
    if len(subjects) == 1 and fitted.extra.get("sessions"):
        unseen = ~np.isin(trials.session_keys(), list(fitted.extra["sessions"]))
        if unseen.any():
            return trials.subset(unseen)
        raise ValueError(f"the model was trained on every session of {subjects[0]} "
                         f"({', '.join(fitted.extra['sessions'])}), so nothing is held out for testing; "
                         "retrain with --exclude-session SUBJECT/SESSION, or pass test data")
    raise ValueError(f"the model was trained on every subject of the data ({', '.join(subjects)}), so nothing "
                     "is held out for testing; retrain with --exclude-subject SUBJECT (or --exclude-session "
                     "for a one-subject dataset), or pass test data")


# --- metrics ------------------------------------------------------------------------------------
