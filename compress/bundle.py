"""Write the helmet bundle (format defined once in ``painhelm.firmware.bundle``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from painhelm.firmware import bundle as fmt
from painhelm.firmware.version import VERSION


# packages whose versions decide what the bundle's files contain
_VERSIONED = ("painhelm", "torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "numpy", "mne")


def versions() -> dict[str, str]:
    """Installed versions of the packages that produced a bundle (missing ones omitted)."""
    from importlib import metadata

    out = {"firmware": VERSION}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_selftest(path: str | Path, tflite_int8: str | Path, n_cases: int = 2, seed: int = 0) -> Path:
    """Write ``selftest.bin``: ``n_cases`` seeded int8 inputs and the outputs TensorFlow Lite
    Micro gives for them (layout: ``painhelm.firmware.bundle.SELFTEST_HEADER``). The helmet
    runs them before it uses the bundle, so a model its interpreter would compute wrongly,
    or a corrupted file that still matches its hash, is refused at boot."""
    import struct

    from painhelm.compress.export import TFLMRunner

    runner = TFLMRunner(tflite_int8)
    shape = tuple(int(v) for v in runner._it.get_input_details(0)["shape"])[1:]
    rng = np.random.default_rng(seed)
    # spread like real images: around the zero point, a few saturating pixels
    x = np.clip(np.rint(rng.normal(runner.input_zero_point, 40, (n_cases,) + shape)), -128, 127).astype(np.int8)
    lv, lc = runner.predict_int8(x)
    parts = [struct.pack(fmt.SELFTEST_HEADER, fmt.SELFTEST_MAGIC, n_cases, int(np.prod(shape)),
                         lv.shape[1], lc.shape[1])]
    for i in range(n_cases):
        parts += [x[i].tobytes(), lv[i].tobytes(), lc[i].tobytes()]
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def write_bundle(out_dir: str | Path, tflite_int8: str | Path, pre, level_names: list[str],
                 location_names: list[str], input_scale: float, input_zero_point: int,
                 decision: dict | None = None, source: dict | None = None) -> Path:
    """Write ``out_dir`` with model, preprocessing, topomap matrix and (last) the manifest.

    ``pre`` is a :class:`painhelm.train.features.Preprocessing`; ``input_scale`` and
    ``input_zero_point`` are the int8 model's input quantization; ``decision`` is the decision
    stage's calibrated section (``painhelm.compress.decisions.calibrate``; None: none is
    written and the helmet runs without gates); ``source`` describes where the
    model came from (model folder, its SHA-256, compression) and goes into the manifest
    beside the versions of the tools. A ``pre`` fitted on band-power tables (no raw-EEG
    front end) cannot drive a helmet and is refused.
    """
    if not pre.n_times or not pre.sfreq:
        raise ValueError("this preprocessing starts from band powers (e.g. laser-pain-features); "
                         "a helmet bundle needs one fitted on raw EEG")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / fmt.MANIFEST_FILE).unlink(missing_ok=True)  # an old manifest must not bless new files
    shutil.copyfile(tflite_int8, out / fmt.MODEL_FILE)
    preproc = {
        "sfreq": float(pre.sfreq), "ch_names": list(pre.ch_names), "n_times": int(pre.n_times),
        "n_frames": int(pre.n_frames), "bands": [list(b) for b in pre.bands],
        "image_size": int(pre.image_size),
        "mean": [float(v) for v in np.asarray(pre.mean, np.float32).ravel()],
        "std": [float(v) for v in np.asarray(pre.std, np.float32).ravel()],
        "input_scale": float(input_scale), "input_zero_point": int(input_zero_point),
        "level_names": list(level_names), "location_names": list(location_names),
        "clean": pre.clean is not None, "n_per_seg": pre.n_per_seg,
    }
    if decision is not None:
        preproc["decision"] = decision
    assert set(fmt.PREPROC_KEYS) <= set(preproc)
    (out / fmt.PREPROC_FILE).write_text(json.dumps(preproc))
    (out / fmt.TOPOMAP_FILE).write_bytes(np.asarray(pre.W, dtype="<f4").tobytes())
    names = list(fmt.FILES)
    write_selftest(out / fmt.SELFTEST_FILE, tflite_int8)
    names.append(fmt.SELFTEST_FILE)
    (out / fmt.CLEAN_FILE).unlink(missing_ok=True)
    if pre.clean is not None:
        (out / fmt.CLEAN_FILE).write_bytes(np.asarray(pre.clean, dtype="<f4").tobytes())
        names.append(fmt.CLEAN_FILE)
    files = {}
    for name in names:
        data = (out / name).read_bytes()
        files[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"bundle_version": fmt.BUNDLE_VERSION, "firmware": VERSION, "files": files,
                "versions": versions(), "source": source or {}}
    (out / fmt.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out


def read_preproc(bundle_dir: str | Path) -> dict:
    """The bundle's preproc.json as a dict."""
    return json.loads((Path(bundle_dir) / fmt.PREPROC_FILE).read_text())
