"""Evaluation: leave-one-group-out folds, metrics, reports, Ray vs sequential, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from painhelm.train import dsp
from painhelm.train.dataset import BandPowerTrials, DataError, Trials
from painhelm.train.evaluate import (TASKS, Fold, _shuffle_within, classification_metrics, evaluate, fold_seed,
                                     folds, labelled_heads, resolve_split, run_fold, select_task, wilson_interval)
from painhelm.train.report_eval import models_table, per_subject_table, render_text, write_report
from painhelm.train.synthetic import make_synthetic

from .shared_data import need


# --- a fast stand-in for train.fit.fit: nearest class centroid on log band powers ----------

@dataclass
class StandInConfig:
    model: str = "centroid"
    seed: int = 0


def _features(trials) -> np.ndarray:
    if isinstance(trials, BandPowerTrials):
        return trials.logbp.reshape(len(trials), -1)
    return dsp.band_powers(trials.data, trials.sfreq, 1).reshape(len(trials), -1)


class _Centroids:
    def __init__(self, keep, mean, std, centroids):
        self.keep, self.mean, self.std, self.centroids = keep, mean, std, centroids

    def predict(self, trials):
        x = (_features(trials)[:, self.keep] - self.mean) / self.std
        return {h: -((x[:, None, :] - c[None]) ** 2).sum(-1) for h, c in self.centroids.items()}


def centroid_fit(trials, cfg, progress=False):
    """Nearest centroid on a seed-chosen random subset of the features (so the seed matters).

    ``cfg.model`` "centroid-N" keeps N % of the features (default 60 %).
    """
    share = int(cfg.model.split("-")[1]) / 100 if "-" in cfg.model else 0.6
    x = _features(trials)
    rng = np.random.default_rng(cfg.seed)
    keep = np.sort(rng.choice(x.shape[1], max(1, int(share * x.shape[1])), replace=False))
    x = x[:, keep]
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std
    cents = {}
    for h in ("level", "location"):
        names = getattr(trials, h + "_names")
        if not names:
            continue
        y = getattr(trials, h)
        cents[h] = np.stack([z[y == c].mean(0) if np.any(y == c) else np.full(z.shape[1], 1e6)
                             for c in range(len(names))])
    return _Centroids(keep, mean, std, cents)


def _one_subject_runs(n_runs=3, per_run=8):
    """One subject, ``n_runs`` sessions: synthetic trials relabelled as runs of one person."""
    t = make_synthetic(n_subjects=n_runs, windows_per_class=1, seed=3)
    return Trials(t.data, t.ch_names, t.sfreq, t.pos, t.level, t.location, ["P1"] * len(t),
                  [f"R{int(s[1:]):02d}" for s in t.subject], t.level_names, t.location_names, name="runs")


@pytest.fixture(scope="module")
def small():
    return make_synthetic(n_subjects=3, windows_per_class=2, seed=1)


# --- folds -------------------------------------------------------------------------------

def _check_no_leak(trials, fl, by):
    groups = getattr(trials, by)
    tested = np.zeros(len(trials), int)
    for name, train, test in fl:
        assert set(groups[test]) == {name}
        assert name not in set(groups[train])
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(trials)  # every other trial trains
        tested[test] += 1
    assert np.all(tested == 1)  # each trial is tested exactly once


def test_loso_folds_never_leak(small):
    """LOSO: each subject is the test set once and never appears in its own training set."""
    fl = folds(small)
    assert [f.name for f in fl] == ["S01", "S02", "S03"]
    assert all(isinstance(f, Fold) for f in fl)
    _check_no_leak(small, fl, "subject")


def test_one_subject_gives_leave_one_run_out():
    """With one subject the folds hold out sessions (runs); with two runs: train on one, test on the other."""
    t = _one_subject_runs(3)
    assert resolve_split(t) == "session"
    fl = folds(t)
    assert [f.name for f in fl] == ["R01", "R02", "R03"]
    _check_no_leak(t, fl, "session")
    pair = t.subset(np.isin(t.session, ["R01", "R03"]))
    (n1, tr1, te1), (n2, tr2, te2) = folds(pair)
    assert set(pair.session[tr1]) == {"R03"} and set(pair.session[te1]) == {"R01"}
    assert set(pair.session[tr2]) == {"R01"} and set(pair.session[te2]) == {"R03"}


def test_too_few_groups_is_a_data_error():
    """One subject with one session cannot be cross-validated: a DataError says why."""
    t = _one_subject_runs(3)
    one = t.subset(t.session == "R01")
    with pytest.raises(DataError, match="1 sessions.*at least 2"):
        folds(one)
    with pytest.raises(DataError, match="1 subjects.*at least 2"):
        folds(t, "subject")
    with pytest.raises(ValueError, match="by must be one of"):
        folds(t, "trial")


def test_fold_seed_depends_on_seed_and_name_only():
    """Fold seeds are stable across processes and differ between folds and base seeds."""
    assert fold_seed(0, "S01") == fold_seed(0, "S01")
    assert len({fold_seed(0, "S01"), fold_seed(0, "S02"), fold_seed(1, "S01")}) == 3
    code = "from painhelm.train.evaluate import fold_seed; print(fold_seed(0, 'S01'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == fold_seed(0, "S01")  # not Python's per-process randomised hash()


# --- metrics -----------------------------------------------------------------------------

def test_wilson_interval_matches_hand_computed():
    """Wilson 95 % interval: 8/10 -> [0.4902, 0.9433], 0/10 -> [0, 0.2775], 10/10 -> [0.7225, 1]."""
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_metrics_match_hand_computed():
    """Accuracy 4/6, macro-F1 (0.5 + 0.8 + 2/3) / 3, kappa (2/3 - 1/3) / (1 - 1/3), confusion."""
    m = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert m["n"] == 6 and m["correct"] == 4
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["kappa"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["ci95"] == pytest.approx(list(wilson_interval(4, 6)))


def test_metrics_edge_cases():
    """One class on both sides: kappa is NaN (undefined); the confusion keeps every class."""
    m = classification_metrics([1, 1, 1], [1, 1, 1], 4)
    assert m["accuracy"] == 1.0 and math.isnan(m["kappa"])
    assert np.array(m["confusion"]).shape == (4, 4) and m["confusion"][1][1] == 3
    assert classification_metrics([], [], 2)["n"] == 0


# --- one fold, permutations --------------------------------------------------------------

def test_run_fold_scores_each_labelled_head(small):
    """A fold trains on other subjects only, scores both heads and records its seed and time."""
    seen = {}

    def spy_fit(trials, cfg, progress=False):
        seen["subjects"], seen["seed"] = set(trials.subject), cfg.seed
        return centroid_fit(trials, cfg)

    fold = folds(small)[1]
    res = run_fold(small, fold, StandInConfig(seed=7), spy_fit)
    assert seen["subjects"] == {"S01", "S03"} and seen["seed"] == fold_seed(7, "S02") == res["seed"]
    assert set(res["heads"]) == {"level", "location"} and res["n_test"] == len(fold.test_idx)
    assert res["heads"]["level"]["n"] == len(fold.test_idx) and res["wall_s"] >= 0


def test_unlabelled_head_is_skipped(small):
    """A head with no labels (location all -1, no names) is left out of the metrics."""
    t = Trials(small.data, small.ch_names, small.sfreq, small.pos, small.level, np.full(len(small), -1),
               small.subject, small.session, small.level_names, [])
    assert labelled_heads(t) == ["level"]
    res = run_fold(t, folds(t)[0], StandInConfig(), centroid_fit)
    assert list(res["heads"]) == ["level"]


def test_shuffle_within_groups_keeps_each_groups_labels():
    """Permuted labels stay within their group and rows (level, location) stay paired."""
    groups = np.array(["a"] * 6 + ["b"] * 6)
    level = np.arange(12)
    loc = np.arange(12) * 10
    out = _shuffle_within({"level": level, "location": loc}, groups, np.random.default_rng(0))
    assert sorted(out["level"][:6]) == list(range(6)) and sorted(out["level"][6:]) == list(range(6, 12))
    assert np.array_equal(out["location"], out["level"] * 10)
    assert not np.array_equal(out["level"], level)


def test_permutation_test_p_value(small):
    """With real labels well above chance, shuffled-label refits score lower and p = 1/(N+1)."""
    res = evaluate(small, StandInConfig(), fit_fn=centroid_fit, permutations=4)
    p = res["models"]["centroid"]["permutation"]["level"]
    assert len(p["null_accuracies"]) == 4 and p["observed"] == res["models"]["centroid"]["summary"]["level"]["accuracy_mean"]
    n_ge = sum(a >= p["observed"] for a in p["null_accuracies"])
    assert p["p_value"] == pytest.approx((1 + n_ge) / 5)
    assert p["observed"] > 0.5 and p["null_mean"] < p["observed"]


# --- evaluate and report -----------------------------------------------------------------

def test_evaluate_models_and_report(small, tmp_path):
    """Two models side by side; the report folder holds JSON, Markdown, HTML and confusion PNGs."""
    res = evaluate(small, StandInConfig(), models=["centroid", "centroid-30"], fit_fn=centroid_fit)
    assert res["protocol"] == "leave-one-subject-out" and res["folds"] == ["S01", "S02", "S03"]
    for model in ("centroid", "centroid-30"):
        s = res["models"][model]["summary"]
        accs = [f["heads"]["level"]["accuracy"] for f in res["models"][model]["folds"]]
        assert s["level"]["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert s["level"]["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
        assert np.sum(s["level"]["confusion"]) == len(small)
    header, rows = per_subject_table(res, "centroid")
    assert [r[0] for r in rows] == ["S01", "S02", "S03", "mean ± sd", "pooled"]
    assert "intensity acc %" in header and "location κ" in header
    assert [r[0] for r in models_table(res)[1]] == ["centroid", "centroid-30"]

    paths = write_report(res, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())  # strict JSON: NaN written as null
    assert data["models"]["centroid"]["folds"][0]["name"] == "S01"
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "| S02 |" in md and "Models side by side" in md and "Wilson" in md
    assert page.count("data:image/png;base64,") == 8  # 2 models x 2 heads x (pooled + per fold)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["png"])


def test_ray_matches_sequential(small):
    """Two Ray workers give exactly the sequential run's fold results."""
    pytest.importorskip("ray")
    kw = dict(models=["centroid", "centroid-30"], fit_fn=centroid_fit)
    seq = evaluate(small, StandInConfig(seed=3), **kw)
    par = evaluate(small, StandInConfig(seed=3), workers=2, **kw)
    assert par["engine"] == "ray local" and seq["engine"] == "sequential"
    for model in seq["models"]:
        strip = lambda fs: [{k: v for k, v in f.items() if k != "wall_s"} for f in fs]  # noqa: E731
        assert strip(par["models"][model]["folds"]) == strip(seq["models"][model]["folds"])
    # and the seed really matters: another seed picks other features
    other = evaluate(small, StandInConfig(seed=4), fit_fn=centroid_fit)
    assert [f["seed"] for f in other["models"]["centroid"]["folds"]] != \
           [f["seed"] for f in seq["models"]["centroid"]["folds"]]


