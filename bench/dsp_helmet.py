"""Benchmark: the helmet's DSP, band powers of one 1-s window of 32 channels at 250 Hz.

Runs ``firmware_py/dsp.py`` under the MicroPython unix port with a 256 KB heap (the
helmet's budget), once with the pure-Python kernel and once with the viper fixed-point
kernel, for theta/alpha/beta and for theta/alpha/beta/gamma (one 250-sample frame, one
periodogram). Time is taken inside MicroPython with ``time.ticks_us`` around each
``BandPower.compute`` call (median of >= 20 calls after one warm-up). Beside it: the host's
numpy ``band_powers`` on the same window (median per window; numpy's FFT and the
element-wise steps run on one thread), the heap the
``BandPower`` object takes (``gc.mem_alloc`` delta after constructing it), the largest
relative band-power difference of each kernel to numpy, and the plain kernel on CPython
(the Raspberry Pi path) on this machine. Target: viper under 100 ms.

Run: .venv/bin/python -m bench.dsp_helmet
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from painhelm.firmware.dsp import BANDS, BANDS_GAMMA, LOG_EPS
from painhelm.host_tools.virtual_helmet import find_micropython
from painhelm.train.dsp import band_powers

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware_py"
N_CH, SFREQ, N_TIMES = 32, 250.0, 250
HEAP = "256K"
RUNS = {"plain": 21, "viper": 101}

_MPY = """
import gc, json, sys, time
from array import array
import dsp
x = array('f', open('x.f32', 'rb').read())
n_ch, n_times, sfreq = %d, %d, %r

def run(kernel, bands, n_runs):
    gc.collect()
    a0 = gc.mem_alloc()
    bp = dsp.BandPower(n_ch, n_times, 1, sfreq, bands, kernel=kernel)
    gc.collect()
    heap = gc.mem_alloc() - a0
    out = array('f', bytearray(4 * len(bands) * n_ch))
    bp.compute(x, out)  # warm-up
    ts = []
    for _ in range(n_runs):
        t0 = time.ticks_us()
        bp.compute(x, out)
        ts.append(time.ticks_diff(time.ticks_us(), t0))
    exact = array('d', [0.0] * (len(bands) * n_ch))
    bp.compute(x, exact)
    return {'kernel': bp.kernel, 'n_bands': len(bands), 'heap_bytes': heap, 'us': ts,
            'logbp': [repr(v) for v in exact]}

print(json.dumps({'version': '.'.join(str(v) for v in sys.implementation.version if v != ''),
                  'impl': sys.implementation.name}))
for kernel, n_runs in %r:
    for bands in (dsp.BANDS, dsp.BANDS_GAMMA):
        print(json.dumps(run(kernel, bands, n_runs)))
"""


def _window(seed: int = 0) -> np.ndarray:
    """A seeded EEG-like window (n_ch, n_times) in µV: 1/f noise plus a 10 Hz alpha rhythm."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal((N_CH, N_TIMES)), axis=-1)
    f = np.fft.rfftfreq(N_TIMES, 1 / SFREQ)
    spec[:, 1:] /= np.sqrt(f[1:])
    x = np.fft.irfft(spec, n=N_TIMES, axis=-1) * 20
    t = np.arange(N_TIMES) / SFREQ
    x += 10 * np.sin(2 * np.pi * 10 * t + rng.uniform(0, 2 * np.pi, (N_CH, 1)))
    return x.astype(np.float32)


