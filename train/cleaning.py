"""Cleaning: band-pass / notch filters and ICA artifact removal as one fixed matrix.

Step 1 of the method (``docs/cleaning.md``). Filters run on the host only. ICA is fitted
on training data with MNE (:class:`mne.preprocessing.ICA`), ocular and muscle components
are rejected automatically, and the result is exported as one ``(n_ch, n_ch)`` matrix:
once fitted, ICA is linear (pre-whiten, PCA, unmix, zero the rejected sources, remix,
undo the whitening), so ``cleaned = matrix @ x`` for each sample block, which is all the
helmet does (``painhelm.firmware.clean.apply_matrix``).

Typical use::

    raw = filter_raw(raw)                       # continuous data, before epoching
    cleaning = fit_cleaning(raw)                # or fit_cleaning(trials)
    trials = apply_cleaning(trials, cleaning)   # host; the helmet applies cleaning.matrix
    plot_cleaning(cleaning, "ica_excluded.png")
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path

import mne
import numpy as np

from .dataset import DataError, Trials

logger = logging.getLogger(__name__)

# Channels that stand in for an EOG electrode when a recording has none: the most frontal
# 10-10 sites, where blinks and vertical eye movements are largest.
FRONTAL_PROXIES = ("Fp1", "Fp2", "Fpz", "AF7", "AF8", "AFz")
_EOG_NAME = re.compile(r"^(H|V)?EOG", re.IGNORECASE)
_METHODS = ("infomax", "picard", "fastica")
_UV = 1e6  # Trials are in µV, MNE keeps EEG in V


def _check_option(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _check_filter_args(sfreq: float, l_freq, h_freq, notch_freqs) -> tuple:
    """Validate filter edges against ``sfreq``; return notch frequencies as a tuple."""
    nyquist = sfreq / 2.0
    if l_freq is not None and not 0 < l_freq < nyquist:
        raise ValueError(f"l_freq must be above 0 and below the Nyquist frequency "
                         f"(sfreq / 2 = {nyquist:g} Hz), got l_freq={l_freq}")
    if h_freq is not None and not 0 < h_freq < nyquist:
        raise ValueError(f"h_freq must be above 0 and below the Nyquist frequency "
                         f"(sfreq / 2 = {nyquist:g} Hz), got h_freq={h_freq}")
    if l_freq is not None and h_freq is not None and l_freq >= h_freq:
        raise ValueError(f"l_freq ({l_freq}) must be below h_freq ({h_freq})")
    notch = tuple(float(f) for f in (notch_freqs or ()))
    for f in notch:
        if not 0 < f < nyquist:
            raise ValueError(f"each notch frequency must be above 0 and below the Nyquist frequency "
                             f"(sfreq / 2 = {nyquist:g} Hz), got {f:g} in notch_freqs={notch}")
    return notch


def filter_eeg(data: np.ndarray, sfreq: float, l_freq: float | None = 1.0, h_freq: float | None = 45.0,
               notch_freqs=(50.0,)) -> np.ndarray:
    """Notch and band-pass filter EEG arrays with MNE's zero-phase FIR filters.

    Parameters
    ----------
    data : array, shape (..., n_times)
        EEG, any unit; filtered along the last axis, each row on its own.
    sfreq : float
        Sampling frequency in Hz.
    l_freq, h_freq : float | None
        Pass band edges in Hz (``None``: no high-pass / no low-pass). ``h_freq`` must lie
        below the Nyquist frequency.
    notch_freqs : sequence of float
        Line-noise frequencies to notch (e.g. ``(50.0, 100.0)``); empty for none.

    Returns
    -------
    filtered : array, shape (..., n_times), float64

    Notes
    -----
    Filter continuous recordings before cutting them into trials when you can: a 1 Hz
    high-pass at 128 Hz is a 423-tap FIR, longer than a 2 s trial, and MNE then warns
    that the edges are distorted.
    """
    notch = _check_filter_args(sfreq, l_freq, h_freq, notch_freqs)
    x = np.array(data, dtype=np.float64)
    if notch:
        x = mne.filter.notch_filter(x, sfreq, freqs=np.array(notch), verbose=False)
    if l_freq is not None or h_freq is not None:
        x = mne.filter.filter_data(x, sfreq, l_freq, h_freq, verbose=False)
    return x


def filter_raw(raw: mne.io.BaseRaw, l_freq: float | None = 1.0, h_freq: float | None = 45.0,
               notch_freqs=(50.0,)) -> mne.io.BaseRaw:
    """A notch- and band-pass-filtered copy of a continuous recording (the preferred place).

    Parameters
    ----------
    raw : mne.io.Raw
        The recording; left unchanged.
    l_freq, h_freq, notch_freqs
        As in :func:`filter_eeg`.

    Returns
    -------
    raw : mne.io.Raw
        The filtered copy, its ``info["highpass"]`` / ``info["lowpass"]`` updated. EEG,
        EOG, ECG and EMG channels are filtered (MNE's default would skip EOG, which then
        would not match the EEG it is compared with); stimulus channels are not.
    """
    notch = _check_filter_args(raw.info["sfreq"], l_freq, h_freq, notch_freqs)
    raw = raw.copy().load_data()
    picks = mne.pick_types(raw.info, meg=True, eeg=True, eog=True, ecg=True, emg=True, seeg=True,
                           ecog=True, dbs=True, exclude=[])
    if notch:
        raw.notch_filter(np.array(notch), picks=picks, verbose=False)
    if l_freq is not None or h_freq is not None:
        raw.filter(l_freq, h_freq, picks=picks, verbose=False)
    return raw


def filter_trials(trials: Trials, l_freq: float | None = 1.0, h_freq: float | None = 45.0,
                  notch_freqs=(50.0,)) -> Trials:
    """The same trials, each notch- and band-pass-filtered on its own.

    Prefer :func:`filter_raw` on the continuous recording before epoching; use this for
    data that only exists as trials (see the notes of :func:`filter_eeg`).

    Parameters
    ----------
    trials : Trials
    l_freq, h_freq, notch_freqs
        As in :func:`filter_eeg`.

    Returns
    -------
    trials : Trials
        A copy with ``data`` filtered (float32, µV).
    """
    data = filter_eeg(trials.data, trials.sfreq, l_freq, h_freq, notch_freqs)
    return replace(trials, data=data.astype(np.float32))


@dataclass
class Cleaning:
    """A fitted ICA cleaning, reduced to what the helmet needs plus what a person inspects.

    ``matrix @ x`` equals ``ica.apply`` on ``x`` minus ``offset``: a constant per channel,
    which the band powers remove anyway (each frame's mean is subtracted).
    """

    matrix: np.ndarray  # (n_ch, n_ch) float32, rows: cleaned channels, columns: input channels
    excluded: list[int]  # rejected ICA component indices, ascending
    reasons: dict[int, str]  # component index -> "eog" or "muscle"
    ch_names: list[str]  # order of the matrix' rows and columns (= the fitted data's channels)
    ica: mne.preprocessing.ICA  # the fitted ICA, ica.exclude == excluded
    offset: np.ndarray  # (n_ch,) float64, µV: ica.apply(x) = matrix @ x + offset
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # "eog" (n_eog_ch, n_comp), "muscle" (n_comp,)
    notes: list[str] = field(default_factory=list)  # what was done or skipped, and why

    def __repr__(self) -> str:
        return (f"<Cleaning | {len(self.ch_names)} channels, {self.ica.n_components_} components, "
                f"excluded {self.reasons}>")


def _trials_to_epochs(trials: Trials) -> mne.EpochsArray:
    """Trials as MNE epochs in V, with a montage when the positions are usable."""
    info = mne.create_info(list(trials.ch_names), trials.sfreq, "eeg")
    pos = np.asarray(trials.pos, dtype=np.float64)
    if np.all(np.isfinite(pos)) and np.all(np.linalg.norm(pos, axis=1) > 0):
        info.set_montage(mne.channels.make_dig_montage(dict(zip(trials.ch_names, pos)), coord_frame="head"))
    return mne.EpochsArray(trials.data.astype(np.float64) / _UV, info, verbose=False)


def _eog_channels(inst, eog_ch) -> tuple[list[str], str]:
    """Channels to score ocular components against, and which kind they are."""
    if eog_ch is not None:
        names = [eog_ch] if isinstance(eog_ch, str) else list(eog_ch)
        missing = [n for n in names if n not in inst.ch_names]
        if missing:
            raise ValueError(f"eog_ch names channels that are not in the data: {missing}")
        return names, "given"
    types = inst.get_channel_types()
    names = [n for n, t in zip(inst.ch_names, types) if t == "eog" or _EOG_NAME.match(n)]
    if names:
        return names, "EOG"
    lower = {p.lower() for p in FRONTAL_PROXIES}
    return [n for n in inst.ch_names if n.lower() in lower], "frontal proxy"


def _has_positions(info, ch_names) -> bool:
    locs = np.array([info["chs"][info["ch_names"].index(n)]["loc"][:3] for n in ch_names])
    return bool(np.all(np.isfinite(locs)) and np.all(np.linalg.norm(locs, axis=1) > 0))


def _cleaning_matrix(ica: mne.preprocessing.ICA, exclude) -> tuple[np.ndarray, np.ndarray]:
    """``(P, c)`` over ``ica.ch_names`` such that ``ica.apply`` maps x to ``P @ x + c``.

    Written out from ``ICA._pick_sources`` with the documented attributes: x is scaled by
    ``1 / pre_whitener_``, centred by ``pca_mean_``, rotated into PCA space, the first
    ``n_components_`` PCA signals unmixed, the rejected sources zeroed, and everything
    undone in reverse. PCA components beyond ``n_components_`` pass through unchanged.
    """
    if ica.noise_cov is not None or ica.n_pca_components is not None:
        raise ValueError("the cleaning matrix is derived for ICA(noise_cov=None, n_pca_components=None)")
    k = ica.n_components_
    pca = ica.pca_components_  # (n_pca, n_ica_ch)
    n_pca = pca.shape[0]
    unmix = np.eye(n_pca)
    unmix[:k, :k] = ica.unmixing_matrix_
    mix = np.eye(n_pca)
    mix[:k, :k] = ica.mixing_matrix_
    keep = np.ones(n_pca)
    keep[list(exclude)] = 0.0
    proj = pca.T @ mix @ (keep[:, None] * unmix) @ pca  # in whitened units
    scale = ica.pre_whitener_[:, 0]
    matrix = scale[:, None] * proj / scale[None, :]
    mean = ica.pca_mean_ if ica.pca_mean_ is not None else np.zeros(len(scale))
    offset = scale * (mean - proj @ mean)
    return matrix, offset


def fit_cleaning(inst, n_components: int | float | None = None, method: str = "infomax",
                 fit_highpass: float | None = 1.0, eog_ch=None, eog_threshold: float = 3.0,
                 eog_corr: float | None = 0.5, muscle: bool = True, muscle_threshold: float = 0.5,
                 max_iter="auto", random_state: int = 0) -> Cleaning:
    """Fit ICA on training data, reject ocular and muscle components, export one matrix.

    Parameters
    ----------
    inst : mne.io.Raw | Trials
        Training data. A Raw is used as it is (ICA picks its good data channels; other
        channels pass through the matrix unchanged). Trials become MNE epochs with every
        channel typed EEG, so all of them are cleaned.
    n_components : int | float | None
        ICA components: an int, a fraction of explained variance (e.g. 0.99), or None
        for the data's rank. With few components the blink mixes with brain sources and
        the z-scored EOG test weakens (see ``eog_corr``); keep it near the rank.
    method : "infomax" | "picard" | "fastica"
        ICA algorithm; infomax is fitted as extended infomax (sub- and super-Gaussian
        sources). picard needs python-picard, fastica needs scikit-learn.
    fit_highpass : float | None
        High-pass (Hz) applied to the copy ICA is fitted on, as MNE recommends: slow drifts
        make sources non-independent. The exported matrix applies to unfiltered data too.
        Raw: MNE's FIR; Trials: 4th-order zero-phase Butterworth, since a 1 Hz FIR is
        longer than most trials.
    eog_ch : str | list of str | None
        Channels to detect ocular components with. None: EOG channels (type "eog" or a
        name starting with EOG/HEOG/VEOG), else the frontal proxies among
        ``FRONTAL_PROXIES``; with neither, ocular detection is skipped (noted).
    eog_threshold : float
        z-score threshold of :meth:`mne.preprocessing.ICA.find_bads_eog` (MNE's
        default measure: each source's correlation with the 1-10 Hz filtered EOG
        channel, z-scored across components, iteratively).
    eog_corr : float | None
        Also reject a component whose absolute correlation with an EOG channel is at
        least this. The z-score alone fails with few components: one outlier among k
        values reaches at most z = (k - 1) / sqrt(k), 3.75 for k = 16, so a blink
        component correlating 0.74 with the EOG was missed on 16 channels. None: z-score
        only.
    muscle : bool
        Detect muscle components with :meth:`~mne.preprocessing.ICA.find_bads_muscle`
        (spectral slope 7-45 Hz, peripheral focus, spatial roughness). Skipped, with a
        note, when the channels have no positions (the slope alone flags ordinary beta)
        or when ``sfreq`` is too low for the slope band.
    muscle_threshold : float
        Threshold of ``find_bads_muscle`` (per criterion; MNE raises it to the power of
        the number of criteria).
    max_iter : int | "auto"
        Maximum ICA iterations.
    random_state : int
        Seed of the ICA's initial unmixing matrix, so a fit is reproducible.

    Returns
    -------
    cleaning : Cleaning
        ``matrix`` (n_ch, n_ch) float32 over ``ch_names``, ``excluded`` components,
        their ``reasons``, the fitted ``ica``, ``offset``, ``scores`` and ``notes``.
    """
    _check_option("method", method, _METHODS)
    need = {"picard": "picard", "fastica": "sklearn"}.get(method)
    if need and find_spec(need) is None:
        raise ValueError(f"method={method!r} needs the {need!r} package, which is not installed; "
                         f"use method='infomax'")
    source = None
    if isinstance(inst, Trials):
        source = inst.name or None
        data_inst = _trials_to_epochs(inst)
        n_samples = inst.data.shape[0] * inst.data.shape[2]
    elif isinstance(inst, mne.io.BaseRaw):
        source = inst.filenames[0] if inst.filenames and inst.filenames[0] else None
        data_inst = inst.copy().load_data()
        n_samples = inst.n_times
    else:
        raise TypeError(f"inst must be an mne.io.Raw or a Trials, got {type(inst).__name__}")

    picks = mne.pick_types(data_inst.info, meg=True, eeg=True, seeg=True, ecog=True, dbs=True, exclude="bads")
    n_ch = len(picks)
    n_fit = n_components if isinstance(n_components, int) else n_ch
    if n_ch < 2:
        raise DataError(source, f"ICA needs at least 2 EEG channels, got {n_ch}")
    if n_samples < n_fit ** 2:
        raise DataError(source, f"too few samples to fit ICA: {n_samples} samples for {n_fit} components "
                                f"(at least n_components**2 = {n_fit ** 2}; 20 * n_components**2 = "
                                f"{20 * n_fit ** 2} is recommended)")
    data = data_inst.get_data(picks=picks)
    if not np.all(np.isfinite(data)):
        bad = [data_inst.ch_names[p] for p, row in zip(picks, data) if not np.all(np.isfinite(row))]
        raise DataError(source, f"non-finite samples in channels {bad}; interpolate or drop them before ICA")
    if n_samples < 20 * n_fit ** 2:
        logger.warning("ICA: %d samples for %d components, fewer than the recommended 20 * n**2 = %d",
                       n_samples, n_fit, 20 * n_fit ** 2)
    if n_components is None:
        n_components = min(n_ch, mne.compute_rank(data_inst, rank=None, verbose=False).get("eeg", n_ch))

    fit_inst = data_inst
    if fit_highpass is not None:
        _check_filter_args(data_inst.info["sfreq"], fit_highpass, None, ())
        iir = isinstance(data_inst, mne.BaseEpochs)
        fit_inst = data_inst.copy().filter(fit_highpass, None, method="iir" if iir else "fir", verbose=False)

    fit_params = {"infomax": {"extended": True}, "picard": {"ortho": False, "extended": True}}.get(method)
    ica = mne.preprocessing.ICA(n_components=n_components, method=method, fit_params=fit_params,
                                max_iter=max_iter, random_state=random_state)
    ica.fit(fit_inst, picks=picks, verbose=False)
    logger.info("ICA: %s, %d components on %d channels, %d iterations",
                method, ica.n_components_, len(ica.ch_names), ica.n_iter_)

    reasons: dict[int, str] = {}
    scores: dict[str, np.ndarray] = {}
    notes: list[str] = []
    eog_names, kind = _eog_channels(data_inst, eog_ch)
    if eog_names:
        idx, sc = ica.find_bads_eog(fit_inst, ch_name=eog_names, threshold=eog_threshold,
                                    measure="zscore", verbose=False)
        scores["eog"] = corr = np.atleast_2d(np.asarray(sc))  # (n_eog_ch, n_components) correlations
        by_z = sorted(int(i) for i in idx)
        by_r = [] if eog_corr is None else [int(i) for i in np.flatnonzero(np.abs(corr).max(axis=0) >= eog_corr)]
        reasons.update({i: "eog" for i in by_z + by_r})
        notes.append(f"ocular: scored against {kind} channels {eog_names}: z > {eog_threshold:g}: "
                     f"components {by_z}; |r| >= {eog_corr}: components {by_r}")
    else:
        notes.append(f"ocular detection skipped: no EOG channel and none of {list(FRONTAL_PROXIES)}")

    sfreq = data_inst.info["sfreq"]
    muscle_h = min(45.0, 0.45 * sfreq)  # MNE's slope band, kept clear of the Nyquist frequency
    if not muscle:
        notes.append("muscle detection not requested")
    elif muscle_h - 7.0 < 15.0:
        notes.append(f"muscle detection skipped: sfreq={sfreq:g} Hz leaves only 7-{muscle_h:g} Hz "
                     f"for the spectral slope")
    elif not _has_positions(data_inst.info, ica.ch_names):
        notes.append("muscle detection skipped: channels have no positions (the spectral slope "
                     "alone also flags ordinary beta activity)")
    else:
        idx, sc = ica.find_bads_muscle(fit_inst, threshold=muscle_threshold, h_freq=muscle_h, verbose=False)
        scores["muscle"] = np.asarray(sc)
        new = [int(i) for i in idx if int(i) not in reasons]  # ocular takes precedence
        reasons.update({i: "muscle" for i in new})
        notes.append(f"muscle: slope 7-{muscle_h:g} Hz, focus, smoothness, score > "
                     f"{muscle_threshold:g}**3: components {sorted(int(i) for i in idx)}")
    for note in notes:
        logger.info("ICA %s", note)

    excluded = sorted(reasons)
    ica.exclude = list(excluded)
    proj, offset_ica = _cleaning_matrix(ica, excluded)
    # channels the ICA did not use (EOG, stim, bads of a Raw) pass through unchanged
    ch_names = list(data_inst.ch_names)
    where = [ch_names.index(n) for n in ica.ch_names]
    matrix = np.eye(len(ch_names))
    matrix[np.ix_(where, where)] = proj
    offset = np.zeros(len(ch_names))
    offset[where] = offset_ica * _UV
    return Cleaning(matrix=matrix.astype(np.float32), excluded=excluded,
                    reasons={i: reasons[i] for i in excluded}, ch_names=ch_names, ica=ica,
                    offset=offset, scores=scores, notes=notes)


def apply_cleaning(trials: Trials, matrix) -> Trials:
    """Apply a cleaning matrix to every trial: ``data[i] = matrix @ data[i]``.

    Parameters
    ----------
    trials : Trials
    matrix : Cleaning | array, shape (n_ch, n_ch)
        A :class:`Cleaning` (its channel names must equal ``trials.ch_names``) or its
        matrix (channels assumed in ``trials.ch_names`` order).

    Returns
    -------
    trials : Trials
        A copy with cleaned ``data`` (float32, µV); the constant ``offset`` is not added.
    """
    if isinstance(matrix, Cleaning):
        if list(matrix.ch_names) != list(trials.ch_names):
            raise ValueError(f"the cleaning was fitted on channels {matrix.ch_names}, "
                             f"but the trials have {trials.ch_names}")
        matrix = matrix.matrix
    m = np.asarray(matrix, dtype=np.float64)
    n_ch = len(trials.ch_names)
    if m.shape != (n_ch, n_ch):
        raise ValueError(f"matrix must have shape (n_ch, n_ch) = ({n_ch}, {n_ch}), got {m.shape}")
    data = np.einsum("ij,...jt->...it", m, trials.data.astype(np.float64))
    return replace(trials, data=data.astype(np.float32))


def plot_cleaning(cleaning: Cleaning, path: str | Path) -> Path:
    """Write a PNG of the excluded components' scalp maps, titled with the reason.

    Parameters
    ----------
    cleaning : Cleaning
    path : str | Path
        The PNG to write.

    Returns
    -------
    path : Path

    Notes
    -----
    Needs channel positions. With no excluded component, all components are drawn so the
    reader can see what was kept.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    picks = cleaning.excluded or list(range(cleaning.ica.n_components_))
    figs = cleaning.ica.plot_components(picks=picks, show=False)
    fig = figs[0] if isinstance(figs, list) else figs
    for ax in fig.axes:
        m = re.match(r"ICA(\d+)", ax.get_title())
        if m and int(m.group(1)) in cleaning.reasons:
            ax.set_title(f"{ax.get_title()} ({cleaning.reasons[int(m.group(1))]})")
    path = Path(path)
    fig.savefig(path, dpi=100)
    for f in figs if isinstance(figs, list) else [figs]:
        plt.close(f)
    return path
