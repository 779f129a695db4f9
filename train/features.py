"""Windows -> band powers -> normalised topography images, with parameters the helmet reuses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from painhelm.firmware.dsp import BANDS

from . import dsp, topomap


@dataclass
class Preprocessing:
    """Everything needed to turn a window into images; shipped to the helmet in the bundle."""

    sfreq: float
    ch_names: list[str]
    n_times: int
    n_frames: int
    image_size: int
    W: np.ndarray  # (n_pix, n_ch) float32
    mean: np.ndarray  # (n_bands, n_ch)
    std: np.ndarray  # (n_bands, n_ch)
    bands: tuple = BANDS

    @classmethod
    def fit(cls, data: np.ndarray, sfreq: float, ch_names: list[str], n_frames: int = 4,
            image_size: int = 16) -> "Preprocessing":
        """Fit the normalisation on training windows ``data`` (n_windows, n_ch, n_times)."""
        if data.ndim != 3 or data.shape[1] != len(ch_names):
            raise ValueError(f"data must be (n_windows, n_ch={len(ch_names)}, n_times), got {data.shape}")
        logbp = dsp.band_powers(data, sfreq, n_frames)
        mean = logbp.mean(axis=(0, 1))
        std = logbp.std(axis=(0, 1)) + 1e-6
        W = topomap.topomap_matrix(ch_names, image_size)
        return cls(float(sfreq), list(ch_names), data.shape[2], n_frames, image_size, W,
                   mean.astype(np.float32), std.astype(np.float32))

    def images(self, data: np.ndarray) -> np.ndarray:
        """Images (n_windows, n_frames, n_bands, size, size) of windows (n_windows, n_ch, n_times)."""
        logbp = dsp.band_powers(data, self.sfreq, self.n_frames, self.bands)
        # float32 parameters, exactly as the helmet stores them
        return topomap.images(logbp, self.mean.astype(np.float64),
                              self.std.astype(np.float32).astype(np.float64), self.W)
