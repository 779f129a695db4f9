"""Benchmark: what pruning and int8 cost, on synthetic-pain and on physionet-mi (real EEG).

For each dataset: one `painhelm train` with held-out subjects (synthetic) or runs
(physionet-mi), then `painhelm compress` in several variants and `painhelm compare` of
each on the held-out data. Figures per variant and head: float and int8 accuracy, the
int8-vs-float accuracy drop and argmax agreement, file sizes, parameters and MACs, and
the float accuracy change that pruning caused. Writes ``results/compress_<dataset>.json``.

Run: .venv/bin/python -m bench.compress_tables [synthetic|physionet ...]   (~10 min on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from bench.common import run_painhelm, write_result

DATASETS = {
    # name: `painhelm train` arguments (data and held-out part)
    "synthetic": ["--dataset", "synthetic-pain", "--exclude-subject", "S04", "--exclude-subject", "S05"],
    "physionet": ["--dataset", "physionet-mi", "--task", "where-5", "--exclude-session", "R07",
                  "--exclude-session", "R08", "--exclude-session", "R09", "--exclude-session", "R10"],
}
VARIANTS = {
    # name: `painhelm compress` arguments
    "int8": [],
    "qat": ["--qat"],
    "structured-50": ["--prune", "structured", "--amount", "0.5"],
    "unstructured-50": ["--prune", "unstructured", "--amount", "0.5"],
}


def _variant_figures(folder: Path) -> dict:
    comp = json.loads((folder / "compress.json").read_text())
    cmp_ = json.loads((folder / "compare" / "compare.json").read_text())
    heads = {}
    for h in cmp_["heads"]:
        rows = {r["kind"]: r for r in cmp_["rows"][h]}
        heads[h] = {"n": rows["float"]["n"], "float_acc": rows["float"]["accuracy"],
                    "int8_acc": rows["int8"]["accuracy"],
                    "drop_pp": cmp_["targets"]["heads"][h]["accuracy_drop_pp"],
                    "agreement": rows["cross"]["agreement"], "cos": rows["cross"].get("cos"),
                    "l2r": rows["cross"].get("l2r"), "rmse": rows["cross"].get("rmse"),
                    "n_flips": rows["cross"].get("n_flips"), "flip_margin_max": rows["cross"].get("flip_margin_max")}
    tfl = {r["key"]: r for r in cmp_["runtimes"]}
    return {"heads": heads, "sizes": cmp_["sizes"], "prune": comp.get("prune"), "qat": comp.get("qat"),
            "tflm_arena_bytes": (tfl.get("tflm_int8") or {}).get("arena_bytes"),
            "latency_ms": {k: r.get("median_ms") for k, r in tfl.items()},
            "compress_s": comp.get("seconds")}


def run(name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        commands = []
        train_args = ["train", *DATASETS[name], "--out", str(model), "--set", "threads=2"]
        _, train_s = run_painhelm(train_args)
        commands.append("painhelm " + " ".join(train_args).replace(str(model), "MODEL"))
        variants = {}
        for v, extra in VARIANTS.items():
            out = Path(tmp) / v
            comp_args = ["compress", str(model), "--out", str(out), *extra]
            cmp_args = ["compare", str(out), "--latency-runs", "30"]
            _, cs = run_painhelm(comp_args)
            text, ms = run_painhelm(cmp_args)
            commands += ["painhelm " + " ".join(comp_args).replace(str(model), "MODEL").replace(str(out), v),
                         "painhelm " + " ".join(cmp_args).replace(str(out), v)]
            variants[v] = _variant_figures(out)
            variants[v]["wall_s"] = round(cs + ms, 1)
            print(f"== {name} / {v}: {cs + ms:.0f} s\n{text[-1800:]}", flush=True)
    base = variants["int8"]["heads"]
    for v, fig in variants.items():  # pruning's (and QAT's) effect on the float model, same test data
        for h, f in fig["heads"].items():
            f["float_change_vs_unpruned_pp"] = 100 * (f["float_acc"] - base[h]["float_acc"])
    figures = {"painhelm_commands": commands, "train_s": round(train_s, 1), "variants": variants}
    write_result(f"compress_{name}", figures)
    return figures


def main(names: list[str]) -> None:
    for name in names or list(DATASETS):
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        run(name)


if __name__ == "__main__":
    main(sys.argv[1:])
