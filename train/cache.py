"""On-disk cache of processed datasets and band powers, keyed by a hash of what made them.

A key covers the inputs (file paths, sizes and SHA-256 of their contents, or the array
bytes), the parameters, and the source code of the modules that computed the result, so
a changed recording, parameter or DSP definition gives a new entry rather than a stale
one. Entries are ``.npz`` files written under a temporary name and renamed, so an
interrupted run never leaves a half-written entry.

The folder is ``$PAINHELM_CACHE`` when set, else ``~/.cache/painhelm``; delete it freely.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    root = os.environ.get("PAINHELM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "painhelm"
    return path


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_digest(*modules) -> str:
    """SHA-256 over the source files of ``modules`` (so code changes invalidate entries)."""
    h = hashlib.sha256()
    for m in modules:
        h.update(Path(m.__file__).read_bytes())
    return h.hexdigest()


def hash_arrays(h, arrays) -> None:
    """Feed each array's dtype, shape and bytes into the hash object ``h``."""
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))


def make_key(kind: str, params: dict, files: list[Path] = (), arrays: list[np.ndarray] = (),
             modules: tuple = ()) -> str:
    """A hex key for ``kind`` from parameters, input files, input arrays and code."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "params": params}, sort_keys=True, default=str).encode())
    for f in sorted(Path(p) for p in files):
        h.update(f"{f.resolve()}|{f.stat().st_size}|{file_digest(f)}".encode())
    hash_arrays(h, arrays)
    h.update(source_digest(*modules).encode())
    return f"{kind}-{h.hexdigest()[:24]}"


def memo(key: str, build: Callable[[], object], load: Callable[[Path], object],
         save: Callable[[object, Path], None], use_cache: bool = True):
    """Return the cached entry ``key``, building and saving it first when absent.

    A corrupt entry (e.g. from a disk filling up) is rebuilt, not trusted.
    """
    if not use_cache:
        return build()
    path = cache_dir() / f"{key}.npz"
    if path.exists():
        try:
            return load(path)
        except Exception:  # noqa: BLE001 - any unreadable entry is simply rebuilt
            path.unlink(missing_ok=True)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(value, path)
    return value


def cached_band_powers(pre, data: np.ndarray, use_cache: bool = True) -> np.ndarray:
    """``pre.band_powers(data)``, from the cache when the same windows and parameters were seen."""
    from painhelm.firmware import dsp as fw_dsp

    from . import dsp, features

    params = {"sfreq": pre.sfreq, "n_frames": pre.n_frames, "bands": pre.bands, "n_per_seg": pre.n_per_seg,
              "n_times": pre.n_times}
    arrays = [np.asarray(data)] + ([] if pre.clean is None else [np.asarray(pre.clean)])

    def save(v, path):
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, logbp=v)
        tmp.replace(path)

    def load(path):
        with np.load(path) as z:
            return z["logbp"]

    key = make_key("bandpower", params, arrays=arrays, modules=(fw_dsp, dsp, features))
    return memo(key, lambda: pre.band_powers(data), load, save, use_cache)
