"""Write and read helmet recordings (``.phr``) on the host.

The format is defined once, in the helmet's own module ``painhelm.firmware.recording``
(a JSON header line, then little-endian samples, sample-major); the helmet plays such a
file back with ``source_playback.PlaybackSource``. Flash it next to the firmware (for example as
``/rec.phr``) and select it with ``{"kind": "playback", "path": "rec.phr"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from painhelm.firmware import recording as fw_recording

__all__ = ["write_recording", "recording_from_raw", "read_recording"]

_I2_MAX = 32767


def _check_option(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def write_recording(path: str | Path, data_uV, sfreq: float, ch_names: Sequence[str] | None = None,
                    dtype: str = "f4", scale: float | None = None) -> Path:
    """Write a recording the helmet can play back.

    Parameters
    ----------
    path : str | Path
        Output file (``.phr`` by convention). Written to ``<path>.tmp`` and renamed, so a
        crash never leaves a half-written recording under the final name.
    data_uV : array, shape (n_ch, n_times)
        The signal in µV (MNE's ``raw.get_data()`` is in volts: multiply by 1e6, or use
        :func:`recording_from_raw`).
    sfreq : float
        Sampling frequency in Hz.
    ch_names : list of str | None
        One name per channel, or None.
    dtype : "f4" | "i2"
        float32 µV (exact), or int16 codes times ``scale`` (half the size).
    scale : float | None
        µV per int16 step for ``dtype="i2"``; None picks ``max|data| / 32767``. Values
        beyond ``32767 * scale`` are clipped, with a ValueError naming how many.

    Returns
    -------
    path : Path
    """
    _check_option("dtype", dtype, fw_recording.DTYPES)
    data = np.asarray(data_uV, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < 1:
        raise ValueError(f"data_uV must have shape (n_ch, n_times) with n_times >= 1, got {data.shape}")
    n_ch, n_times = data.shape
    if ch_names is not None and len(ch_names) != n_ch:
        raise ValueError(f"ch_names has {len(ch_names)} names, data_uV has {n_ch} channels")
    if not np.all(np.isfinite(data)):
        raise ValueError("data_uV has non-finite values; the helmet's recording format stores finite samples only")
    if dtype == "f4":
        if scale not in (None, 1.0):
            raise ValueError(f"scale is only for dtype='i2', got scale={scale} with dtype='f4'")
        scale = 1.0
        body = data.T.astype("<f4").tobytes()
    else:
        peak = float(np.abs(data).max())
        auto = scale is None
        if auto:
            scale = peak / _I2_MAX if peak > 0 else 1.0
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        # a float32 scale makes code * scale round the same on the host, on a board with
        # single-precision floats and on one with doubles (the product is exact in double)
        scale = float(np.float32(scale))
        if auto and peak / scale > _I2_MAX:
            scale = float(np.nextafter(np.float32(scale), np.float32(np.inf)))
        codes = np.rint(data / scale)
        n_clip = int(np.count_nonzero(np.abs(codes) > _I2_MAX))
        if n_clip:
            raise ValueError(f"{n_clip} samples exceed 32767 * scale = {_I2_MAX * scale} µV; "
                             "raise scale or leave it None")
        body = codes.T.astype("<i2").tobytes()
    head = fw_recording.header_line(n_ch, float(sfreq), n_times, ch_names, dtype, scale)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(body)
    tmp.replace(path)
    return path


def _pick_indices(raw, picks) -> list[int]:
    """Channel indices of ``picks``: None (all), a channel type, or a list of types, names or indices."""
    if picks is None:
        return list(range(len(raw.ch_names)))
    items = [picks] if isinstance(picks, (str, int)) else list(picks)
    types = raw.get_channel_types()
    idx: list[int] = []
    for item in items:
        if isinstance(item, (int, np.integer)):
            idx.append(int(item))
        elif item in raw.ch_names:
            idx.append(raw.ch_names.index(item))
        elif item in types:
            idx.extend(i for i, t in enumerate(types) if t == item)
        else:
            raise ValueError(f"picks: {item!r} is neither a channel name nor a channel type of this raw "
                             f"(types: {sorted(set(types))})")
    if not idx:
        raise ValueError(f"picks={picks!r} selects no channel")
    return idx


def recording_from_raw(raw, path: str | Path, picks="eeg", dtype: str = "f4",
                       scale: float | None = None) -> Path:
    """Write the ``picks`` channels of an MNE ``Raw`` (volts) as a recording in µV.

    Parameters
    ----------
    raw : mne.io.Raw
    path : str | Path
    picks : str | list
        Channels, as ``raw.get_data(picks=...)`` takes them (default: EEG channels).
    dtype, scale
        As in :func:`write_recording`.
    """
    idx = _pick_indices(raw, picks)
    data = raw.get_data(picks=idx) * 1e6  # V -> µV
    names = [raw.ch_names[i] for i in idx]
    return write_recording(path, data, raw.info["sfreq"], names, dtype=dtype, scale=scale)


def read_recording(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a recording back.

    Returns
    -------
    data_uV : array of float32, shape (n_ch, n_samples)
        The samples in µV (whole samples only, if the file was cut short).
    header : dict
        The parsed header line (``n_ch``, ``sfreq``, ``ch_names``, ``dtype``, ``scale``, ...).
    """
    raw = Path(path).read_bytes()
    nl = raw.find(b"\n")
    if nl < 0:
        raise fw_recording.RecordingError(f"{path}: no header line")
    header = json.loads(raw[:nl])
    fw_recording.check_header(header)
    n_ch = header["n_ch"]
    dt = np.dtype("<f4" if header["dtype"] == "f4" else "<i2")
    body = raw[nl + 1:]
    n = min(header["n_samples"], len(body) // (dt.itemsize * n_ch))
    x = np.frombuffer(body, dtype=dt, count=n * n_ch).reshape(n, n_ch).T
    if header["dtype"] == "i2":
        x = (x * float(header["scale"])).astype(np.float32)  # as the helmet: exact product, one rounding
    return np.ascontiguousarray(x, dtype=np.float32), header
