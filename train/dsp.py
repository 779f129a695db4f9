"""Vectorised band powers: the host's numpy version of ``painhelm.firmware.dsp``.

Same definition, same constants (imported from the firmware, the one source of truth);
``tests/test_dsp.py`` checks the two agree, the firmware one under real MicroPython.
"""

from __future__ import annotations

import numpy as np

from painhelm.firmware.dsp import BANDS, LOG_EPS, band_bins, hann


def band_powers(data: np.ndarray, sfreq: float, n_frames: int, bands=BANDS) -> np.ndarray:
    """Log band powers per frame.

    Parameters
    ----------
    data : array, shape (..., n_ch, n_times)
        EEG in µV; ``n_times`` must be a multiple of ``n_frames``.
    sfreq : float
        Sampling frequency in Hz.
    n_frames : int
        Number of consecutive, non-overlapping frames per window.
    bands : sequence of (l_freq, h_freq)
        Frequency bands in Hz, half-open ``[l_freq, h_freq)``.

    Returns
    -------
    logbp : array, shape (..., n_frames, n_bands, n_ch)
        ``log10(band power + LOG_EPS)``, power in µV².
    """
    data = np.asarray(data, dtype=np.float64)
    *lead, n_ch, n_times = data.shape
    if n_times % n_frames:
        raise ValueError(f"n_times ({n_times}) must be a multiple of n_frames ({n_frames})")
    n = n_times // n_frames
    x = data.reshape(*lead, n_ch, n_frames, n)
    x = x - x.mean(axis=-1, keepdims=True)
    w = np.asarray(hann(n))
    spec = np.fft.rfft(x * w, axis=-1)
    psd = (spec.real ** 2 + spec.imag ** 2) * (2.0 / (sfreq * np.sum(w * w)) * (sfreq / n))
    out = np.stack([psd[..., ks].sum(axis=-1) for ks in band_bins(n, sfreq, bands)], axis=-1)
    # (..., n_ch, n_frames, n_bands) -> (..., n_frames, n_bands, n_ch)
    out = np.moveaxis(out, -3, -1)
    return np.log10(out + LOG_EPS)
