"""The ``laser-pain-features`` dataset: real pain-labelled band powers of five participants.

``all_features.csv`` (in ``../shared/data/laser-pain-features``) holds 201 epochs of five
participants (vp01-vp05), labelled low (0) or high (1) laser pain, with band powers of
delta, theta, alpha, beta and gamma at Cz, FCz, C3, C4, Fz and Pz stored as
``log10(power + 1e-10)`` (power in V², as the file's authors computed it; their band
edges are not stated in the file), plus ratios, asymmetries, N2/P2 amplitudes and 21
temporal features. These are already band powers, so the dataset is a
:class:`~painhelm.train.dataset.BandPowerTrials` with one frame per epoch and enters the
pipeline after the DSP step; the other 48 columns are kept in each trial's metadata
(``metadata[i]["features"]``) for classical baselines.

Derived from the laser-pain paradigm of Tiemann L, Hohn VD, Ta Dinh S, May ES, Nickel MM,
Gross J, Ploner M. Distinct patterns of brain activity mediate perceptual and motor and
autonomic responses to noxious stimuli. Nat Commun 9:4487, 2018. For research use only.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .dataset import UNLABELLED, BandPowerTrials, DataError
from .topomap import DEFAULT_MONTAGE, electrode_positions

CH_NAMES = ["Cz", "FCz", "C3", "C4", "Fz", "Pz"]
# nominal edges of the file's named bands (the file does not state them)
BAND_EDGES = {"delta": (1.0, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
              "gamma": (30.0, 45.0)}
LEVEL_NAMES = ["low", "high"]
FILE = "all_features.csv"


def load_laser_pain_features(root: str | Path, *, bands=("theta", "alpha", "beta")) -> BandPowerTrials:
    """Read ``root/all_features.csv`` into a :class:`BandPowerTrials` (n, 1 frame, bands, 6 ch).

    Parameters
    ----------
    root : path
        The ``laser-pain-features`` folder.
    bands : sequence of str
        Which of delta, theta, alpha, beta, gamma to keep, in this order.
    """
    path = Path(root) / FILE
    if not path.exists():
        raise DataError(path, "file not found; point PAINHELM_SHARED_DATA at the folder that holds "
                              "laser-pain-features/ (see ../shared/data/README.md)")
    unknown = [b for b in bands if b not in BAND_EDGES]
    if unknown or not bands:
        raise DataError(path, f"unknown bands {unknown}; choose from {list(BAND_EDGES)}")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(path, f"cannot read the CSV: {e}") from None
    if not rows:
        raise DataError(path, "the file has no rows")
    cols = [f"{ch}_{b}_power" for b in bands for ch in CH_NAMES]
    missing = [c for c in cols + ["label", "participant"] if c not in rows[0]]
    if missing:
        raise DataError(path, f"columns missing: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    power_cols = {f"{ch}_{b}_power" for b in BAND_EDGES for ch in CH_NAMES}
    try:
        logbp = np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)
        level = np.array([int(float(r["label"])) for r in rows])
        extra = [{k: float(v) for k, v in r.items() if k not in power_cols and k not in ("label", "participant")}
                 for r in rows]
    except ValueError as e:
        raise DataError(path, f"a value is not a number: {e}") from None
    if not np.all(np.isfinite(logbp)):
        raise DataError(path, "band powers contain NaN or infinite values")
    if set(np.unique(level)) - {0, 1}:
        raise DataError(path, f"labels must be 0 (low) or 1 (high), found {sorted(set(level.tolist()))}")
    subject = np.array([r["participant"] for r in rows])
    n = len(rows)
    return BandPowerTrials(
        logbp=logbp.reshape(n, 1, len(bands), len(CH_NAMES)),
        bands=tuple(BAND_EDGES[b] for b in bands), ch_names=list(CH_NAMES),
        pos=electrode_positions(CH_NAMES, DEFAULT_MONTAGE), level=level, location=np.full(n, UNLABELLED),
        subject=subject, session=subject, level_names=list(LEVEL_NAMES), location_names=[],
        band_names=list(bands), montage=DEFAULT_MONTAGE,
        metadata=[{"file": FILE, "row": i, "features": e} for i, e in enumerate(extra)],
        name="laser-pain-features")
