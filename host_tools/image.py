"""What goes onto a helmet: the firmware_py sources and a bundle, as device paths -> bytes."""

from __future__ import annotations

from pathlib import Path

import painhelm.firmware
from painhelm.firmware import bundle as fmt

# firmware_py/ in a checkout, painhelm/firmware/ in an installed wheel
FIRMWARE_DIR = Path(painhelm.firmware.__file__).resolve().parent


def firmware_files() -> dict[str, bytes]:
    """firmware_py/*.py (without the host-only package marker), by device path."""
    files = {p.name: p.read_bytes() for p in sorted(FIRMWARE_DIR.glob("*.py")) if p.name != "__init__.py"}
    if "main.py" not in files:
        raise FileNotFoundError(f"no main.py in {FIRMWARE_DIR}")
    return files


def bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    """A bundle folder's files by device path, the manifest LAST (it marks the bundle complete)."""
    src = Path(bundle_dir)
    missing = [n for n in fmt.FILES + (fmt.MANIFEST_FILE,) if not (src / n).exists()]
    if missing:
        raise FileNotFoundError(f"bundle {src} lacks {', '.join(missing)}: run `painhelm demo` or export first")
    names = list(fmt.FILES) + [n for n in (fmt.CLEAN_FILE,) if (src / n).exists()] + [fmt.MANIFEST_FILE]
    return {f"{fmt.BUNDLE_DIR}/{n}": (src / n).read_bytes() for n in names}


def device_image(bundle_dir: str | Path | None) -> dict[str, bytes]:
    """Firmware first, then the bundle (manifest last); main.py is written last of the firmware
    so an interrupted flash never starts a main.py whose modules are missing."""
    fw = firmware_files()
    main = fw.pop("main.py")
    image = dict(fw)
    if bundle_dir is not None:
        image.update(bundle_files(bundle_dir))
    image["main.py"] = main
    return image
