"""`painhelm train`: writes a complete model folder; user mistakes are one line, no traceback."""

import json

import numpy as np
import pytest

from painhelm.host_tools.cli import main
from painhelm.train.fit import Fitted


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PAINHELM_CACHE", str(tmp_path_factory.getbasetemp() / "train-cmd-cache"))


def test_train_writes_a_model_folder(tmp_path, capsys):
    """The happy path: chosen subjects only, a folder that loads, and a summary naming it."""
    out = tmp_path / "run"
    rc = main(["train", "--subjects", "S01,S02,S03,S04", "--exclude-subject", "S04",
               "--set", "epochs=2", "--set", "threads=1", "--set", "model_args.lstm_hidden=8", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 epochs" in text and str(out.resolve()) in text and "validation:" in text
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "synthetic-pain" and cfg["train"]["epochs"] == 2
    assert cfg["model"]["config"]["lstm_hidden"] == 8
    assert cfg["subjects"] == ["S01", "S02", "S03"]
    assert cfg["data"] == {"dataset": "synthetic-pain", "mapping": None, "task": None}  # compress reloads it
    assert cfg["sessions"] and all(s.split("/")[0] in cfg["subjects"] for s in cfg["sessions"])
    held = set(cfg["validation"]["groups"])
    assert held and not held & set(cfg["train_subjects"])
    fitted = Fitted.load(out)
    assert fitted.pre.image_size == 16 and fitted.pre.n_frames == 4 and len(fitted.history) == 2
    hist = json.loads((out / "history.json").read_text())
    assert hist["epochs_run"] == 2 and np.isfinite(hist["epochs"][-1]["loss"])

    # resume with more epochs continues the same run
    assert main(["train", "--subjects", "S01,S02,S03", "--set", "epochs=3", "--set", "threads=1",
                 "--set", "model_args.lstm_hidden=8", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "history.json").read_text())["epochs_run"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--set", "epochs=lots"], "epochs must be int, got 'lots'"),
    (["--set", "learning_rate=0.1"], "unknown config key(s) ['learning_rate']"),
    (["--set", "epochs"], "--set expects KEY=VALUE"),
    (["--set", "model=resnet"], "model must be one of"),
    (["--config", "no/such/train.toml"], "does not exist"),
    (["--exclude-subject", "S99"], "unknown subject(s) ['S99']"),
    (["--exclude-session", "R99"], "unknown session 'R99'"),
    (["--task", "executed-lr"], "task of physionet-mi, not of synthetic-pain"),
    (["--resume", "--out", "{tmp}/never"], "cannot resume"),
])
def test_mistakes_are_one_line(argv, message, tmp_path, capsys):
    """Bad keys, values, files and subjects give `painhelm: ...` on one line and status 1."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = main(["train", "--set", "threads=1", "--set", "epochs=1"] + argv)
    err = capsys.readouterr().err
    assert rc == 1 and message in err
    assert err.startswith("painhelm: ") and err.count("\n") == 1 and "Traceback" not in err


def test_bad_toml_is_one_line(tmp_path, capsys):
    """A config file with an unknown key names it."""
    toml = tmp_path / "train.toml"
    toml.write_text("epochs = 2\nbatchsize = 8\n")
    assert main(["train", "--config", str(toml)]) == 1
    err = capsys.readouterr().err
    assert "unknown config key(s) ['batchsize']" in err and err.count("\n") == 1


def test_help_lists_config_keys(capsys):
    """--help explains the options and lists every config key."""
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--dataset", "--config", "--set", "--resume", "--exclude-subject", "val_fraction", "patience"):
        assert word in text
