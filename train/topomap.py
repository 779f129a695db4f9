"""Spectral topography images: electrode values interpolated onto a square grid.

Electrode 3-D positions (from an MNE montage) are projected onto the plane with the
azimuthal equidistant projection and interpolated with Clough-Tocher (as EEGLearn's
``gen_images``). Interpolation is linear in the electrode values, so it is computed once
as a matrix ``W`` (n_pix, n_ch) by interpolating each unit vector; the helmet applies the
same ``W`` (``painhelm.firmware.topomap``). Pixels outside the electrodes' hull are 0.
"""

from __future__ import annotations

import numpy as np


def electrode_positions(ch_names: list[str], montage: str = "colin27_1005") -> np.ndarray:
    """3-D positions (n_ch, 3) of ``ch_names`` in the named MNE standard montage."""
    import mne

    pos = mne.channels.make_standard_montage(montage).get_positions()["ch_pos"]
    lower = {k.lower(): v for k, v in pos.items()}
    missing = [ch for ch in ch_names if ch.lower() not in lower]
    if missing:
        raise ValueError(f"channels {missing} are not in montage {montage!r}")
    return np.array([lower[ch.lower()] for ch in ch_names])


def azimuthal_equidistant(pos3d: np.ndarray) -> np.ndarray:
    """Project 3-D positions (n, 3) on a sphere around the head centre to the plane (n, 2)."""
    p = np.asarray(pos3d, dtype=np.float64)  # MNE montages are head-centred
    r = np.linalg.norm(p, axis=1)
    elev = np.arccos(np.clip(p[:, 2] / r, -1, 1))  # angle from the vertex
    az = np.arctan2(p[:, 1], p[:, 0])
    return np.stack([elev * np.cos(az), elev * np.sin(az)], axis=1)


def topomap_matrix(ch_names: list[str], image_size: int = 16, montage: str = "colin27_1005") -> np.ndarray:
    """Interpolation matrix W, shape (image_size**2, n_ch), float32, rows in row-major pixel order."""
    from scipy.interpolate import CloughTocher2DInterpolator

    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    xy = azimuthal_equidistant(electrode_positions(ch_names, montage))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    gx = np.linspace(lo[0], hi[0], image_size)
    gy = np.linspace(hi[1], lo[1], image_size)  # top row = front of the head
    X, Y = np.meshgrid(gx, gy)
    interp = CloughTocher2DInterpolator(xy, np.eye(len(ch_names)), fill_value=0.0)
    W = interp(np.stack([X.ravel(), Y.ravel()], axis=1))
    return np.nan_to_num(W).astype(np.float32)


def images(logbp: np.ndarray, mean: np.ndarray, std: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Normalised topography images from log band powers.

    Parameters
    ----------
    logbp : array, shape (n_windows, n_frames, n_bands, n_ch)
    mean, std : array, shape (n_bands, n_ch)
        Training normalisation per (band, channel).
    W : array, shape (n_pix, n_ch)

    Returns
    -------
    images : array, shape (n_windows, n_frames, n_bands, size, size), float32
    """
    z = (logbp - mean) * (1.0 / std).astype(np.float32)
    img = np.einsum("wfbc,pc->wfbp", z, W.astype(np.float64))
    size = int(round(np.sqrt(W.shape[0])))
    return img.reshape(*img.shape[:3], size, size).astype(np.float32)
