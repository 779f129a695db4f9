"""Benchmark: the evaluation tables of issue 5, each produced by one `painhelm evaluate` command.

Runs every command below with the default training configuration, copies each report into
``results/evaluate_<name>.json`` (with command, date, machine and wall time) and prints the
per-subject / per-run tables. ``docs/benchmarks.md`` quotes them.

Run: .venv/bin/python -m bench.evaluate_tables [NAME ...]     (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench.common import run_painhelm, write_result

RUNS = {
    # name: arguments of `painhelm evaluate`
    "synthetic_loso": ["--dataset", "synthetic-pain", "--workers", "2"],
    "synthetic_variants": ["--dataset", "synthetic-pain", "--models",
                           "painnet,edge-lstm,edge-max,edge-conv1d,edge-mixed", "--workers", "2"],
    "synthetic_vgg": ["--dataset", "synthetic-pain", "--models", "vgg-lstm-attn", "--set", "image_size=32",
                      "--threads", "2"],
    "physionet_executed_lr": ["--dataset", "physionet-mi", "--task", "executed-lr", "--permutations", "20",
                              "--workers", "2"],
    "physionet_imagined_lr": ["--dataset", "physionet-mi", "--task", "imagined-lr", "--permutations", "20",
                              "--workers", "2"],
    "physionet_where5": ["--dataset", "physionet-mi", "--task", "where-5", "--workers", "2"],
    "laser_loso": ["--dataset", "laser-pain-features", "--permutations", "10", "--workers", "2"],
}


def run(name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = RUNS[name] + ["--out", tmp]
        stdout, wall = run_painhelm(["evaluate", *args])
        report = json.loads((Path(tmp) / "report.json").read_text())
        table = (Path(tmp) / "report.md").read_text()
    figures = {"painhelm_command": "painhelm evaluate " + " ".join(RUNS[name]), "wall_s": round(wall, 1),
               "report": report, "report_md": table}
    write_result(f"evaluate_{name}", figures)
    print(f"== {name}: {wall:.0f} s\n{stdout[-2500:]}", flush=True)
    return figures


def main(names: list[str]) -> None:
    for name in names or list(RUNS):
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
        run(name)


if __name__ == "__main__":
    main(sys.argv[1:])