def _micropython(x: np.ndarray) -> list[dict]:
    """Run the timing script under the MicroPython unix port; return its JSON lines."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "x.f32").write_bytes(np.ascontiguousarray(x, "<f4").tobytes())
        code = _MPY % (N_CH, N_TIMES, SFREQ, list(RUNS.items()))
        env = dict(os.environ, MICROPYPATH=str(FIRMWARE))
        proc = subprocess.run([find_micropython(), "-X", "heapsize=" + HEAP, "-c", code], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"MicroPython failed:\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _numpy_ms(x: np.ndarray, bands, n_runs: int = 300) -> dict:
    """Host numpy time per window: one window per call, and a batch of 100 windows per call."""
    one = x[None]
    ts = []
    for _ in range(n_runs):
        t0 = time.perf_counter()
        band_powers(one, SFREQ, 1, bands)
        ts.append(time.perf_counter() - t0)
    batch = np.repeat(one, 100, axis=0)
    tb = []
    for _ in range(20):
        t0 = time.perf_counter()
        band_powers(batch, SFREQ, 1, bands)
        tb.append((time.perf_counter() - t0) / 100)
    return {"ms_per_window": round(1000 * float(np.median(ts)), 3),
            "ms_per_window_batched_100": round(1000 * float(np.median(tb)), 4)}


def _cpython_plain_ms(x: np.ndarray, bands, n_runs: int = 7) -> float:
    """The plain kernel on CPython (the Raspberry Pi path), median ms per window."""
    from array import array

    from painhelm.firmware.dsp import BandPower

    bp = BandPower(N_CH, N_TIMES, 1, SFREQ, bands)
    xs = array("f", x.ravel())
    out = array("f", [0.0] * (len(bands) * N_CH))
    ts = []
    for _ in range(n_runs):
        t0 = time.perf_counter()
        bp.compute(xs, out)
        ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 1)


def main() -> None:
    x = _window()
    lines = _micropython(x)
    head, runs = lines[0], lines[1:]
    ref = {3: band_powers(x[None], SFREQ, 1, BANDS)[0], 4: band_powers(x[None], SFREQ, 1, BANDS_GAMMA)[0]}
    figures = {
        "window": f"{N_CH} ch x {N_TIMES} samples (1 s at {SFREQ:g} Hz), 1 frame, one periodogram",
        "micropython": "%s %s unix port" % (head["impl"], head["version"]), "heap": HEAP, "target_ms": 100, "configs": {},
    }
    for r in runs:
        us = np.array(r["us"]) / 1000.0
        logbp = np.array([float(v) for v in r["logbp"]]).reshape(r["n_bands"], N_CH)
        power_ref = 10.0 ** ref[r["n_bands"]][0] - LOG_EPS
        rel = np.abs(10.0 ** logbp - LOG_EPS - power_ref) / power_ref
        name = "%s, %s" % (r["kernel"], "theta/alpha/beta" if r["n_bands"] == 3 else "+gamma")
        figures["configs"][name] = {
            "kernel": r["kernel"], "n_bands": r["n_bands"], "runs": len(us),
            "ms_median": round(float(np.median(us)), 2), "ms_p90": round(float(np.percentile(us, 90)), 2),
            "ms_min": round(float(us.min()), 2),
            "heap_bytes": r["heap_bytes"], "max_rel_err_vs_numpy": float(f"{rel.max():.2e}"),
        }
    for n_bands, bands in ((3, BANDS), (4, BANDS_GAMMA)):
        figures[f"numpy_host_{n_bands}_bands"] = _numpy_ms(x, bands)
        figures[f"cpython_plain_{n_bands}_bands_ms"] = _cpython_plain_ms(x, bands)
    for suffix in ("theta/alpha/beta", "+gamma"):
        plain = figures["configs"][f"plain, {suffix}"]["ms_median"]
        viper = figures["configs"][f"viper, {suffix}"]["ms_median"]
        figures[f"viper_speedup, {suffix}"] = round(plain / viper, 1)
    figures["viper_meets_target"] = all(c["ms_median"] < 100 for c in figures["configs"].values()
                                        if c["kernel"] == "viper")
    path = write_result("dsp_helmet", figures)
    print(f"{'config':28s} {'median ms':>10s} {'min ms':>8s} {'p90 ms':>8s} {'heap B':>7s} {'max rel err':>12s}")
    for name, c in figures["configs"].items():
        print(f"{name:28s} {c['ms_median']:10.2f} {c['ms_min']:8.2f} {c['ms_p90']:8.2f} {c['heap_bytes']:7d} "
              f"{c['max_rel_err_vs_numpy']:12.1e}")
    for n_bands in (3, 4):
        c = figures[f"numpy_host_{n_bands}_bands"]
        print(f"numpy host, {n_bands} bands: {c['ms_per_window']} ms per window "
              f"({c['ms_per_window_batched_100']} ms batched); plain kernel on CPython: "
              f"{figures[f'cpython_plain_{n_bands}_bands_ms']} ms")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
