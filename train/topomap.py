"""Spectral topography images: electrode values interpolated onto a square grid.

Electrode 3-D positions (head frame, from an MNE montage) are projected onto the plane
with the azimuthal equidistant projection and interpolated with Clough-Tocher (as
EEGLearn's ``gen_images``) onto a G x G grid (G = 32 by default, 16 for compact models).
Interpolation is linear in the electrode values, so it is computed once as a matrix ``W``
(G*G, n_ch) by interpolating each unit vector; the helmet applies the same ``W``
(``painhelm.firmware.topomap``). Pixels outside the electrodes' convex hull are 0 and form
the complement of the head mask.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MONTAGE = "colin27_1005"  # MNE 1.13 renamed standard_1005 to this


def montage_positions(montage: str = DEFAULT_MONTAGE) -> dict[str, np.ndarray]:
    """Head-frame positions (metres) of every electrode of an MNE standard montage, by lower-case name.

    ``set_montage`` moves the montage's own (MRI) coordinates into MNE's head frame: x
    towards the right ear, y towards the nasion, z up, origin between the ears.
    """
    import mne

    cache = montage_positions.__dict__.setdefault("cache", {})
    if montage not in cache:
        m = mne.channels.make_standard_montage(montage)
        info = mne.create_info(m.ch_names, 100.0, "eeg")
        info.set_montage(m, verbose="error")
        cache[montage] = {ch["ch_name"].lower(): ch["loc"][:3].copy() for ch in info["chs"]}
    return cache[montage]


def sphere_centre(pos: np.ndarray) -> np.ndarray | None:
    """Least-squares sphere centre of electrode positions (n, 3), or None when ill-posed.

    Fewer than 16 electrodes (a patch of the cap) pin no sphere down; an implausible radius
    (outside 5-15 cm) is also refused.
    """
    pos = np.asarray(pos, dtype=np.float64)
    if len(pos) < 16:
        return None
    a = np.c_[2 * pos, np.ones(len(pos))]
    sol, *_ = np.linalg.lstsq(a, (pos ** 2).sum(axis=1), rcond=None)
    centre = sol[:3]
    radius = np.sqrt(max(sol[3] + centre @ centre, 0.0))
    return centre if 0.05 < radius < 0.15 else None


def standard_head_centre(montage: str = DEFAULT_MONTAGE) -> np.ndarray:
    """Head-sphere centre of a whole standard montage, in the head frame."""
    return sphere_centre(np.array(list(montage_positions(montage).values())))


def head_centred(pos: np.ndarray) -> np.ndarray:
    """Head-frame positions shifted to the head-sphere centre, which the projection needs.

    The head frame's origin lies between the ears, about 4 cm below the centre of the
    sphere the electrodes sit on; centred, Cz comes out on top and Fpz-T7-Oz-T8 near the
    rim of the projected disc. The sphere is fitted to ``pos`` when it has enough
    electrodes, else the standard montage's centre is used.
    """
    pos = np.asarray(pos, dtype=np.float64)
    c = sphere_centre(pos)
    return pos - (c if c is not None else standard_head_centre())


def electrode_positions(ch_names: list[str], montage: str = DEFAULT_MONTAGE) -> np.ndarray:
    """Head-centred 3-D positions (n_ch, 3) of ``ch_names`` in the named MNE standard montage.

    Names are matched case-insensitively; a channel the montage lacks is named in the error.
    The centre is the whole montage's sphere centre, so any subset of channels keeps the
    same coordinates.
    """
    table = montage_positions(montage)
    missing = [ch for ch in ch_names if ch.lower() not in table]
    if missing:
        raise ValueError(f"channels {missing} are not in montage {montage!r}")
    return np.array([table[ch.lower()] for ch in ch_names]) - standard_head_centre(montage)


def azimuthal_equidistant(pos3d: np.ndarray) -> np.ndarray:
    """Project 3-D positions (n, 3) around the head centre onto the plane (n, 2).

    The vertex maps to the origin, the distance from it is the polar angle; nose (+y) up.
    """
    p = np.asarray(pos3d, dtype=np.float64)
    r = np.linalg.norm(p, axis=1)
    if np.any(r == 0) or not np.all(np.isfinite(p)):
        raise ValueError("electrode positions must be finite and away from the head centre")
    elev = np.arccos(np.clip(p[:, 2] / r, -1, 1))  # angle from the vertex
    az = np.arctan2(p[:, 1], p[:, 0])
    return np.stack([elev * np.cos(az), elev * np.sin(az)], axis=1)


def grid(xy: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (X, Y), each (G, G), spanning the electrodes' bounding box; row 0 = front."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    gx = np.linspace(lo[0], hi[0], image_size)
    gy = np.linspace(hi[1], lo[1], image_size)
    return np.meshgrid(gx, gy)


def topomap_matrix(pos: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Interpolation matrix W, shape (image_size**2, n_ch), float32, rows in row-major pixel order.

    Parameters
    ----------
    pos : array, shape (n_ch, 3)
        Electrode positions in the head frame (e.g. ``Trials.pos``); at least 3 electrodes
        not on one line.
    image_size : int
        G, the side of the square image (>= 4).
    """
    from scipy.interpolate import CloughTocher2DInterpolator
    from scipy.spatial import QhullError

    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must be (n_ch, 3) electrode positions, got shape {pos.shape}")
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    xy = azimuthal_equidistant(pos)
    X, Y = grid(xy, image_size)
    try:
        interp = CloughTocher2DInterpolator(xy, np.eye(len(pos)), fill_value=0.0)
    except (QhullError, ValueError) as e:
        raise ValueError(f"cannot triangulate {len(pos)} electrode positions (need >= 3 not on a line): "
                         f"{str(e).splitlines()[0]}") from None
    W = interp(np.stack([X.ravel(), Y.ravel()], axis=1))
    return np.nan_to_num(W).astype(np.float32)


def head_mask(W: np.ndarray) -> np.ndarray:
    """Boolean (G, G) mask of the pixels inside the electrodes' hull (rows of W that are not 0)."""
    size = int(round(np.sqrt(W.shape[0])))
    return (np.abs(W).sum(axis=1) > 0).reshape(size, size)


def images(logbp: np.ndarray, mean: np.ndarray, std: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Normalised topography images from log band powers.

    Parameters
    ----------
    logbp : array, shape (n_windows, n_frames, n_bands, n_ch)
    mean, std : array, shape (n_bands, n_ch)
        Training normalisation per (band, channel) (per-band normalisation repeats one
        value across channels).
    W : array, shape (n_pix, n_ch)

    Returns
    -------
    images : array, shape (n_windows, n_frames, n_bands, size, size), float32
    """
    # the reciprocal is taken in float32, as the helmet stores it
    z = (logbp - mean) * (1.0 / std).astype(np.float32)
    img = np.einsum("wfbc,pc->wfbp", z, W.astype(np.float64), optimize=True)
    size = int(round(np.sqrt(W.shape[0])))
    return img.reshape(*img.shape[:3], size, size).astype(np.float32)
