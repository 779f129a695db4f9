"""The dataset representation every reader and generator produces.

Two tables of labelled trials, one row per trial:

- :class:`Trials` holds raw EEG (``data``: n_trials x n_ch x n_times, in µV) and enters the
  pipeline at the cleaning / band-power step;
- :class:`BandPowerTrials` holds log band powers that were computed elsewhere (``logbp``:
  n_trials x n_frames x n_bands x n_ch) and enters after the band-power step.

Both carry the same labels and bookkeeping, named as MNE names them: ``ch_names``,
``sfreq``, ``montage`` (the montage's name or file) and ``pos`` (head-frame 3-D electrode
positions in metres, n_ch x 3, what the topomaps are built from). Labels are integer class
indices into ``level_names`` / ``location_names``; -1 means "not labelled". ``subject`` and
``session`` are strings (a session is a run for PhysioNet). ``metadata`` has one dict per
trial (source file, onset in seconds, event name ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

UNLABELLED = -1


class DataError(ValueError):
    """A recording or dataset that cannot be used, with the file and the problem named.

    User mistakes (a truncated EDF, a missing channel, a mapping file with no matching
    events) raise this; the CLI prints ``str(err)`` and exits non-zero, never a traceback.
    """

    def __init__(self, path, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

# fields that have one entry per trial; everything else describes the whole set
_PER_TRIAL = ("data", "logbp", "level", "location", "subject", "session", "metadata")


class _TrialTable:
    """Row selection, length and npz round trip shared by both trial tables."""

    def __len__(self) -> int:
        return len(self.level)

    def subset(self, mask) -> "_TrialTable":
        """The trials where ``mask`` is true (a boolean array or an index array)."""
        idx = np.arange(len(self))[np.asarray(mask)]
        changes = {}
        for f in fields(self):
            if f.name in _PER_TRIAL:
                v = getattr(self, f.name)
                changes[f.name] = [v[i] for i in idx] if isinstance(v, list) else v[idx]
        return replace(self, **changes)

    def labelled(self, head: str) -> "_TrialTable":
        """The trials that have a label for ``head`` ("level" or "location")."""
        return self.subset(getattr(self, head) != UNLABELLED)

    def session_keys(self) -> np.ndarray:
        """``"subject/session"`` of every trial: sessions are named per subject ("R03" of S001)."""
        return np.char.add(np.char.add(self.subject.astype(str), "/"), self.session.astype(str))

    def class_counts(self, head: str) -> dict[str, int]:
        """Number of trials per class name of ``head``, unlabelled trials left out."""
        names = getattr(self, head + "_names")
        y = getattr(self, head)
        return {name: int(np.sum(y == i)) for i, name in enumerate(names)}

    def save(self, path: str | Path) -> None:
        """Write the table to one ``.npz`` file (arrays as arrays, the rest as JSON)."""
        arrays, meta = {}, {"class": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                arrays[f.name] = v
            else:
                meta[f.name] = v
        tmp = Path(str(path) + ".tmp.npz")
        np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta, default=json_default).encode(), np.uint8),
                 **arrays)
        tmp.replace(path)  # never a half-written cache file under the real name

    @staticmethod
    def load(path: str | Path) -> "_TrialTable":
        """Read a table written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        cls = {"Trials": Trials, "BandPowerTrials": BandPowerTrials}[meta.pop("class")]
        if "bands" in meta:
            meta["bands"] = tuple(tuple(b) for b in meta["bands"])
        return cls(**arrays, **meta)


def json_default(v):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths in tables and model folders."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


@dataclass
class Trials(_TrialTable):
    """Labelled raw EEG trials of equal length."""

    data: np.ndarray  # (n_trials, n_ch, n_times) float32, µV
    ch_names: list[str]
    sfreq: float
    pos: np.ndarray  # (n_ch, 3) head-frame positions, metres
    level: np.ndarray  # (n_trials,) int64, UNLABELLED where unknown
    location: np.ndarray  # (n_trials,) int64
    subject: np.ndarray  # (n_trials,) str
    session: np.ndarray  # (n_trials,) str
    level_names: list[str] = field(default_factory=list)
    location_names: list[str] = field(default_factory=list)
    montage: str = ""
    metadata: list[dict] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        _check_common(self, n_ch=self.data.shape[1] if self.data.ndim == 3 else -1)
        if self.data.ndim != 3:
            raise ValueError(f"data must be (n_trials, n_ch, n_times), got shape {self.data.shape}")

    @property
    def n_times(self) -> int:
        return int(self.data.shape[2])


@dataclass
class BandPowerTrials(_TrialTable):
    """Labelled log band powers, for data that arrives already past the DSP step."""

    logbp: np.ndarray  # (n_trials, n_frames, n_bands, n_ch) float32, log10(power)
    bands: tuple  # ((l_freq, h_freq), ...) in Hz
    ch_names: list[str]
    pos: np.ndarray  # (n_ch, 3)
    level: np.ndarray
    location: np.ndarray
    subject: np.ndarray
    session: np.ndarray
    level_names: list[str] = field(default_factory=list)
    location_names: list[str] = field(default_factory=list)
    band_names: list[str] = field(default_factory=list)
    montage: str = ""
    metadata: list[dict] = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        _check_common(self, n_ch=self.logbp.shape[3] if self.logbp.ndim == 4 else -1)
        if self.logbp.ndim != 4 or self.logbp.shape[2] != len(self.bands):
            raise ValueError(f"logbp must be (n_trials, n_frames, n_bands={len(self.bands)}, n_ch), "
                             f"got shape {self.logbp.shape}")


def _check_common(t, n_ch: int) -> None:
    """Coerce label arrays to their dtypes and check that the shapes agree."""
    t.level = np.asarray(t.level, dtype=np.int64)
    t.location = np.asarray(t.location, dtype=np.int64)
    t.subject = np.asarray(t.subject).astype(str)
    t.session = np.asarray(t.session).astype(str)
    t.pos = np.asarray(t.pos, dtype=np.float64)
    t.ch_names = list(t.ch_names)
    n = len(t.level)
    lead = t.data if hasattr(t, "data") else t.logbp
    if len(lead) != n:
        raise ValueError(f"{len(lead)} trials of data but {n} level labels")
    if not t.metadata:
        t.metadata = [{} for _ in range(n)]
    for name in ("location", "subject", "session", "metadata"):
        if len(getattr(t, name)) != n:
            raise ValueError(f"{name} has {len(getattr(t, name))} entries for {n} trials")
    if n_ch != len(t.ch_names) or t.pos.shape != (len(t.ch_names), 3):
        raise ValueError(f"{len(t.ch_names)} ch_names, but data has {n_ch} channels and pos has shape {t.pos.shape}")
