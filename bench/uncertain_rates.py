"""Benchmark: how often the helmet says "uncertain", on clean and on artifact-corrupted windows.

One `painhelm train` on synthetic-pain without S04 and S05 and one `painhelm compress`
(TFLite + bundle, whose ``decision`` section is calibrated on the training subjects S01-S03
only). The held-out subjects' 2 x 96 windows are then played as two sessions: per subject,
its 8 (level, location) classes in a seeded random order, 12 consecutive windows each (a
wearer's pain holds for a while; the smoother assumes so). Conditions:

- ``clean``: the windows as generated;
- one condition per artifact of the generator (``blink``, ``muscle``, ``line_noise``,
  ``flat_channel``, ``bad_channel``; ``make_synthetic(artifact_rate=1, artifact_types=(kind,))``,
  whose clean EEG is bitwise the same) and two the generator lacks, added here:
  ``saturation`` (one channel drifts into the amplifier's rail and is clipped there) and
  ``electrode_pop`` (one channel jumps by 50-200 µV and relaxes with a 0.1-0.5 s time
  constant); every window of the stream carries one;
- ``mixed``: a quarter of the windows (seeded) carry one artifact of the seven, the rest
  are clean, in one stream.

Per window: the raw samples go through the firmware's ``quality.Quality``; band powers come
from the host DSP (``Preprocessing.band_powers``, numpy; ``tests/test_dsp.py`` holds the
device's DSP to it); the OOD score from the firmware's ``decide.ood_score`` with the bundle's
statistics; the int8 logits from TensorFlow Lite Micro (``compress.export.TFLMRunner``) on
the bundle's ``model.tflite`` (bit-exact with the helmet's interpreter); the report from the
firmware's ``decide.Decider`` with the bundle's ``decision`` section, once with its smoothing
and once with smoothing off (each window on its own, gates unchanged). All firmware code runs
on CPython here, as the host does when it reproduces the device.

Figures per condition: share of windows reported uncertain (either head withheld), share per
reason and per quality flag, per-head withheld share, accuracy on the windows reported (and,
for reference, the plain per-window argmax accuracy of all windows). Writes
``results/uncertain_rates.json``.

Run: .venv/bin/python -m bench.uncertain_rates   (30-80 s on 2 shared cores, training included)
"""

from __future__ import annotations

import json
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np

from bench.common import run_painhelm, write_result

HELD_OUT = ("S04", "S05")
TRAIN_ARGS = ["--dataset", "synthetic-pain", "--exclude-subject", HELD_OUT[0], "--exclude-subject", HELD_OUT[1]]
KINDS_GENERATOR = ("blink", "muscle", "line_noise", "flat_channel", "bad_channel")
KINDS_ADDED = ("saturation", "electrode_pop")
MIXED_RATE = 0.25
SEED = 0


# ---------------------------------------------------------------- corruptions the generator lacks

