"""Benchmark: `painhelm verify` throughput on the virtual helmet, as a multiple of real time.

A compact painnet (default settings, a few epochs: accuracy does not matter here) is fitted
on synthetic-pain S01-S03 and compressed; S04 and S05 (192 windows of 2 s = 384 s of EEG)
are the test set. ``painhelm verify`` is run as a user runs it, ``--runs`` times per path:

- ``infer_512K``: a 512 KB heap takes a whole window per MSG_INFER (the firmware as .py,
  as `painhelm flash` writes it);
- ``samples_256K``: a 256 KB heap cannot, so the windows stream as MSG_SAMPLES (firmware
  as .mpy, which the compact model needs at that heap).

Real-time multiple = EEG duration of the streamed windows / wall time of the stream
(verify.json ``throughput``; the host's own work before and after is not in it).
Target (issue 8): >= 50x. ``samples_512K`` (the SAMPLES path forced on the 512 KB
helmet, through the Python API) separates the path's cost from the heap's.

Run: .venv/bin/python -m bench.verify_throughput [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import run_painhelm, write_result

TEST_SUBJECTS = ("S04", "S05")


def build_folder(root: Path) -> Path:
    """Fit and compress the benchmark's model; return the compressed folder."""
    import torch

    from painhelm.compress.pipeline import compress_model
    from painhelm.train.datasets import load_dataset
    from painhelm.train.fit import TrainConfig, fit

    torch.set_num_threads(1)
    trials = load_dataset("synthetic-pain")
    train = trials.subset(~np.isin(trials.subject, TEST_SUBJECTS))
    fit(train, TrainConfig(epochs=4, threads=1, device="cpu"), out_dir=root / "model",
        source={"dataset": "synthetic-pain", "mapping": None, "task": None})
    compress_model(root / "model", root / "compressed", formats=("tflite", "bundle"), calib_size=64, log=None)
    return root / "compressed"


def flash_helmet(port: str, bundle: Path, mpy: bool) -> dict:
    """Flash firmware + bundle; return the helmet's description."""
    from painhelm.host_tools.flash import flash
    from painhelm.host_tools.image import device_image
    from painhelm.host_tools.link import HelmetLink
    from painhelm.host_tools.transport import SerialTransport

    t = SerialTransport(port, wait=5.0)
    try:
        flash(t, device_image(bundle, mpy=mpy), reset=True)
        return HelmetLink(t.serial).wait_ready(timeout=60.0)
    finally:
        t.close()


def run_cli(port: str, folder: Path, out: Path) -> dict:
    """One `painhelm verify` run; its verify.json figures."""
    _, wall = run_painhelm(["verify", "--port", port, "--model", str(folder), "--out", str(out)])
    res = json.loads((out / "verify.json").read_text())
    thr, lat = res["throughput"], res["latency_ms"]
    return {"path": thr["path"], "realtime_x": thr["realtime_x"], "stream_wall_s": thr["wall_s"],
            "eeg_s": thr["data_s"], "windows": res["n_windows"], "command_wall_s": wall,
            "device_ms_median": lat["device"]["median"], "dsp_ms_median": lat["dsp"]["median"],
            "infer_ms_median": lat["infer"]["median"], "round_trip_ms_median": lat["round_trip"]["median"],
            "cross": res["min_cross"]}


def run_api_samples(port: str, folder: Path) -> dict:
    """The SAMPLES path forced through the Python API (for a helmet that would take INFER)."""
    from painhelm.host_tools.connect import open_helmet
    from painhelm.host_tools.verify import stream_windows
    from painhelm.train.datasets import load_dataset

    trials = load_dataset("synthetic-pain")
    test = trials.subset(np.isin(trials.subject, TEST_SUBJECTS))
    with open_helmet(port) as h:
        s = stream_windows(h.link, h.info, test.data, test.sfreq, path="samples")
    eeg_s = len(test) * test.n_times / test.sfreq
    dsp = np.array([r["dsp_us"] for r in s.reports]) / 1e3
    inf = np.array([r["infer_us"] for r in s.reports]) / 1e3
    return {"path": s.path, "realtime_x": eeg_s / s.wall_s, "stream_wall_s": s.wall_s, "eeg_s": eeg_s,
            "windows": len(s.reports), "device_ms_median": float(np.median(dsp + inf)),
            "dsp_ms_median": float(np.median(dsp)), "infer_ms_median": float(np.median(inf)),
            "round_trip_ms_median": float(np.median(s.round_trip_s) * 1e3)}


def summarise(runs: list[dict]) -> dict:
    """Median over runs of each figure (and every run's real-time multiple)."""
    out = {"runs": len(runs), "realtime_x_each": [round(r["realtime_x"], 1) for r in runs]}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{k}"] = round(statistics.median(r[k] for r in runs), 2)
        else:
            out[k] = v
    out["meets_50x"] = out["realtime_x"] >= 50
    return out


def main() -> None:
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="verify runs per path (default: %(default)s)")
    args = ap.parse_args()
    figures: dict = {"loadavg_1min_before": os.getloadavg()[0]}  # a shared machine: other jobs slow the helmet
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        folder = build_folder(tmp)
        figures["model_build_s"] = round(time.monotonic() - t0, 1)
        for name, heap, mpy in (("infer_512K", "512K", False), ("samples_256K", "256K", True)):
            fs = tmp / f"fs_{name}"
            fs.mkdir()
            with VirtualHelmet(fs, heapsize=heap) as vh:
                info = flash_helmet(vh.port, folder / "bundle", mpy)
                runs = [run_cli(vh.port, folder, tmp / f"out_{name}_{i}") for i in range(args.runs)]
                figures[name] = {"heap": heap, "firmware": "mpy" if mpy else "py",
                                 "max_payload": info["max_payload"], **summarise(runs)}
                if name == "infer_512K":
                    api = [run_api_samples(vh.port, folder) for _ in range(args.runs)]
                    figures["samples_512K"] = {"heap": heap, "firmware": "py", "via": "Python API",
                                               **summarise(api)}
            print(f"{name}: {figures[name]['realtime_x']}x real time", flush=True)
    figures["target_x"] = 50
    figures["loadavg_1min_after"] = os.getloadavg()[0]
    path = write_result("verify_throughput", figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
