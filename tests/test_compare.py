"""`painhelm compare`: float vs int8 vs truth on held-out trials, runtimes, report, CLI errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import numpy as np
import pytest

from painhelm.compress import export as E
from painhelm.compress.compare import RUNTIMES, compare, find_arena_size, held_out, logit_errors
from painhelm.compress.report_compare import head_table, write_compare_report
from painhelm.host_tools.cli import CommandError
from painhelm.host_tools.compare_cmd import do_compare, parser_compare
from painhelm.train.fit import Fitted, TrainConfig, fit
from painhelm.train.synthetic import make_synthetic

N_LATENCY = 3


@pytest.fixture(scope="module")
def ws():
    """4 synthetic subjects x 8 classes x 3 windows (4 levels, 2 locations)."""
    return make_synthetic(n_subjects=4, windows_per_class=3, seed=3)


@pytest.fixture(scope="module")
def folder(ws, tmp_path_factory):
    """A compressed folder: a tiny painnet fitted without S04, saved to model/, exported to TFLite and ONNX."""
    out = tmp_path_factory.mktemp("compressed")
    train = ws.subset(ws.subject != "S04")
    cfg = TrainConfig(epochs=6, threads=1, patience=50, device="cpu", model_args={"lstm_hidden": 8})
    fitted = fit(train, cfg)
    fitted.save(out / "model")
    calib = fitted.images(train)
    E.export_tflite(fitted.model, calib, out, min_agree=0.5)
    E.export_onnx(fitted.model, calib, out, min_agree=0.5)
    return out


@pytest.fixture(scope="module")
def result(folder, ws):
    """compare() on the held-out subject with every runtime timed (few runs)."""
    fitted = Fitted.load(folder / "model")
    return compare(folder, held_out(fitted, ws), n_latency=N_LATENCY)


def test_logit_errors_known_answers():
    """cos, rmse and l2r of identical, scaled and shifted logits."""
    b = np.array([[1.0, -2.0], [3.0, 0.5]])
    e = logit_errors(b, b)
    assert e["cos"] == pytest.approx(1) and e["rmse"] == 0 and e["l2r"] == 0
    e = logit_errors(2 * b, b)
    assert e["cos"] == pytest.approx(1) and e["l2r"] == pytest.approx(1)
    e = logit_errors(b + 0.5, b)
    assert e["rmse"] == pytest.approx(0.5) and e["max_abs"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        logit_errors(b, b[:1])


def test_held_out_picks_the_unseen_subject_or_session(folder, ws):
    """Subjects never seen in training; with one subject, unseen sessions; else a clear error."""
    fitted = Fitted.load(folder / "model")
    assert set(fitted.extra["subjects"]) == {"S01", "S02", "S03"}
    test = held_out(fitted, ws)
    assert set(test.subject) == {"S04"} and len(test) == int(np.sum(ws.subject == "S04"))
    with pytest.raises(ValueError, match="--exclude-subject"):
        held_out(fitted, ws.subset(ws.subject != "S04"))

    one = ws.subset(ws.subject == "S01")
    one = dataclasses.replace(one, session=np.array([f"R{i % 3}" for i in range(len(one))]))
    seen_two = dataclasses.replace(fitted, extra={**fitted.extra, "subjects": ["S01"],
                                                  "sessions": ["S01/R0", "S01/R1"]})
    got = held_out(seen_two, one)
    assert set(got.session) == {"R2"} and len(got) == int(np.sum(one.session == "R2"))
    seen_all = dataclasses.replace(seen_two, extra={**seen_two.extra, "sessions": ["S01/R0", "S01/R1", "S01/R2"]})
    with pytest.raises(ValueError, match="--exclude-session"):
        held_out(seen_all, one)


def test_three_rows_per_head_match_independent_computations(result, folder, ws):
    """float/int8 accuracy, cross agreement, l2r and the per-subject row agree with numbers computed here."""
    fitted = Fitted.load(folder / "model")
    test = ws.subset(ws.subject == "S04")
    float_logits = fitted.predict(test)
    lv, lc = E.TFLiteRunner(folder / E.TFLITE_INT8).predict(fitted.images(test))
    int8_logits = {"level": lv, "location": lc}
    assert result["heads"] == ["level", "location"]
    assert result["test"] == {"n": len(test), "by": "subject", "groups": ["S04"], "seen_in_training": []}
    for h in ("level", "location"):
        rows = {r["kind"]: r for r in result["rows"][h]}
        assert [r["kind"] for r in result["rows"][h]] == ["float", "int8", "cross", "onnx_cross"]
        truth = getattr(test, h)
        pf, p8 = float_logits[h].argmax(1), int8_logits[h].argmax(1)
        assert rows["float"]["accuracy"] == pytest.approx(np.mean(pf == truth))
        assert rows["int8"]["accuracy"] == pytest.approx(np.mean(p8 == truth))
        assert rows["cross"]["agreement"] == rows["cross"]["accuracy"] == pytest.approx(np.mean(pf == p8))
        d = int8_logits[h] - float_logits[h]
        assert rows["cross"]["l2r"] == pytest.approx(np.linalg.norm(d) / np.linalg.norm(float_logits[h]), rel=1e-5)
        assert rows["cross"]["rmse"] == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-5)
        assert 0.9 < rows["cross"]["cos"] <= 1 + 1e-9
        for k in ("float", "int8", "cross"):
            assert np.sum(result["confusion"][h][k]) == len(test)
        assert np.trace(result["confusion"][h]["cross"]) == np.sum(pf == p8)
        g = result["per_group"]["rows"][0]["heads"][h]
        assert g["float_accuracy"] == pytest.approx(rows["float"]["accuracy"])
        assert g["agreement"] == pytest.approx(rows["cross"]["agreement"])
        drop = result["targets"]["heads"][h]["accuracy_drop_pp"]
        assert drop == pytest.approx(100 * (rows["float"]["accuracy"] - rows["int8"]["accuracy"]))
        assert len(head_table(result, h)[1]) == 4
    assert result["fp32_check"]["tflite"] < 1e-3 and result["fp32_check"]["onnx"] < 1e-3
    sizes = result["sizes"]
    assert sizes["tflite_ratio"] == pytest.approx((folder / E.TFLITE_INT8).stat().st_size
                                                  / (folder / E.TFLITE_FP32).stat().st_size)


def test_runtime_table_has_six_runtimes_and_a_real_arena(result, folder):
    """Six runtimes with latency and file size; the TFLM arena allocates and invokes, 1 KB less does not."""
    from tflite_micro.python.tflite_micro import runtime

    rows = {r["key"]: r for r in result["runtimes"]}
    assert list(rows) == [k for k, _ in RUNTIMES]
    for key, r in rows.items():
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
        assert r["bytes"] == (folder / r["file"]).stat().st_size > 0
    assert rows["torch"]["file"] == "model/model.pt"
    arena = rows["tflm_int8"]["arena_bytes"]
    assert arena > 0 and arena % 256 == 0
    model = (folder / E.TFLITE_INT8).read_bytes()
    r8 = E.TFLiteRunner(folder / E.TFLITE_INT8)
    x = np.zeros((1, *r8.input_shape[1:]), np.int8)
    it = runtime.Interpreter.from_bytes(model, arena_size=arena)
    it.set_input(x, 0)
    it.invoke()
    with E._quiet(), pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(model, arena_size=arena - 1024)
    assert find_arena_size(folder / E.TFLITE_INT8, x, step=1024) >= arena


def test_report_files_are_real(result, tmp_path):
    """compare.json is strict JSON; Markdown has the rows; HTML embeds the PNGs; PNGs decode."""
    import matplotlib.image as mpimg

    paths = write_compare_report(result, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert data["rows"]["level"][2]["row"] == "int8 vs float (cross)"
    md = paths["md"].read_text()
    for label in ("float vs truth", "int8 vs truth", "int8 vs float (cross)", "TFLite Micro int8", "Per subject"):
        assert label in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(paths["png"]) == 1 + 3 * 2
    assert 'src="confusion' not in page
    for p in paths["png"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.ndim == 3 and min(img.shape[:2]) > 100


def _args(*argv):
    p = argparse.ArgumentParser()
    parser_compare(p)
    return p.parse_args([str(a) for a in argv])


def test_do_compare_prints_the_rows_and_writes_the_report(folder, ws, tmp_path, monkeypatch, capsys):
    """The command picks the held-out subject of the model's dataset, prints each head's rows, writes the report."""
    from painhelm.train import datasets

    asked = []
    monkeypatch.setattr(datasets, "load_trials", lambda name, mapping=None: asked.append(name) or ws)
    assert do_compare(_args(folder, "--no-runtimes", "--out", tmp_path / "rep")) == 0
    text = capsys.readouterr().out
    assert asked == ["synthetic-pain"]
    lines = text.splitlines()
    for label in ("float vs truth", "int8 vs truth", "int8 vs float (cross)"):
        assert sum(line.startswith(label) for line in lines) == 2  # one row per head
    assert "test: 24 trials of 1 subject(s): S04" in text and "intensity (level)" in text
    assert str(tmp_path / "rep" / "report.md") in text
    assert json.loads((tmp_path / "rep" / "compare.json").read_text())["runtimes"] == []
    # an explicit subject seen in training is allowed, with a warning
    assert do_compare(_args(folder, "--no-runtimes", "--test-subject", "S01", "--out", tmp_path / "r2")) == 0
    assert "S01 took part in training" in capsys.readouterr().out


def test_do_compare_user_mistakes(folder, ws, tmp_path, monkeypatch):
    """Missing folder, no exports, corrupt or mismatched .tflite and unknown subjects are CommandErrors."""
    from painhelm.train import datasets

    monkeypatch.setattr(datasets, "load_trials", lambda name, mapping=None: ws)
    with pytest.raises(CommandError, match="does not exist"):
        do_compare(_args(tmp_path / "nowhere"))
    bare = tmp_path / "bare"
    shutil.copytree(folder / "model", bare / "model")
    with pytest.raises(CommandError, match="run painhelm compress first"):
        do_compare(_args(bare))
    with pytest.raises(CommandError, match=r"unknown subject\(s\) \['S9'\]"):
        do_compare(_args(folder, "--test-subject", "S9", "--no-runtimes"))
    with pytest.raises(CommandError, match="unknown session"):
        do_compare(_args(folder, "--test-session", "S01/R99", "--no-runtimes"))
    with pytest.raises(CommandError, match="--latency-runs"):
        do_compare(_args(folder, "--latency-runs", "0"))

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / E.TFLITE_INT8).write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(CommandError, match="model_int8.tflite cannot be loaded"):
        do_compare(_args(bad, "--no-runtimes", "--out", tmp_path / "o1"))
    shutil.copy(folder / E.TFLITE_FP32, bad / E.TFLITE_INT8)  # a float model where the int8 one belongs
    with pytest.raises(CommandError, match="takes float input"):
        do_compare(_args(bad, "--no-runtimes", "--out", tmp_path / "o2"))