def _saturation(rng: np.random.Generator, x: np.ndarray, sfreq: float) -> None:
    """One channel's electrode offset drifts into the amplifier's rail (±100-400 µV after the
    front end) and the ADC clips it there for the rest of the drift."""
    n_ch, n_times = x.shape
    c = int(rng.integers(n_ch))
    rail = rng.uniform(100.0, 400.0)
    start = int(rng.integers(0, n_times // 2))
    ramp = np.clip((np.arange(n_times) - start) / max(1, int(rng.uniform(0.1, 0.5) * sfreq)), 0, None)
    x[c] = np.clip(x[c] + rng.choice([-1.0, 1.0]) * ramp * rail, -rail, rail)


def _electrode_pop(rng: np.random.Generator, x: np.ndarray, sfreq: float) -> None:
    """One channel's electrode-skin contact jumps (50-200 µV) and relaxes exponentially."""
    n_ch, n_times = x.shape
    c = int(rng.integers(n_ch))
    t0 = int(rng.integers(0, n_times - n_times // 8))
    tau = rng.uniform(0.1, 0.5) * sfreq
    t = np.arange(n_times) - t0
    x[c] += np.where(t >= 0, rng.choice([-1.0, 1.0]) * rng.uniform(50.0, 200.0) * np.exp(-np.maximum(t, 0) / tau), 0.0)


def _corrupted(kind: str, clean_all, idx: np.ndarray, sfreq: float, seed: int) -> np.ndarray:
    """Windows ``idx`` of the dataset, each with one artifact of ``kind``."""
    if kind in KINDS_GENERATOR:
        from painhelm.train.synthetic import make_synthetic

        art = make_synthetic(n_subjects=5, windows_per_class=12, seed=0, artifact_rate=1.0, artifact_types=(kind,))
        assert all(m["artifacts"] == [kind] for m in np.asarray(art.metadata, object)[idx])
        return art.data[idx].copy()
    rng = np.random.default_rng([seed, KINDS_ADDED.index(kind)])
    x = clean_all[idx].astype(np.float64)
    for w in x:
        (_saturation if kind == "saturation" else _electrode_pop)(rng, w, sfreq)
    return x.astype(np.float32)


# ---------------------------------------------------------------- the stream

def _session_order(trials) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the held-out windows as sessions (one per subject, classes in blocks; the
    calibration plays its validation windows the same way) and the session of each."""
    from painhelm.compress.decisions import session_order

    return session_order(trials.level * 1000 + trials.location, trials.subject, SEED)


class _Device:
    """The helmet's decision path on host-computed inputs (firmware code, CPython)."""

    def __init__(self, bundle_dir: Path, pre):
        from painhelm.compress.decisions import output_quantization
        from painhelm.compress.export import TFLMRunner

        self.preproc = json.loads((bundle_dir / "preproc.json").read_text())
        self.decision = self.preproc["decision"]
        self.pre = pre
        self.runner = TFLMRunner(bundle_dir / "model.tflite")
        quant = output_quantization(self.runner)
        self.scales = [quant["level"], quant["location"]]
        self.n_levels = len(self.preproc["level_names"])
        self.n_locations = len(self.preproc["location_names"])

    def windows(self, data: np.ndarray) -> dict:
        """Per-window gate inputs and logits of ``data`` (n, n_ch, n_times)."""
        from painhelm.compress.export import quantize_array
        from painhelm.firmware import decide, quality

        n, n_ch, n_times = data.shape
        q = quality.Quality(n_ch, n_times, self.pre.sfreq, self.decision["quality"])
        dec = decide.Decider(self.n_levels, self.n_locations, self.decision)
        ok, flags, ood = np.zeros(n, bool), np.zeros(n, int), np.zeros(n)
        logbp = self.pre.band_powers(data)
        for i in range(n):
            x = array("f")
            x.frombytes(np.ascontiguousarray(data[i], "<f4").tobytes())
            flags[i] = q.check(x)
            ok[i] = q.ok
            ood[i] = dec.ood_of(array("f", logbp[i].astype(np.float32).ravel()))
        images = self.pre.images_from_logbp(logbp).astype(np.float32)
        lq, cq = self.runner.predict_int8(quantize_array(images, self.runner.input_scale,
                                                         self.runner.input_zero_point))
        return {"ok": ok, "flags": flags, "ood": ood, "level_q": lq, "location_q": cq}

    def decide(self, w: dict, sessions: np.ndarray, smoothing: bool = True) -> dict:
        """Run the Decider over the stream (reset at each new session); per-window outputs."""
        from painhelm.firmware import decide

        cfg = dict(self.decision)
        if not smoothing:
            cfg["smoothing"] = dict(decide.SMOOTHING_OFF)
        d = decide.Decider(self.n_levels, self.n_locations, cfg)
        (ls, lz), (cs, cz) = self.scales
        n = len(sessions)
        out = {k: np.zeros(n, int) for k in ("level", "location", "reasons", "level_conf", "location_conf")}
        for i in range(n):
            if i and sessions[i] != sessions[i - 1]:
                d.reset()
            d.update(w["level_q"][i].tolist(), ls, lz, w["location_q"][i].tolist(), cs, cz,
                     bool(w["ok"][i]), float(w["ood"][i]))
            for k in out:
                out[k][i] = getattr(d, k)
        return out


def _figures(w: dict, r: dict, level: np.ndarray, location: np.ndarray, mask=None) -> dict:
    """Rates of one condition (over the windows in ``mask``)."""
    from painhelm.firmware import decide, quality

    m = np.ones(len(level), bool) if mask is None else mask
    n = int(m.sum())
    reasons, flags = r["reasons"][m], w["flags"][m]

    def rate(v):
        return round(float(np.mean(v)), 4) if n else None

    fig = {"n_windows": n, "uncertain": rate(reasons != 0),
           "by_reason": {name: rate(reasons & bit != 0) for bit, name in decide.REASON_NAMES},
           "quality_flags": {name: rate(flags & bit != 0) for bit, name in quality.FLAG_NAMES},
           "withheld": {}, "accuracy_reported": {}, "n_reported": {}, "accuracy_argmax_all": {}}
    for head, truth, q in (("level", level, w["level_q"]), ("location", location, w["location_q"])):
        got, t = r[head][m], truth[m]
        rep = got >= 0
        fig["withheld"][head] = rate(~rep)
        fig["n_reported"][head] = int(rep.sum())
        fig["accuracy_reported"][head] = round(float(np.mean(got[rep] == t[rep])), 4) if rep.any() else None
        fig["accuracy_argmax_all"][head] = rate(np.asarray(q)[m].argmax(1) == t)
    return fig


def run() -> dict:
    from painhelm.compress.pipeline import load_model_folder
    from painhelm.compress.source import held_out, load_source

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model, comp = Path(tmp) / "model", Path(tmp) / "compressed"
        train_args = ["train", *TRAIN_ARGS, "--out", str(model), "--set", "threads=2"]
        comp_args = ["compress", str(model), "--out", str(comp), "--formats", "tflite,bundle"]
        _, train_s = run_painhelm(train_args)
        _, comp_s = run_painhelm(comp_args)
        fitted = load_model_folder(comp / "model")
        trials = load_source(fitted)
        test = held_out(fitted, trials)
        assert sorted(set(test.subject.tolist())) == list(HELD_OUT)
        dev = _Device(comp / "bundle", fitted.pre)
        calib = json.loads((comp / "compress.json").read_text())["decision"]
        rng = np.random.default_rng(SEED)
        order_local, sessions = _session_order(test)
        idx = np.flatnonzero(np.isin(trials.subject, HELD_OUT))[order_local]  # in the dataset
        level, location = trials.level[idx], trials.location[idx]
        from painhelm.train.synthetic import make_synthetic

        assert np.array_equal(make_synthetic(n_subjects=5, windows_per_class=12, seed=0).data[idx], trials.data[idx])
        conditions = {"clean": trials.data[idx]}
        for kind in KINDS_GENERATOR + KINDS_ADDED:
            conditions[kind] = _corrupted(kind, trials.data, idx, trials.sfreq, SEED)
        kinds = KINDS_GENERATOR + KINDS_ADDED
        hit = rng.random(len(idx)) < MIXED_RATE
        which = rng.integers(0, len(kinds), len(idx))
        mixed = conditions["clean"].copy()
        for i in np.flatnonzero(hit):
            mixed[i] = conditions[kinds[which[i]]][i]
        conditions["mixed"] = mixed

        results = {}
        for name, data in conditions.items():
            w = dev.windows(data)
            res = {}
            for smooth in (True, False):
                r = dev.decide(w, sessions, smoothing=smooth)
                key = "smoothing" if smooth else "no_smoothing"
                if name == "mixed":
                    res[key] = {"all": _figures(w, r, level, location),
                                "clean_windows": _figures(w, r, level, location, ~hit),
                                "corrupted_windows": _figures(w, r, level, location, hit)}
                else:
                    res[key] = _figures(w, r, level, location)
            results[name] = res
            top = res["smoothing"]["all"] if name == "mixed" else res["smoothing"]
            print(f"{name:14s} uncertain {top['uncertain']}", flush=True)
    corrupted = [results[k]["smoothing"]["uncertain"] for k in kinds]
    figures = {
        "data": f"synthetic-pain (5 subjects, seed 0); model trained on S01-S03 (S01 its validation subject), "
                f"tested on held-out {' and '.join(HELD_OUT)}: {len(idx)} windows as 2 sessions of 8 class "
                "blocks x 12 consecutive windows",
        "painhelm_commands": ["painhelm " + " ".join(train_args).replace(str(model), "MODEL"),
                              "painhelm " + " ".join(comp_args).replace(str(model), "MODEL").replace(str(comp), "OUT")],
        "pipeline": "quality: firmware quality.Quality on raw samples; band powers: host numpy DSP; OOD: firmware "
                    "decide.ood_score; logits: TFLM on the bundle's model.tflite; report: firmware decide.Decider "
                    "(CPython)",
        "decision_section": {k: v for k, v in dev.decision.items() if k != "ood"}
        | {"ood": {"threshold": dev.decision["ood"]["threshold"]}},
        "calibration": calib,
        "conditions": results,
        "summary": {
            "clean_false_uncertain": results["clean"]["smoothing"]["uncertain"],
            "clean_false_uncertain_no_smoothing": results["clean"]["no_smoothing"]["uncertain"],
            "corrupted_uncertain_min_over_kinds": min(corrupted),
            "corrupted_uncertain_mean_over_kinds": round(float(np.mean(corrupted)), 4),
            "target": "corrupted >= 0.90 uncertain, clean <= 0.05 false-uncertain",
            "meets_target": bool(min(corrupted) >= 0.9 and results["clean"]["smoothing"]["uncertain"] <= 0.05),
        },
        "train_s": round(train_s, 1), "compress_s": round(comp_s, 1),
        "total_s": round(time.monotonic() - t_start, 1),
    }
    return figures


def _markdown(fig: dict) -> str:
    """The benchmark table for docs/benchmarks.md."""
    c = fig["conditions"]
    lines = ["| windows | n | uncertain | quality | OOD | low conf. | level acc. (reported) "
             "| location acc. (reported) | uncertain, no smoothing |",
             "|---|---|---|---|---|---|---|---|---|"]

    def row(name, f, g):
        acc = f["accuracy_reported"]
        lines.append(f"| {name} | {f['n_windows']} | {100 * f['uncertain']:.1f} % | "
                     f"{100 * f['by_reason']['quality']:.1f} % | {100 * f['by_reason']['ood']:.1f} % | "
                     f"{100 * f['by_reason']['low_confidence']:.1f} % | "
                     + " | ".join("–" if acc[h] is None else f"{100 * acc[h]:.1f} % ({f['n_reported'][h]})"
                                  for h in ("level", "location"))
                     + f" | {100 * g['uncertain']:.1f} % |")

    for name, res in c.items():
        if name == "mixed":
            for part in ("clean_windows", "corrupted_windows"):
                row(f"mixed, {part.replace('_', ' ')}", res["smoothing"][part], res["no_smoothing"][part])
        else:
            row(name, res["smoothing"], res["no_smoothing"])
    return "\n".join(lines)


def main() -> None:
    fig = run()
    path = write_result("uncertain_rates", fig)
    print(_markdown(fig))
    s = fig["summary"]
    print(f"clean false-uncertain {100 * s['clean_false_uncertain']:.1f} %, corrupted uncertain "
          f"min {100 * s['corrupted_uncertain_min_over_kinds']:.1f} % / "
          f"mean {100 * s['corrupted_uncertain_mean_over_kinds']:.1f} % "
          f"over kinds; {fig['total_s']:.0f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
