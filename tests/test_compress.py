"""`painhelm compress`: model folder -> exports + bundle, each file checked; clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from painhelm.compress import export as E
from painhelm.compress.pipeline import CompressError, compress_model, load_model_folder
from painhelm.compress.source import calibration_images, load_source, training_part
from painhelm.host_tools.cli import main
from tests.shared_data import need


def _train(out, *args):
    """Train through the CLI (so the folder records its data) with a tiny budget."""
    rc = main(["train", "--out", str(out), "--set", "epochs=4", "--set", "threads=1", *args])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """synthetic-pain without S05, compressed with default settings."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compress")
    model_dir = _train(root / "model", "--exclude-subject", "S05")
    res = compress_model(model_dir, calib_size=64, log=None)
    return model_dir, res


def test_all_files_written_and_recorded(compressed):
    """Every export, the bundle and compress.json exist; compress.json hashes every file."""
    model_dir, res = compressed
    out = model_dir / "compressed"
    for name in ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx",
                 "bundle/model.tflite", "bundle/manifest.json", "model/model.pt", "compress.json"):
        assert (out / name).is_file(), name
    rec = json.loads((out / "compress.json").read_text())
    import hashlib

    for name, meta in rec["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    assert rec["calibration"]["subjects"] and "S05" not in rec["calibration"]["subjects"]
    assert not (out.parent / "compressed.partial").exists()
    manifest = json.loads((out / "bundle/manifest.json").read_text())
    assert manifest["versions"]["torch"].startswith("2.13") and manifest["source"]["model_sha256"]


def test_every_export_agrees_with_torch(compressed):
    """fp32 files match torch closely; the int8 files keep torch's argmax on held-out windows."""
    model_dir, _ = compressed
    out = model_dir / "compressed"
    fitted = load_model_folder(out / "model")
    trials = load_source(fitted)
    x = fitted.images(trials.subset(trials.subject == "S05"))[:48]
    with torch.no_grad():
        logits, _ = fitted.model(torch.from_numpy(x))
    ref = [logits["level"].numpy(), logits["location"].numpy()]
    for runner in (E.TFLiteRunner(out / "model_fp32.tflite"), E.OnnxRunner(out / "model_fp32.onnx")):
        for got, r in zip(runner.predict(x), ref):
            np.testing.assert_allclose(got, r, atol=1e-4)
    for runner in (E.TFLiteRunner(out / "model_int8.tflite"), E.OnnxRunner(out / "model_int8.onnx")):
        for got, r in zip(runner.predict(x), ref):
            assert np.mean(got.argmax(1) == r.argmax(1)) >= 0.9


def test_int8_tflite_has_no_float_ops_and_names_are_stripped(compressed):
    """The helmet model: int8 in/out, no DEQUANTIZE/WHILE, every tensor float-free, short names."""
    from ai_edge_litert.interpreter import Interpreter

    model_dir, _ = compressed
    path = model_dir / "compressed" / "model_int8.tflite"
    it = Interpreter(model_path=str(path))
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert not ops & {"DEQUANTIZE", "WHILE"}
    kinds = {t["dtype"] for t in it.get_tensor_details()}
    assert np.float32 not in kinds, kinds  # no float tensor anywhere, activations included
    assert all(len(t["name"]) <= 5 for t in it.get_tensor_details())


def test_calibration_uses_training_subjects_only(compressed):
    """Calibration images come from the model's training subjects, spread over all of them."""
    model_dir, _ = compressed
    fitted = load_model_folder(model_dir)
    train = training_part(fitted, load_source(fitted))
    assert set(train.subject) == {"S01", "S02", "S03", "S04"}
    x = calibration_images(fitted, train, n=40, seed=0)
    cfg = fitted.model.cfg
    assert x.shape == (40, cfg.n_frames, cfg.n_bands, cfg.image_size, cfg.image_size)


def test_single_task_physionet_exports_and_loads_on_the_helmet_app(tmp_path):
    """A location-only physionet-mi model (5 runs, dummy level head) compresses; the helmet app
    accepts its bundle and reports NO_HEAD for level."""
    need("eegmmidb")
    from painhelm.firmware import app, wire

    model_dir = _train(tmp_path / "pmi", "--dataset", "physionet-mi", "--exclude-session", "R10")
    res = compress_model(model_dir, calib_size=32, formats=("tflite", "bundle"), log=None)
    h = app.Helmet(str(model_dir / "compressed" / "bundle"))
    trials = load_source(load_model_folder(model_dir))
    test = trials.subset(trials.session == "R10")
    window = np.ascontiguousarray(test.data[0], "<f4")
    payload = wire.pack_window(window.tobytes(), window.shape[0], window.shape[1], test.sfreq)
    assert res["tflite"]["int8_argmax_agreement"] >= 0.75
    assert h.has_level is False and h.has_location is True
    rep = wire.unpack_report(h.infer(payload))
    assert rep["level"] == wire.NO_HEAD and 0 <= rep["location"] < len(test.location_names)
    assert len(rep["level_q"]) == 1 and len(rep["location_q"]) == len(test.location_names)


def test_corrupt_and_mismatched_model_folders(compressed, tmp_path):
    """Broken folders give one clear CompressError (and a one-line CLI error), never a traceback."""
    model_dir, _ = compressed
    with pytest.raises(CompressError, match="no such model folder"):
        load_model_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompressError, match="not a model folder"):
        load_model_folder(empty)

    bad = tmp_path / "corrupt"
    shutil.copytree(model_dir, bad, ignore=shutil.ignore_patterns("compressed", "checkpoint.pt"))
    (bad / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(CompressError, match="not a readable PyTorch file"):
        load_model_folder(bad)

    mism = tmp_path / "mismatch"
    shutil.copytree(model_dir, mism, ignore=shutil.ignore_patterns("compressed", "checkpoint.pt"))
    cfg = json.loads((mism / "config.json").read_text())
    ckpt = torch.load(mism / "model.pt", weights_only=True)
    ckpt["model_args"]["conv1"] += 4  # weights of another architecture than the config says
    torch.save(ckpt, mism / "model.pt")
    with pytest.raises(CompressError, match="does not match"):
        load_model_folder(mism)

    labels = tmp_path / "labels"
    shutil.copytree(model_dir, labels, ignore=shutil.ignore_patterns("compressed", "checkpoint.pt"))
    cfg["level_names"] = cfg["level_names"][:2]
    (labels / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CompressError, match="inconsistent model folder"):
        load_model_folder(labels)

    truncated = tmp_path / "truncated"
    shutil.copytree(model_dir, truncated, ignore=shutil.ignore_patterns("compressed", "checkpoint.pt"))
    (truncated / "config.json").write_text('{"format": 1, "train": ')
    with pytest.raises(CompressError, match="corrupt"):
        load_model_folder(truncated)


def test_cli_errors_are_one_line(compressed, tmp_path, capsys):
    """`painhelm compress` on a bad folder or with bad options exits 1 with one line."""
    model_dir, _ = compressed
    assert main(["compress", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("painhelm:") and "no such model folder" in err[0]
    assert main(["compress", str(model_dir / "compressed")]) == 1
    assert "already a compressed folder" in capsys.readouterr().err
    assert main(["compress", str(model_dir), "--formats", "bundle"]) == 1
    assert "need 'tflite'" in capsys.readouterr().err
    assert main(["compress", str(model_dir), "--prune", "structured", "--amount", "1.5"]) == 1
    assert "amount" in capsys.readouterr().err
    assert main(["compress", str(model_dir), "--dataset", "synthetic-pain", "--task", "executed-lr"]) == 1
    assert "task of physionet-mi" in capsys.readouterr().err


def test_interrupted_run_keeps_the_previous_output(compressed, monkeypatch):
    """A failure half-way leaves the earlier compressed folder as it was and no partial folder."""
    model_dir, _ = compressed
    out = model_dir / "compressed"
    before = (out / "compress.json").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(E, "export_onnx", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        compress_model(model_dir, calib_size=16, log=None)
    assert (out / "compress.json").read_bytes() == before
    assert not (model_dir / "compressed.partial").exists()
