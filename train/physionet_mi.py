"""PhysioNet EEG Motor Movement/Imagery Database as labelled trials ("physionet-mi").

64-channel EEG (10-10 system) at 160 Hz in EDF+ files ``SxxxRyy.edf``, one per run of
about 2 minutes with ~15 cued 4-s trials (annotations T0 rest, T1, T2). The task runs:

=================  ==========================  ==============  ==========
runs               task                        T1              T2
=================  ==========================  ==============  ==========
R03, R07, R11      execute left / right fist   left fist       right fist
R04, R08, R12      imagine left / right fist   left fist       right fist
R05, R09, R13      execute both fists / feet   both fists      both feet
R06, R10, R14      imagine both fists / feet   both fists      both feet
=================  ==========================  ==============  ==========

Labels are the body part, as a pain *location*: ``left_hand``, ``right_hand``,
``both_hands``, ``feet`` and (T0, optional) ``rest``; the pain *level* is unlabelled (-1).
Each run is one session (``"R03"``). The trials are cut by the same readers and label
mapping machinery as a user's own recordings (:mod:`painhelm.train.labels`), with the
mapping built in here.

Citation (Open Data Commons Attribution License v1.0): Schalk G, McFarland DJ,
Hinterberger T, Birbaumer N, Wolpaw JR. BCI2000: a general-purpose brain-computer
interface (BCI) system. IEEE Trans Biomed Eng 51(6):1034-1043, 2004; and Goldberger AL
et al. PhysioBank, PhysioToolkit, and PhysioNet: components of a new research resource
for complex physiologic signals. Circulation 101(23):e215-e220, 2000.
DOI of the dataset: 10.13026/C28G6P.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .dataset import DataError, Trials
from .labels import Mapping, concat_trials, mapping_from_dict, trials_from_raw
from .readers import read_raw

logger = logging.getLogger(__name__)

LOCATION_NAMES = ["left_hand", "right_hand", "both_hands", "feet", "rest"]
SFREQ = 160.0  # every run of S001 (a few other subjects were recorded at 128 Hz)
TASK_RUNS = tuple(range(3, 15))  # R01/R02 are eyes-open/closed baselines without cues

# (run - 3) % 4 -> (task, pair): the four task types repeat every four runs
_RUN_TYPES = {0: ("executed", "left_right"), 1: ("imagined", "left_right"),
              2: ("executed", "fists_feet"), 3: ("imagined", "fists_feet")}
_CUES = {"left_right": {"T1": "left_hand", "T2": "right_hand"},
         "fists_feet": {"T1": "both_hands", "T2": "feet"}}
_FILE = re.compile(r"^(S\d{3})R(\d{2})\.edf$", re.IGNORECASE)


def default_root() -> Path:
    """Where the data is looked for: ``$PAINHELM_SHARED_DATA/eegmmidb``, else ``../shared/data/eegmmidb``.

    The relative default is next to the repository (the folder holding ``train/``).
    """
    from .datasets import shared_data_dir

    return shared_data_dir() / "eegmmidb"


def run_info(run: int) -> tuple[str, str]:
    """``(task, pair)`` of a task run: ``("executed" | "imagined", "left_right" | "fists_feet")``."""
    if run not in TASK_RUNS:
        raise ValueError(f"run must be a task run {TASK_RUNS[0]}..{TASK_RUNS[-1]} (R01/R02 are baselines), got {run}")
    return _RUN_TYPES[(run - 3) % 4]


def parse_file_name(path: str | Path) -> tuple[str, int] | None:
    """``(subject, run)`` for a PhysioNet file name such as ``S001R03.edf``, else None."""
    m = _FILE.match(Path(path).name)
    return (m.group(1).upper(), int(m.group(2))) if m else None


def physionet_mapping(run: int, *, tmin: float = 0.0, tmax: float = 4.0, include_rest: bool = False) -> Mapping:
    """The built-in label mapping of one run (T1/T2, and T0 with ``include_rest``).

    Parameters
    ----------
    run : int
        Task run number, 3..14.
    tmin, tmax : float
        Trial window in seconds relative to each cue.
    include_rest : bool
        Also cut T0 (rest) trials, labelled ``rest``.

    Returns
    -------
    mapping : Mapping
        Validated exactly like a user's mapping file.
    """
    _, pair = run_info(run)
    events = {cue: {"location": loc} for cue, loc in _CUES[pair].items()}
    if include_rest:
        events["T0"] = {"location": "rest"}
    return mapping_from_dict({
        "name": "physionet-mi",
        "labels": {"level_names": [], "location_names": LOCATION_NAMES},
        "epochs": {"tmin": float(tmin), "tmax": float(tmax)},
        "events": events,
    }, source=f"<built-in physionet-mi mapping, run R{run:02d}>")


def _find_files(root: Path) -> dict[tuple[str, int], Path]:
    found = {}
    for p in sorted(root.rglob("*")):
        key = parse_file_name(p)
        if key is not None and p.is_file():
            found.setdefault(key, p)
    return found


def _parse_runs(runs) -> list[int]:
    out = []
    for r in runs:
        n = int(r[1:]) if isinstance(r, str) and r.upper().startswith("R") else r
        try:
            n = int(n)
        except (TypeError, ValueError):
            raise ValueError(f"runs must be run numbers or names like 'R03', got {r!r}") from None
        run_info(n)
        out.append(n)
    return out


def load_physionet_mi(*, root: str | Path | None = None, subjects: list[str] | None = None,
                      runs: list[int | str] | None = None, tmin: float = 0.0, tmax: float = 4.0,
                      n_times: int | None = None, include_rest: bool = False) -> Trials:
    """Cued trials of the PhysioNet motor movement/imagery runs, labelled by body part.

    Parameters
    ----------
    root : str | Path | None
        The ``eegmmidb`` folder (subject folders ``S001/`` with ``S001R03.edf`` ...;
        files are found at any depth). Default: :func:`default_root`, i.e.
        ``$PAINHELM_SHARED_DATA/eegmmidb`` or ``../shared/data/eegmmidb``.
    subjects : list of str | None
        Subjects to read (``["S001"]``); default every subject found.
    runs : list of int or str | None
        Task runs to read (``[3, 7]`` or ``["R03", "R07"]``, 3..14); default every task
        run found. A requested run without a file is an error.
    tmin, tmax : float
        Trial window in seconds relative to each cue (default 0.0-4.0 s: the whole cue).
    n_times : int | None
        Samples per trial; when given it sets ``tmax = tmin + n_times / 160`` (e.g. 640
        for 4 s, a multiple of 10 frames of 64 samples) and ``tmax`` is ignored.
    include_rest : bool
        Also cut the T0 rest periods as class ``rest`` (default False).

    Returns
    -------
    trials : Trials
        float32 µV data (n_trials, 64, n_times) with ``location`` in
        :data:`LOCATION_NAMES` and ``level`` -1; ``subject`` ``"S001"``, ``session`` the
        run (``"R03"``); metadata per trial: ``file``, ``onset`` (s), ``event`` (T0/T1/T2),
        ``run``, ``task`` (``"executed"``/``"imagined"``), ``pair``
        (``"left_right"``/``"fists_feet"``).

    Raises
    ------
    DataError
        The folder or a requested file is missing, or a file is unreadable.
    """
    root = Path(root) if root is not None else default_root()
    hint = ("download it from https://physionet.org/content/eegmmidb/1.0.0/ and pass root=..., or set "
            "PAINHELM_SHARED_DATA to the folder that holds eegmmidb/")
    if not root.is_dir():
        raise DataError(root, f"PhysioNet motor imagery data not found (looked for the folder {root}); {hint}")
    if n_times is not None:
        if int(n_times) < 1:
            raise ValueError(f"n_times must be a positive number of samples, got {n_times}")
        tmax = tmin + int(n_times) / SFREQ
    if tmax <= tmin:
        raise ValueError(f"tmax must be greater than tmin, got tmin={tmin} and tmax={tmax}")
    found = _find_files(root)
    if not found:
        raise DataError(root, f"no PhysioNet files (SxxxRyy.edf) in this folder; {hint}")
    subject_list = sorted({s for s, _ in found}) if subjects is None else [s.upper() for s in subjects]
    if runs is None:
        wanted = [(s, r) for s, r in sorted(found) if s in subject_list and r in TASK_RUNS]
    else:
        wanted = [(s, r) for s in subject_list for r in _parse_runs(runs)]
    missing = [f"{s}R{r:02d}.edf" for s, r in wanted if (s, r) not in found]
    if missing:
        raise DataError(root, f"missing {', '.join(missing)} (found {len(found)} PhysioNet files here)")
    if not wanted:
        raise DataError(root, f"no task runs (R03-R14) for subjects {subject_list} in this folder")

    parts = []
    for s, r in wanted:
        path = found[(s, r)]
        task, pair = run_info(r)
        raw = read_raw(path)
        t = trials_from_raw(raw, physionet_mapping(r, tmin=tmin, tmax=tmax, include_rest=include_rest),
                            subject=s, session=f"R{r:02d}", file=path)
        for m in t.metadata:
            m.update(run=f"R{r:02d}", task=task, pair=pair)
        parts.append(t)
        logger.info("%s: %d trials", path.name, len(t))
    return concat_trials(parts, name="physionet-mi")
