"""What a helmet must report for a recording, computed on the host from its bundle.

This is the host pipeline the device is checked against: the same windows (every ``hop``
samples), the host's numpy DSP and topomaps (``painhelm.train``), the int8 model in
TensorFlow Lite Micro (the interpreter the helmet reproduces bit for bit), and the
firmware's own decision stage (``painhelm.firmware.quality`` / ``decide``: one definition
of the gates and the smoothing, run here on CPython). Device reports and these agree on
everything but the clocks (``t_ms``, ``dsp_us``, ``infer_us``); the OOD score agrees to
float32 rounding (the device's DSP is float32).
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import numpy as np

from painhelm.firmware import bundle as fmt
from painhelm.firmware import decide, quality, wire

# report fields that come from clocks, not from the data
CLOCK_KEYS = ("t_ms", "dsp_us", "infer_us")


def load_bundle(bundle_dir: str | Path):
    """``(preproc dict, Preprocessing)`` rebuilt from a bundle folder's files."""
    from painhelm.train.features import Preprocessing

    root = Path(bundle_dir)
    pre = json.loads((root / fmt.PREPROC_FILE).read_text())
    n_ch = len(pre["ch_names"])
    n_bands = len(pre["bands"])
    W = np.fromfile(root / fmt.TOPOMAP_FILE, "<f4").reshape(-1, n_ch)
    clean = np.fromfile(root / fmt.CLEAN_FILE, "<f4").reshape(n_ch, n_ch) if pre.get("clean") else None
    p = Preprocessing(pre["sfreq"], list(pre["ch_names"]), pre["n_times"], pre["n_frames"],
                      pre["image_size"], W, np.asarray(pre["mean"], np.float32).reshape(n_bands, n_ch),
                      np.asarray(pre["std"], np.float32).reshape(n_bands, n_ch),
                      tuple(tuple(b) for b in pre["bands"]), None, pre.get("n_per_seg"), "band", clean)
    return pre, p


def window_ends(n_samples: int, n_times: int, hop: int) -> list[int]:
    """Absolute end indices (exclusive) of the windows a helmet cuts from ``n_samples``."""
    return list(range(n_times, n_samples + 1, hop))


def expected_reports(bundle_dir: str | Path, data: np.ndarray, hop: int | None = None) -> list[dict]:
    """The reports a helmet running ``bundle_dir`` sends for ``data`` (n_ch, n_samples) µV
    streamed from sample 0, one window every ``hop`` samples (default: the window length).

    Each report is a dict with the keys of ``wire.unpack_report`` (clock fields are 0).
    """
    from painhelm.compress.decisions import output_quantization
    from painhelm.compress.export import TFLMRunner, quantize_array

    pre, p = load_bundle(bundle_dir)
    data = np.asarray(data, np.float32)
    n_ch, n_times = len(pre["ch_names"]), pre["n_times"]
    if data.ndim != 2 or data.shape[0] != n_ch:
        raise ValueError(f"data must be ({n_ch} channels, n_samples), got {data.shape}")
    hop = hop or n_times
    ends = window_ends(data.shape[1], n_times, hop)
    if not ends:
        return []
    windows = np.stack([data[:, e - n_times:e] for e in ends])  # float32, as the device holds them
    logbp = p.band_powers(windows.astype(np.float64))
    images = p.images_from_logbp(logbp)
    runner = TFLMRunner(Path(bundle_dir) / fmt.MODEL_FILE)
    level_q, location_q = runner.predict_int8(quantize_array(images, pre["input_scale"], pre["input_zero_point"]))
    q = output_quantization(runner)
    outs = [q["level"], q["location"]]

    dec = pre.get("decision")
    n_levels, n_locations = len(pre["level_names"]), len(pre["location_names"])
    qc = quality.Quality(n_ch, n_times, pre["sfreq"], dec.get("quality") if dec else None)
    decider = decide.Decider(n_levels, n_locations, dec)
    reports = []
    for k, end in enumerate(ends):
        x = array("f", windows[k].ravel().tobytes())
        qc.check(x)
        lb = array("f", logbp[k].astype(np.float32).ravel().tobytes())
        ood = decider.ood_of(lb)
        lq, cq = [int(v) for v in level_q[k]], [int(v) for v in location_q[k]]
        reasons = decider.update(lq, outs[0][0], outs[0][1], cq, outs[1][0], outs[1][1], qc.ok, ood)
        payload = wire.pack_report(k + 1, 0, end, decider.level, decider.location, decider.level_conf,
                                   decider.location_conf, reasons, qc.flags, ood, qc.bad, 0, 0, lq, cq)
        reports.append(wire.unpack_report(payload))  # the same rounding as the wire
    return reports


def compare_reports(device: list[dict], host: list[dict], ood_tol: float = 0.02) -> list[str]:
    """Differences between device and host reports, one line each (empty: they agree).

    Clock fields are ignored; the OOD score may differ by float32 rounding (``ood_tol``).
    """
    lines = []
    if len(device) != len(host):
        lines.append(f"{len(device)} device reports, {len(host)} host reports")
    for i, (d, h) in enumerate(zip(device, host)):
        for key in h:
            if key in CLOCK_KEYS or key == "report_seq":
                continue
            if key == "ood":
                if abs(d[key] - h[key]) > ood_tol * max(1.0, abs(h[key])):
                    lines.append(f"report {i}: ood {d[key]} vs host {h[key]}")
            elif d[key] != h[key]:
                lines.append(f"report {i}: {key} {d[key]} vs host {h[key]}")
    return lines
