"""Flash time of a 200 KB bundle onto the virtual helmet (target: < 2 s, SHA-256 verified).

A small model is trained and bundled (as tests/conftest.py's tiny bundle), then padded with
an extra file listed in its manifest so the bundle is exactly 200 KiB. Each run flashes a
bundle that differs from the one on the helmet (fresh write of every bundle file into
model_bundle.new, firmware unchanged), then the same bundle again (everything skipped).
Figures are medians over ``--runs``:

* ``write_s``: stage + verify + switch-over of the bundle (what the transfer costs);
* ``flash_s``: the whole ``flash_helmet`` call: raw REPL entry with soft reset, board facts,
  hashes, write, verify, switch-over, reset, and the helmet's boot, self-test and promotion
  of the bundle confirmed over the protocol;
* ``unchanged_s``: the same call when nothing changed.

Run: ``.venv/bin/python -m bench.flash_time [--runs 5]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

BUNDLE_BYTES = 200 * 1024


def make_bundle(out: Path) -> Path:
    """A briefly trained compact model as a bundle (the tests' tiny bundle)."""
    import torch

    from painhelm.compress.bundle import write_bundle
    from painhelm.compress.export import TFLMRunner, export_tflite
    from painhelm.train.features import Preprocessing
    from painhelm.train.synthetic import make_synthetic
    from painhelm.train.trainer import train_model

    torch.set_num_threads(2)
    ws = make_synthetic(n_subjects=3, windows_per_class=6, seed=1)
    train = ws.subset(ws.subject != "S03")
    pre = Preprocessing.for_trials(train, n_frames=4, image_size=16)
    x = pre.images(train.data)
    model, _ = train_model(x, train.level, train.location, seconds=5, max_epochs=15, progress=False)
    tfl = export_tflite(model, x[:64], out / "export")
    runner = TFLMRunner(tfl["int8"])
    return write_bundle(out / "bundle", tfl["int8"], pre, ws.level_names, ws.location_names,
                        runner.input_scale, runner.input_zero_point)


def padded(src: Path, dst: Path, seed: int) -> Path:
    """``src`` plus pad.bin (listed in the manifest) so the folder holds BUNDLE_BYTES."""
    import shutil

    shutil.copytree(src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    rest = sum(p.stat().st_size for p in dst.iterdir())
    pad_len = BUNDLE_BYTES - rest - 80  # the manifest grows by about that much
    blob = hashlib.shake_256(seed.to_bytes(4, "little")).digest(pad_len)
    (dst / "pad.bin").write_bytes(blob)
    man["files"]["pad.bin"] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": pad_len}
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def main(argv: list[str] | None = None) -> int:
    from painhelm.host_tools.flash import flash_helmet
    from painhelm.host_tools.transport import SerialTransport
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    from .common import write_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--heapsize", default="256K")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="flash_time_"))
    base = make_bundle(work)
    bundles = [padded(base, work / f"b{i}", i) for i in range(args.runs + 1)]
    size = sum(p.stat().st_size for p in bundles[1].iterdir())
    fs = work / "fs"
    fs.mkdir()
    write, flash_s, same, same_write = [], [], [], []
    with VirtualHelmet(fs, heapsize=args.heapsize) as helmet, SerialTransport(helmet.port) as t:
        t0 = time.monotonic()
        first = flash_helmet(t, bundle=bundles[0])  # firmware + bundle onto an empty helmet
        first_s = time.monotonic() - t0
        for b in bundles[1:]:
            t0 = time.monotonic()
            s = flash_helmet(t, bundle=b)
            flash_s.append(time.monotonic() - t0)
            assert s["bytes"] >= size and s["info"]["bundle"] == "model_bundle" and "pad.bin" in str(s["written"])
            write.append(s["seconds"])
            t0 = time.monotonic()
            s = flash_helmet(t, bundle=b)
            same.append(time.monotonic() - t0)
            same_write.append(s["seconds"])
            assert s["written"] == []
        mpy = first["mpy"]
    figures = {
        "bundle_bytes": size, "runs": args.runs, "heapsize": args.heapsize, "firmware": f".mpy {mpy}",
        "write_s_median": round(statistics.median(write), 3), "write_s_max": round(max(write), 3),
        "flash_s_median": round(statistics.median(flash_s), 3), "flash_s_max": round(max(flash_s), 3),
        "unchanged_s_median": round(statistics.median(same), 3),
        "unchanged_compare_s_median": round(statistics.median(same_write), 3),
        "first_flash_firmware_and_bundle_s": round(first_s, 3),
        "first_flash_bytes": first["bytes"], "first_flash_files": len(first["written"]),
        "target_s": 2.0, "meets_target": statistics.median(flash_s) < 2.0,
    }
    path = write_result("flash_time", figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
