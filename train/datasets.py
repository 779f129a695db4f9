"""Built-in datasets by name (``--dataset NAME``), loaded once and then read from the cache.

========================  ==========================================================  ========
name                      what                                                        needs
========================  ==========================================================  ========
``synthetic-pain``        generated pain EEG, 5 subjects, 4 levels x 2 locations      nothing
``physionet-mi``          PhysioNet motor movement/imagery S001, runs R03-R10         files
``laser-pain-features``   laser-pain band powers, 5 participants, low vs high pain    files
========================  ==========================================================  ========

The real datasets live in ``../shared/data`` (see its README); ``PAINHELM_SHARED_DATA``
points elsewhere. The product never requires them: ``synthetic-pain`` is the default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .dataset import BandPowerTrials, DataError, Trials

DEFAULT_DATASET = "synthetic-pain"


def shared_data_dir() -> Path:
    """Where the real datasets are looked for: ``$PAINHELM_SHARED_DATA`` or ``../shared/data``."""
    env = os.environ.get("PAINHELM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one built-in dataset and how it is featurised by default."""

    name: str
    description: str
    loader: Callable[..., Trials | BandPowerTrials]
    n_frames: int  # default frames per trial
    folder: str | None = None  # subfolder of the shared data, None when generated
    split: str = "subject"  # what cross-validation folds over: subject or session
    defaults: tuple = ()  # (param, value) pairs given to the loader unless overridden
    modules: tuple = ()  # modules (under painhelm.train) whose code shapes the result: part of the cache key


def _synthetic(**params) -> Trials:
    from .synthetic import make_synthetic

    return make_synthetic(**params)


def _physionet(**params) -> Trials:
    from .physionet_mi import load_physionet_mi

    return load_physionet_mi(**params)  # its default root is shared_data_dir() / "eegmmidb"


def _laser(**params) -> BandPowerTrials:
    from .laser_pain import load_laser_pain_features

    root = params.pop("root", shared_data_dir() / "laser-pain-features")
    return load_laser_pain_features(root, **params)


DATASETS = {
    spec.name: spec for spec in (
        DatasetSpec("synthetic-pain", "synthetic pain EEG (no files needed): 4 pain levels x left/right hand",
                    _synthetic, n_frames=4, modules=("synthetic",)),
        DatasetSpec("physionet-mi", "PhysioNet EEG motor movement/imagery, subject S001, runs R03-R10 "
                    "(left/right fist, both fists, feet)", _physionet, n_frames=7, folder="eegmmidb",
                    split="session", defaults=(("tmin", 0.5), ("n_times", 560)),  # 0.5-4 s: 7 frames of 0.5 s
                    modules=("physionet_mi", "labels", "readers")),
        DatasetSpec("laser-pain-features", "laser pain band powers, 5 participants, low vs high "
                    "(already band powers: enters after the DSP)", _laser, n_frames=1,
                    folder="laser-pain-features", modules=("laser_pain",)),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The spec of a built-in dataset; an unknown name lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(None, f"unknown dataset {name!r}; built-in datasets: {', '.join(DATASETS)}") from None


def load_dataset(name: str = DEFAULT_DATASET, *, use_cache: bool = True, **params) -> Trials | BandPowerTrials:
    """Load a built-in dataset; the processed table is cached on disk (see ``train/cache.py``).

    ``params`` go to the dataset's loader (e.g. ``n_subjects``/``seed`` for synthetic-pain,
    ``runs``/``tmax`` for physionet-mi, ``bands`` for laser-pain-features). The cache key
    covers the parameters, the source files' contents and the loader's code.
    """
    import importlib

    from .cache import make_key, memo
    from .dataset import _TrialTable

    spec = get_spec(name)
    params = {**dict(spec.defaults), **params}
    files: list[Path] = []
    if spec.folder is not None:
        root = Path(params.get("root") or shared_data_dir() / spec.folder)
        if not root.exists():
            raise DataError(root, f"dataset {name!r} needs this folder, which does not exist; set "
                                  "PAINHELM_SHARED_DATA to the folder holding it (see ../shared/data/README.md)")
        files = sorted(p for p in root.rglob("*") if p.is_file())
    modules = [importlib.import_module(f"{__package__}.{m}") for m in spec.modules + ("dataset", "topomap")]
    key = make_key(f"dataset-{name}", {k: str(v) for k, v in params.items()}, files=files, modules=modules)
    return memo(key, lambda: spec.loader(**params), _TrialTable.load, lambda v, p: v.save(p), use_cache)


def load_recordings(path: str | Path, mapping: str | Path, *, use_cache: bool = True) -> Trials:
    """A user's own recordings: every EEG file under ``path`` labelled through a mapping file.

    ``mapping`` is the TOML file described in ``docs/data.md``; subject and session come
    from its ``[files] pattern``, else from BIDS-style or PhysioNet-style file names, else
    the file name. Any unusable file stops the load with a :class:`DataError` naming it
    (``painhelm data check`` lists all of them at once). Cached like the built-in datasets.
    """
    from . import dataset, labels, readers
    from .cache import make_key, memo

    root = Path(path)
    if not root.exists():
        raise DataError(root, "no such file or folder")
    m = labels.load_mapping(mapping)
    if root.is_file() and readers.recording_format(root) is None:
        raise DataError(root, "not an EEG recording (EDF/BDF, BrainVision .vhdr, EEGLAB .set, FIF)")
    files, _ = readers.find_recordings(root)
    if not files:
        raise DataError(root, "no EEG recordings found (EDF/BDF, BrainVision .vhdr, EEGLAB .set, FIF)")

    def build() -> Trials:
        import sys

        from tqdm.auto import tqdm

        parts = []
        for f in tqdm(files, desc="reading recordings", unit="file", disable=not sys.stderr.isatty() or len(files) < 3):
            subject, session = labels.infer_subject_session(f, m.file_pattern)
            parts.append(labels.trials_from_raw(readers.read_raw(f), m, subject, session, file=f))
        return labels.concat_trials(parts, name=m.name or root.name)

    companions = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else files
    key = make_key("recordings", {"root": str(root.resolve())}, files=companions + [Path(mapping)],
                   modules=(dataset, labels, readers))
    return memo(key, build, dataset._TrialTable.load, lambda v, p: v.save(p), use_cache)


def load_trials(dataset: str, mapping: str | Path | None = None, **params) -> Trials | BandPowerTrials:
    """What ``--dataset`` / ``--mapping`` name: a built-in dataset, or a user's recordings.

    With ``mapping``, ``dataset`` is a folder (or file) of recordings labelled by that
    mapping file; without it, a built-in name (``params`` go to its loader). A path given
    without a mapping is explained rather than reported as an unknown name.
    """
    if mapping is not None:
        return load_recordings(dataset, mapping)
    if dataset not in DATASETS and Path(dataset).exists():
        raise DataError(dataset, "own recordings need --mapping FILE (see docs/data.md)")
    return load_dataset(dataset, **params)


def default_n_frames(trials: Trials | BandPowerTrials) -> int:
    """Frames per trial when none is asked for: the table's own for band powers, the built-in
    dataset's default, else 4."""
    if isinstance(trials, BandPowerTrials):
        return int(trials.logbp.shape[1])
    spec = DATASETS.get(trials.name)
    return spec.n_frames if spec is not None else 4