# --- tasks -------------------------------------------------------------------------------

def test_physionet_tasks_select_runs_and_classes():
    """executed-lr keeps runs R03/R07 and two classes; where-5 keeps all runs and five classes."""
    need("eegmmidb")
    from painhelm.train.datasets import load_dataset

    lr = select_task(load_dataset("physionet-mi"), "executed-lr")
    assert sorted(set(lr.session)) == ["R03", "R07"] and lr.location_names == ["left_hand", "right_hand"]
    assert set(lr.location) == {0, 1}
    fl = folds(lr)
    assert [f.name for f in fl] == ["R03", "R07"]
    _check_no_leak(lr, fl, "session")
    w5 = select_task(load_dataset("physionet-mi", **dict(TASKS["where-5"].load)), "where-5")
    assert len(set(w5.session)) == 8 and len(w5.location_names) == 5 and set(w5.location) == set(range(5))


# --- the CLI -----------------------------------------------------------------------------

def _cli(*args):
    # the installed entry point, as a user runs it
    exe = Path(sys.executable).with_name("painhelm")
    return subprocess.run([str(exe), "evaluate", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, text", [
    (["--dataset", "no-such-set"], "unknown dataset 'no-such-set'"),
    (["--models", "painnet,nope"], "unknown model 'nope'"),
    (["--dataset", "physionet-mi", "--task", "bogus"], "unknown task 'bogus'"),
    (["--task", "executed-lr"], "is a task of physionet-mi, not of synthetic-pain"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--set", "no_such_key=1"], "no_such_key"),
    (["--config", "/nonexistent/train.toml"], "/nonexistent/train.toml"),
])
def test_cli_errors_are_one_line(args, text, capsys):
    """User mistakes give `painhelm: ...` on one stderr line and exit status 1."""
    from painhelm.host_tools.cli import main

    assert main(["evaluate", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("painhelm: ") and text in err and err.count("\n") == 1


def test_cli_too_few_subjects_is_one_line():
    """Holding out subjects of a one-subject dataset is refused by the installed command, no traceback."""
    need("eegmmidb")
    r = _cli("--dataset", "physionet-mi", "--split", "subject")
    assert r.returncode == 1 and r.stderr.startswith("painhelm: ") and "1 subjects" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_runs_and_prints_table(tmp_path, capsys):
    """`painhelm evaluate` prints a line per fold and the per-subject table, and writes the report."""
    from painhelm.host_tools.cli import build_parser
    from painhelm.host_tools.evaluate_cmd import do_evaluate

    args = build_parser().parse_args(["evaluate", "--dataset", "synthetic-pain", "--out", str(tmp_path / "r")])
    assert do_evaluate(args, fit_fn=centroid_fit) == 0
    out = capsys.readouterr().out
    assert out.count("] painnet fold S0") == 5 and "mean ± sd" in out and "S05" in out
    assert (tmp_path / "r" / "report.html").is_file() and (tmp_path / "r" / "confusion_painnet_level.png").is_file()


# --- the real fit, end to end ------------------------------------------------------------

def test_real_fit_end_to_end(tmp_path):
    """train.fit.fit runs inside LOSO folds with a tiny config and gives finite metrics per subject."""
    from painhelm.train.fit import TrainConfig

    t = make_synthetic(n_subjects=3, windows_per_class=3, seed=2)
    cfg = TrainConfig(epochs=2, batch_size=16, seed=0)
    res = evaluate(t, cfg)
    folds_ = res["models"]["painnet"]["folds"]
    assert [f["name"] for f in folds_] == ["S01", "S02", "S03"]
    for f in folds_:
        for h in ("level", "location"):
            assert f["heads"][h]["n"] == 24 and 0 <= f["heads"][h]["accuracy"] <= 1
    assert "S03" in render_text(per_subject_table(res))
    assert write_report(res, tmp_path)["html"].is_file()
