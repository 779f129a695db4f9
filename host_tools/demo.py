"""`painhelm demo`: the whole chain on synthetic data, ending in a report from a virtual helmet.

synthetic EEG -> band powers -> topomaps -> train CNN-LSTM+attention -> export int8
.tflite/.onnx -> bundle -> virtual helmet -> flash -> stream held-out windows over the
serial link -> device reports -> float vs int8 vs device vs truth.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from painhelm.firmware.version import VERSION


def _say(msg: str) -> None:
    print(msg, flush=True)


class _Stages:
    """Wall time per numbered stage, for the report and the benchmark."""

    def __init__(self):
        self.t = time.monotonic()
        self.name: str | None = None
        self.seconds: dict[str, float] = {}

    def start(self, name: str, msg: str) -> None:
        self.stop()
        self.name, self.t = name, time.monotonic()
        _say(msg)

    def stop(self) -> None:
        if self.name is not None:
            self.seconds[self.name] = round(time.monotonic() - self.t, 1)
            self.name = None


def run_demo(out_dir: str | Path = "runs/demo", seconds: float = 60.0, max_epochs: int = 80,
             n_subjects: int = 5, windows_per_class: int = 24, max_test_windows: int | None = None,
             heapsize: str = "512K", port: str | None = None, seed: int = 0,
             progress: bool | None = None) -> dict:
    """Run the demo; return the summary, the comparison rows, report paths and key figures
    (``device_vs_int8``: the lower of the two heads' device/host-int8 prediction agreement).

    ``port`` uses a real board instead of starting a virtual helmet.
    """
    from painhelm.compress.bundle import write_bundle
    from painhelm.compress.decisions import calibrate
    from painhelm.compress.export import TFLMRunner, export_onnx, export_tflite, quantize_array
    from painhelm.train.features import Preprocessing
    from painhelm.train.synthetic import make_synthetic
    from painhelm.train.trainer import predict, train_model

    from . import report
    from .flash import flash_helmet, progress_bar
    from .link import HelmetLink
    from .transport import SerialTransport
    from .virtual_helmet import VirtualHelmet

    if progress is None:
        progress = sys.stderr.isatty()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t_start = time.monotonic()
    stages = _Stages()

    stages.start("data", f"[1/7] synthetic pain EEG: {n_subjects} subjects, seed {seed}")
    ws = make_synthetic(n_subjects=n_subjects, windows_per_class=windows_per_class, seed=seed)
    subjects = list(dict.fromkeys(ws.subject))  # "S01", "S02", ... in order; the last is held out
    test_subject = subjects[-1]
    train, test = ws.subset(ws.subject != test_subject), ws.subset(ws.subject == test_subject)
    if max_test_windows:
        test = test.subset(np.arange(min(max_test_windows, len(test))))

    pre = Preprocessing.for_trials(train, n_frames=4, image_size=16)  # compact 16x16 for the helmet
    stages.start("features", f"[2/7] band powers and {pre.image_size}x{pre.image_size} topomaps: {len(train)} training windows, "
         f"{len(test)} held-out windows (subject {test_subject})")
    x_train, x_test = pre.images(train.data), pre.images(test.data)

    stages.start("train", f"[3/7] training CNN-LSTM+attention for up to {seconds:.0f} s / {max_epochs} epochs")
    model, history = train_model(x_train, train.level, train.location, seconds=seconds, max_epochs=max_epochs,
                                 seed=seed, progress=progress)
    model_dir = out / "model"
    model_dir.mkdir(exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": model.cfg.to_dict(), "history": history},
               model_dir / "model.pt")

    stages.start("export", "[4/7] exporting int8 .tflite and .onnx (each re-loaded and checked in its runtime)")
    export_dir = out / "export"
    calib = x_train[np.random.default_rng(seed).permutation(len(x_train))[:128]]
    tfl = export_tflite(model, calib, export_dir)
    onx = export_onnx(model, calib, export_dir)
    runner = TFLMRunner(tfl["int8"])  # TensorFlow Lite Micro: the helmet reproduces it bit for bit
    # decision gates from the training subjects only; train_model holds out no validation
    # subject, so the confidence gate stays off (docs/decisions.md)
    decision, decision_record = calibrate(pre, train, dataset="synthetic-pain")
    (out / "decision_calibration.json").write_text(json.dumps(decision_record, indent=1))
    bundle_dir = write_bundle(out / "bundle", tfl["int8"], pre, ws.level_names, ws.location_names,
                              runner.input_scale, runner.input_zero_point, decision=decision)

    float_logits = predict(model, x_test)
    # int8 logits once; their argmax is the class (dequantization is monotonic)
    host_level_q, host_loc_q = runner.predict_int8(quantize_array(x_test, runner.input_scale, runner.input_zero_point))
    preds = {
        "level": {"truth": test.level, "float": float_logits["level"].argmax(1), "int8": host_level_q.argmax(1)},
        "location": {"truth": test.location, "float": float_logits["location"].argmax(1), "int8": host_loc_q.argmax(1)},
    }

    fs_dir = out / "helmet_fs"
    helmet = None
    if port is None:
        fs_dir.mkdir(exist_ok=True)
        helmet = VirtualHelmet(fs_dir, heapsize=heapsize)
        helmet.start()
        port = helmet.port
        stages.start("helmet", f"[5/7] virtual helmet (MicroPython unix port, heap {heapsize}) on {port}")
    else:
        stages.start("helmet", f"[5/7] using the board on {port}")
    try:
        transport = SerialTransport(port, wait=5.0)
        try:
            stages.start("flash", "[6/7] flashing firmware and bundle over the raw REPL")
            flash_summary = flash_helmet(transport, bundle=bundle_dir, progress=progress_bar() if progress else None,
                                         timeout=60.0)
            link = HelmetLink(transport.serial, timeout=60.0)
            info = link.wait_ready(timeout=60.0)
            if info.get("bundle_error"):
                raise RuntimeError(f"the helmet refused the bundle: {info['bundle_error']}")
            stages.start("stream", f"[7/7] streaming {len(test)} held-out windows to the helmet")
            reports = []
            it = range(len(test))
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, desc="device", leave=False)
            for i in it:
                reports.append(link.infer(test.data[i], ws.sfreq))
        finally:
            transport.close()
    finally:
        if helmet is not None:
            helmet.stop()

    stages.stop()
    dev_level_q = np.array([r["level_q"] for r in reports], dtype=np.int8)
    dev_loc_q = np.array([r["location_q"] for r in reports], dtype=np.int8)
    # the model's decision on the device is the argmax of its int8 logits; what it
    # reports may instead be "uncertain" when a gate fails (counted below)
    preds["level"]["device"] = dev_level_q.argmax(1)
    preds["location"]["device"] = dev_loc_q.argmax(1)
    reasons = np.array([r["reasons"] for r in reports])
    from painhelm.firmware.decide import REASON_NAMES

    withheld = {name: int(np.sum(reasons & bit != 0)) for bit, name in REASON_NAMES}
    reported = reasons == 0
    reported_acc = {h: float(np.mean(np.array([r[h] for r in reports])[reported] == test_labels))
                    for h, test_labels in (("level", test.level[reported]), ("location", test.location[reported]))} \
        if reported.any() else {}
    heads = {h: report.compare_head(p) for h, p in preds.items()}
    logits_equal = float(np.mean(np.concatenate([(dev_level_q == host_level_q).ravel(),
                                                 (dev_loc_q == host_loc_q).ravel()])))
    max_diff = int(max(np.abs(dev_level_q.astype(int) - host_level_q).max(),
                       np.abs(dev_loc_q.astype(int) - host_loc_q).max()))
    infer_ms = np.array([r["infer_us"] for r in reports]) / 1000.0
    png = report.plot_confusions(out / "confusion.png", {
        "level: device": (report.confusion(test.level, preds["level"]["device"], 4), ws.level_names),
        "location: device": (report.confusion(test.location, preds["location"]["device"], 2), ws.location_names),
        "level: float": (report.confusion(test.level, preds["level"]["float"], 4), ws.level_names),
    })
    summary = {
        "firmware": VERSION,
        "data": f"synthetic-pain, {n_subjects} subjects; trained on {subjects[0]}-{subjects[-2]}, "
                f"tested on held-out {test_subject}",
        "held-out windows": len(test),
        "device": f"virtual helmet, MicroPython unix port, heap {heapsize}" if helmet else port,
        "device int8 logits identical to host int8 (TFLM)": f"{100 * logits_equal:.2f} % (max difference {max_diff})",
        "device inference time per window (median)": f"{np.median(infer_ms):.0f} ms",
        "device reported uncertain": f"{100 * (1 - reported.mean()):.1f} % of windows "
                                     f"({', '.join(f'{k} {v}' for k, v in withheld.items() if v) or 'none'})",
        "accuracy on reported windows": ", ".join(f"{h} {100 * v:.1f} %" for h, v in reported_acc.items()) or "-",
        "flash": f"{len(flash_summary.get('written', []))} files written, {len(flash_summary.get('skipped', []))} unchanged",
        "model": str(model_dir / "model.pt"),
        "int8 tflite": str(tfl["int8"]),
        "fp32 tflite": str(tfl["fp32"]),
        "int8 onnx": str(onx["int8"]),
        "fp32 onnx": str(onx["fp32"]),
        "bundle": str(bundle_dir),
        "total time": f"{time.monotonic() - t_start:.0f} s",
        "seconds per stage": ", ".join(f"{k} {v:.0f}" for k, v in stages.seconds.items()),
    }
    paths = report.write_report(out, "painhelm demo: float vs int8 vs device", summary, heads, png)
    _say("")
    _say(report.text_table(heads))
    _say("")
    for k in ("device int8 logits identical to host int8 (TFLM)", "device inference time per window (median)",
              "device reported uncertain", "accuracy on reported windows", "total time"):
        _say(f"{k}: {summary[k]}")
    _say(f"artifacts in {out}:")
    for k in ("model", "int8 tflite", "int8 onnx", "bundle"):
        _say(f"  {k:12s} {summary[k]}")
    _say(f"  {'report':12s} {paths['md']}  (also {paths['html'].name}, {png.name})")
    (out / "device_reports.json").write_text(json.dumps(reports))
    cross = min(float(np.mean(preds[h]["device"] == preds[h]["int8"])) for h in preds)
    return {"summary": summary, "heads": heads, "paths": paths, "logits_equal": logits_equal,
            "device_vs_int8": cross,
            "stage_seconds": stages.seconds, "max_logit_diff": max_diff}
