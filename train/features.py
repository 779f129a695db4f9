"""Trials -> (cleaning) -> band powers -> normalised topography images.

:class:`Preprocessing` holds every parameter of that chain that the helmet needs too
(it is written into the bundle): sampling, channels and their positions, frames, bands,
the cleaning matrix, the topomap matrix ``W`` and the per-band normalisation fitted on
training subjects only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from painhelm.firmware.dsp import BANDS

from . import dsp, topomap
from .dataset import BandPowerTrials, Trials

NORMS = ("band", "channel")


@dataclass
class Preprocessing:
    """Everything needed to turn a window into images; shipped to the helmet in the bundle."""

    sfreq: float
    ch_names: list[str]
    n_times: int
    n_frames: int
    image_size: int
    W: np.ndarray  # (n_pix, n_ch) float32
    mean: np.ndarray  # (n_bands, n_ch) float32
    std: np.ndarray  # (n_bands, n_ch) float32
    bands: tuple = BANDS
    pos: np.ndarray | None = None  # (n_ch, 3) head-frame positions
    n_per_seg: int | None = None  # Welch segment length; None = one periodogram per frame
    norm: str = "band"
    clean: np.ndarray | None = None  # (n_ch, n_ch) cleaning matrix applied before the DSP

    @classmethod
    def fit(cls, data: np.ndarray, sfreq: float, ch_names: list[str], n_frames: int = 4,
            image_size: int = 16, *, pos: np.ndarray | None = None, bands=BANDS,
            n_per_seg: int | None = None, norm: str = "band",
            clean: np.ndarray | None = None) -> "Preprocessing":
        """Fit on training windows ``data`` (n_windows, n_ch, n_times), in µV.

        ``norm="band"`` normalises each band with one mean and standard deviation over all
        frames, channels and training windows (the topography's shape is kept);
        ``norm="channel"`` uses one per (band, channel). ``pos`` defaults to the channels'
        positions in the standard 10-05 montage.
        """
        data = np.asarray(data)
        if data.ndim != 3 or data.shape[1] != len(ch_names):
            raise ValueError(f"data must be (n_windows, n_ch={len(ch_names)}, n_times), got {data.shape}")
        if pos is None:
            pos = topomap.electrode_positions(ch_names)
        pre = cls(float(sfreq), list(ch_names), data.shape[2], n_frames, image_size, None, None, None,
                  tuple(tuple(b) for b in bands), np.asarray(pos, np.float64), n_per_seg, norm,
                  None if clean is None else np.asarray(clean, np.float32))
        from .cache import cached_band_powers

        pre._fit_rest(cached_band_powers(pre, data))  # trial_images() then finds them in the cache
        return pre

    @classmethod
    def for_trials(cls, trials: Trials | BandPowerTrials, n_frames: int = 4, image_size: int = 16,
                   **kw) -> "Preprocessing":
        """Fit on a training table: raw :class:`Trials` or precomputed :class:`BandPowerTrials`."""
        if isinstance(trials, Trials):
            return cls.fit(trials.data, trials.sfreq, trials.ch_names, n_frames, image_size, pos=trials.pos, **kw)
        norm = kw.pop("norm", "band")
        if kw:
            raise ValueError(f"{sorted(kw)} do not apply to band-power data")
        lb = trials.logbp
        pre = cls(0.0, list(trials.ch_names), 0, lb.shape[1], image_size, None, None, None,
                  tuple(tuple(b) for b in trials.bands), np.asarray(trials.pos), None, norm, None)
        pre._fit_rest(lb)
        return pre

    def _fit_rest(self, logbp: np.ndarray) -> None:
        """Fit the normalisation on training log band powers and build W."""
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        n_ch = logbp.shape[-1]
        if self.norm == "band":
            mean = np.repeat(logbp.mean(axis=(0, 1, 3))[:, None], n_ch, axis=1)
            std = np.repeat(logbp.std(axis=(0, 1, 3))[:, None], n_ch, axis=1)
        else:
            mean, std = logbp.mean(axis=(0, 1)), logbp.std(axis=(0, 1))
        self.mean = mean.astype(np.float32)
        self.std = (std + 1e-6).astype(np.float32)
        self.W = topomap.topomap_matrix(self.pos, self.image_size)

    def band_powers(self, data: np.ndarray) -> np.ndarray:
        """Log band powers (n_windows, n_frames, n_bands, n_ch) of windows (n_windows, n_ch, n_times)."""
        data = np.asarray(data)
        if data.ndim != 3 or data.shape[1:] != (len(self.ch_names), self.n_times):
            raise ValueError(f"windows must be (n, {len(self.ch_names)} channels, {self.n_times} samples), "
                             f"got {data.shape}")
        if self.clean is not None:
            data = np.einsum("ij,wjt->wit", self.clean.astype(np.float64), data, optimize=True)
        kw = {} if self.n_per_seg is None else {"n_per_seg": self.n_per_seg}
        return dsp.band_powers(data, self.sfreq, self.n_frames, self.bands, **kw)

    def images_from_logbp(self, logbp: np.ndarray) -> np.ndarray:
        """Images (n_windows, n_frames, n_bands, G, G) of log band powers."""
        # float32 parameters, exactly as the helmet stores them
        return topomap.images(logbp, self.mean.astype(np.float64),
                              self.std.astype(np.float32).astype(np.float64), self.W)

    def images(self, data: np.ndarray) -> np.ndarray:
        """Images (n_windows, n_frames, n_bands, G, G) of windows (n_windows, n_ch, n_times)."""
        return self.images_from_logbp(self.band_powers(data))

    def trial_images(self, trials: Trials | BandPowerTrials) -> np.ndarray:
        """Images of every trial of a table (band powers come from the on-disk cache when present)."""
        if isinstance(trials, BandPowerTrials):
            return self.images_from_logbp(trials.logbp)
        from .cache import cached_band_powers

        return self.images_from_logbp(cached_band_powers(self, trials.data))
