"""Flash files onto a helmet safely: skip unchanged files, verify, then replace atomically.

Device paths are absolute (``/main.py``, ``/lib/wire.py``, ``/model.tflite``). A relative path
is taken relative to the filesystem root (the device's working directory after boot), so
``lib/wire.py`` means ``/lib/wire.py``. On the virtual helmet ``/`` is its folder.

Each changed file is written to ``<path>.tmp``, its SHA-256 is checked on the device, and only
then is it renamed over the old file; a power cut or an unplugged cable mid-flash leaves the
previous firmware in place (at worst with a stray ``.tmp`` file).
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Callable, Mapping

from .transport import SerialTransport, TransportError

__all__ = ["FlashError", "device_path", "flash", "progress_bar"]

Progress = Callable[[str, int, int], None]


class FlashError(Exception):
    """Flashing failed; the message says which file and why."""


def device_path(path: str) -> str:
    """Normalise a device path to an absolute one; reject ``..`` and empty names."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if norm == "/" or ".." in path.split("/"):
        raise FlashError(f"invalid device path {path!r}: give a file path such as '/main.py'")
    return norm


def flash(
    transport: SerialTransport,
    files: Mapping[str, bytes],
    progress: Progress | None = None,
    reset: bool = True,
) -> dict:
    """Write ``files`` (device path -> content) to the helmet; return a summary.

    Unchanged files (same SHA-256 on the device) are skipped. ``progress(path, done, total)``
    reports bytes written per file. With ``reset`` the board soft-resets at the end so boot.py
    and main.py start the new firmware. Returns ``{"written": [...], "skipped": [...],
    "bytes": n}`` with device paths and the number of bytes written.
    """
    summary: dict = {"written": [], "skipped": [], "bytes": 0}
    made_dirs: set[str] = {"/"}
    try:
        for raw_path, data in files.items():
            path = device_path(raw_path)
            data = bytes(data)
            local = hashlib.sha256(data).hexdigest()
            if transport.fs_exists(path) and transport.fs_sha256(path) == local:
                summary["skipped"].append(path)
                if progress is not None:
                    progress(path, len(data), len(data))
                continue
            parent = posixpath.dirname(path)
            if parent not in made_dirs:
                transport.fs_mkdir(parent)
                made_dirs.add(parent)
            _write_verified(transport, path, data, local, progress)
            summary["written"].append(path)
            summary["bytes"] += len(data)
        if reset:
            transport.soft_reset()
    except TransportError as exc:
        raise FlashError(f"flashing failed: {exc}") from None
    return summary


def _write_verified(
    transport: SerialTransport, path: str, data: bytes, local: str, progress: Progress | None
) -> None:
    tmp = path + ".tmp"
    cb = None if progress is None else (lambda done, total: progress(path, done, total))
    transport.fs_writefile(tmp, data, progress=cb)
    remote = transport.fs_sha256(tmp)
    if remote != local:
        transport.fs_remove(tmp, missing_ok=True)
        raise FlashError(
            f"verification failed for {path}: the device holds SHA-256 {remote[:16]}..., expected "
            f"{local[:16]}... (the link corrupted data?); the old file was left in place"
        )
    try:
        transport.fs_rename(tmp, path)
    except TransportError:
        # Some filesystems (FAT) refuse to rename over an existing file.
        transport.fs_remove(path, missing_ok=True)
        transport.fs_rename(tmp, path)


def progress_bar(desc: str = "flash") -> Progress:
    """A flash progress callback ``(path, done, total)`` drawing one tqdm bar per file."""
    from tqdm.auto import tqdm

    state: dict = {}

    def cb(path: str, done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=f"{desc} {path}", unit="B", unit_scale=True, leave=False)
        bar = state["bar"]
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            state.clear()

    return cb
