"""Vectorised band powers: the host's numpy version of ``painhelm.firmware.dsp``.

Same definition (Welch per frame, see the firmware module's docstring), same constants and
helpers, imported from the firmware: the one source of truth. ``tests/test_dsp.py`` checks
this equals ``scipy.signal.welch`` summed over the band bins, and that the firmware's
kernels equal this under real MicroPython.
"""

from __future__ import annotations

import logging

import numpy as np

from painhelm.firmware.dsp import (BAND_NAMES, BAND_NAMES_GAMMA, BANDS, BANDS_GAMMA, LOG_EPS,
                                   band_bins, hann, onesided_factor, welch_segments)

__all__ = ["BANDS", "BAND_NAMES", "BANDS_GAMMA", "BAND_NAMES_GAMMA", "LOG_EPS", "band_powers"]

logger = logging.getLogger(__name__)


def band_powers(data: np.ndarray, sfreq: float, n_frames: int, bands=BANDS,
                n_per_seg: int | None = None) -> np.ndarray:
    """Log band powers per frame (Welch).

    Parameters
    ----------
    data : array, shape (..., n_ch, n_times)
        EEG in µV; ``n_times`` must be a multiple of ``n_frames``.
    sfreq : float
        Sampling frequency in Hz.
    n_frames : int
        Number of consecutive, non-overlapping frames per window.
    bands : sequence of (l_freq, h_freq)
        Frequency bands in Hz, half-open ``[l_freq, h_freq)`` (``BANDS``, ``BANDS_GAMMA``).
    n_per_seg : int | None
        Welch segment length in samples, 50 % overlap; ``None`` (default) = one segment
        spanning the frame (a periodogram).

    Returns
    -------
    logbp : array, shape (..., n_frames, n_bands, n_ch)
        ``log10(band power + LOG_EPS)``, power in µV². NaN (with a warning) for a frame
        with a non-finite sample.
    """
    data = np.asarray(data, dtype=np.float64)
    *lead, n_ch, n_times = data.shape
    if n_frames < 1 or n_times % n_frames:
        raise ValueError(f"n_times ({n_times}) must be a multiple of n_frames ({n_frames})")
    n = n_times // n_frames
    nps, n_segs, step = welch_segments(n, n_per_seg)
    bins = band_bins(nps, sfreq, bands)
    logger.debug("band powers: %d frames of %d samples, %d segment(s) of %d, step %d",
                 n_frames, n, n_segs, nps, step)
    x = data.reshape(*lead, n_ch, n_frames, n)
    # (..., n_ch, n_frames, n_segs, n_per_seg)
    segs = np.lib.stride_tricks.sliding_window_view(x, nps, axis=-1)[..., :n_segs * step:step, :]
    w = np.asarray(hann(nps))
    with np.errstate(invalid="ignore", over="ignore"):
        segs = segs - segs.mean(axis=-1, keepdims=True)
        spec = np.fft.rfft(segs * w, axis=-1)
        factor = np.array([onesided_factor(k, nps) for k in range(nps // 2 + 1)], dtype=np.float64)
        psd = (spec.real ** 2 + spec.imag ** 2) * factor / (sfreq * np.sum(w * w))
        psd = psd.mean(axis=-2)  # average over segments -> (..., n_ch, n_frames, n_freqs)
        out = np.stack([psd[..., ks].sum(axis=-1) for ks in bins], axis=-1) * (sfreq / nps)
    bad = ~np.isfinite(out)
    if bad.any():
        n_bad = int(bad.any(axis=-1).sum())
        logger.warning("band powers: %d channel-frame(s) have non-finite samples; their band powers are NaN",
                       n_bad)
        out[bad.any(axis=-1)] = np.nan
    # (..., n_ch, n_frames, n_bands) -> (..., n_frames, n_bands, n_ch)
    out = np.moveaxis(out, -3, -1)
    return np.log10(out + LOG_EPS)
