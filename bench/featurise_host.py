"""Benchmark: host featurisation throughput on one core, as a multiple of real time.

64 channels at 160 Hz (PhysioNet's layout) -> 3.5-s windows -> 7 frames x 3 bands x 32x32
topomaps, the host's numpy path (``Preprocessing.images``), with and without a 64 x 64
cleaning matrix. Throughput = seconds of EEG featurised per second of wall time, median of
repeated runs on a batch of windows; all BLAS/OpenMP pools are limited to one thread.

Run: .venv/bin/python -m bench.featurise_host
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy is imported: one core

import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.common import write_result  # noqa: E402
from painhelm.train.features import Preprocessing  # noqa: E402

CH_NAMES = ("FC5 FC3 FC1 FCz FC2 FC4 FC6 C5 C3 C1 Cz C2 C4 C6 CP5 CP3 CP1 CPz CP2 CP4 CP6 Fp1 Fpz Fp2 AF7 "
            "AF3 AFz AF4 AF8 F7 F5 F3 F1 Fz F2 F4 F6 F8 FT7 FT8 T7 T8 T9 T10 TP7 TP8 P7 P5 P3 P1 Pz P2 P4 P6 "
            "P8 PO7 PO3 POz PO4 PO8 O1 Oz O2 Iz").split()
SFREQ, N_FRAMES, SECONDS, SIZE = 160.0, 7, 3.5, 32


def _median_rate(fn, data, repeats: int) -> tuple[float, float]:
    """(median seconds per batch, EEG seconds per wall second)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return med, len(data) * SECONDS / med


def main(n_windows: int = 256, repeats: int = 7) -> dict:
    rng = np.random.default_rng(0)
    n_times = int(SECONDS * SFREQ)
    data = (20 * rng.standard_normal((n_windows, len(CH_NAMES), n_times))).astype(np.float32)
    pre = Preprocessing.fit(data[:64], SFREQ, CH_NAMES, N_FRAMES, SIZE)
    clean = np.eye(len(CH_NAMES), dtype=np.float32) + 0.01 * rng.standard_normal((64, 64)).astype(np.float32)
    pre_clean = Preprocessing.fit(data[:64], SFREQ, CH_NAMES, N_FRAMES, SIZE, clean=clean)
    out = pre.images(data[:2])
    assert out.shape == (2, N_FRAMES, 3, SIZE, SIZE)
    figures = {"channels": len(CH_NAMES), "sfreq": SFREQ, "window_s": SECONDS, "frames": N_FRAMES,
               "bands": 3, "image_size": SIZE, "windows_per_batch": n_windows, "repeats": repeats, "threads": 1}
    for name, p in (("plain", pre), ("with_cleaning_matrix", pre_clean)):
        bp_s, _ = _median_rate(p.band_powers, data, repeats)
        all_s, rate = _median_rate(p.images, data, repeats)
        figures[name] = {"batch_s": round(all_s, 4), "band_powers_s": round(bp_s, 4),
                         "ms_per_window": round(1000 * all_s / n_windows, 3),
                         "x_real_time": round(rate, 1)}
    return figures


if __name__ == "__main__":
    figs = main()
    path = write_result("featurise_host", figs)
    print(f"{figs['plain']['x_real_time']:.0f}x real time ({figs['plain']['ms_per_window']} ms per 3.5-s window); "
          f"with a cleaning matrix {figs['with_cleaning_matrix']['x_real_time']:.0f}x -> {path}")
