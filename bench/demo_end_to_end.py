"""Benchmark: the whole `painhelm demo` chain on this machine.

Figures: wall time of each stage and in total (target: under 10 minutes on 2 cores),
accuracy per head for host float, host int8 and device, device-vs-host-int8 agreement,
and the virtual helmet's per-window time (DSP + int8 inference under MicroPython).

Run: .venv/bin/python -m bench.demo_end_to_end
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from painhelm.host_tools.demo import run_demo


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        res = run_demo(Path(tmp) / "demo", progress=False)
        wall = time.monotonic() - t0
        reports = json.loads((Path(tmp) / "demo" / "device_reports.json").read_text())
    infer_ms = np.array([r["infer_us"] for r in reports]) / 1000.0
    heads = {h: {r["row"]: round(r["agree"], 4) for r in rows} for h, rows in res["heads"].items()}
    figures = {
        "total_wall_s": round(wall, 1),
        "stage_wall_s": res["stage_seconds"],
        "held_out_windows": len(reports),
        "agreement": heads,
        "device_logits_identical_fraction": round(res["logits_equal"], 4),
        "device_logits_max_abs_diff": res["max_logit_diff"],
        "device_ms_per_window_median": round(float(np.median(infer_ms)), 1),
        "device_ms_per_window_p90": round(float(np.percentile(infer_ms, 90)), 1),
    }
    path = write_result("demo_end_to_end", figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
