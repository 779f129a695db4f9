"""fit(): validation split, class weights, early stopping, determinism, save/load and resume."""

from dataclasses import replace

import numpy as np
import pytest

from painhelm.train.fit import (Fitted, TrainConfig, class_weights, config_from_dict, fit, load_config,
                                split_validation)
from painhelm.train.synthetic import make_synthetic


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """3 synthetic subjects x 8 classes x 3 windows; band powers cached in a private folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAINHELM_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield make_synthetic(n_subjects=3, windows_per_class=3, seed=2)
    mp.undo()


def _cfg(**kw) -> TrainConfig:
    # one thread: fast on a shared 2-core machine, and bitwise reproducible
    return TrainConfig(**{"epochs": 3, "threads": 1, "patience": 50, "device": "cpu", **kw})


def test_loss_falls(ws):
    """A few epochs of training lower the training loss."""
    f = fit(ws, _cfg(epochs=6, val_fraction=0.0))
    losses = [h["loss"] for h in f.history]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0]
    assert f.summary["stopped"] == "epochs" and f.extra["validation"]["by"] == "none"


def test_validation_holds_out_whole_training_subjects(ws):
    """With >= 3 subjects the validation split is whole subjects, disjoint from the fitted ones."""
    three = make_synthetic(n_subjects=4, windows_per_class=1, seed=5)
    three = three.subset(three.subject != "S04")  # S04 plays the test subject: the split never sees it
    for seed in range(5):
        tr, va, info = split_validation(three, 0.2, seed)
        assert info["by"] == "subject" and len(info["groups"]) == 1
        assert set(three.subject[va]) == set(info["groups"])
        assert not set(three.subject[va]) & set(three.subject[tr])
        assert "S04" not in set(three.subject[va]) | set(three.subject[tr])
        assert len(tr) + len(va) == len(three)
    f = fit(ws, _cfg(epochs=1))
    assert f.extra["validation"]["by"] == "subject"
    held = set(f.extra["validation"]["groups"])
    assert held and not held & set(f.extra["train_subjects"]) and held <= {"S01", "S02", "S03"}


def test_validation_by_session_then_stratified_trials(ws):
    """One or two subjects: whole sessions when there are >= 3, else a stratified share of trials."""
    one = ws.subset(ws.subject == "S01")
    runs = np.array([f"R{i % 4:02d}" for i in range(len(one))])
    tr, va, info = split_validation(replace(one, session=runs), 0.25, 0)
    assert info["by"] == "session" and len(info["groups"]) == 1
    assert not set(runs[va]) & set(runs[tr])
    tr, va, info = split_validation(one, 0.34, 0)  # one subject, one session
    assert info["by"] == "trials" and not set(tr) & set(va)
    # every (level, location) class of 3 trials gives round(0.34 * 3) = 1 validation trial
    strata = one.level[va] * 10 + one.location[va]
    assert sorted(strata) == sorted(set(one.level * 10 + one.location))


def test_class_weights_inverse_frequency(ws):
    """Weights are n / (n_present * count); unlabelled trials are ignored; absent classes get 0."""
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1, -1, -1]), 3), [4 / 6, 2.0, 0.0])
    np.testing.assert_allclose(class_weights(np.array([1, 0, 1, 0]), 2), [1.0, 1.0])
    # drop most "none" trials: fit weighs the rare class up, computed on the fitted part only
    keep = (ws.level != 0) | (np.arange(len(ws)) % 3 == 0)
    t = ws.subset(keep)
    f = fit(t, _cfg(epochs=1))
    tr, _, _ = split_validation(t, 0.2, 0)
    np.testing.assert_allclose(f.extra["class_weights"]["level"], class_weights(t.level[tr], 4), rtol=1e-6)
    w = f.extra["class_weights"]["level"]
    assert w[0] > 2 * w[1]
    assert fit(t, _cfg(epochs=1, class_weights=False)).extra["class_weights"]["level"] == [1.0] * 4


def test_same_seed_same_model_and_save_load(ws, tmp_path):
    """Two runs with one seed give identical logits; a saved folder loads into the same predictor."""
    a = fit(ws, _cfg(), out_dir=tmp_path / "a")
    b = fit(ws, _cfg())
    c = fit(ws, _cfg(seed=1))
    pa, pb, pc = a.predict(ws), b.predict(ws), c.predict(ws)
    assert pa["level"].shape == (len(ws), 4) and pa["location"].shape == (len(ws), 2)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    assert not np.array_equal(pa["level"], pc["level"])
    for name in ("model.pt", "config.json", "preprocessing.npz", "preprocessing.json", "history.json"):
        assert (tmp_path / "a" / name).is_file()
    loaded = Fitted.load(tmp_path / "a")
    for k in pa:
        np.testing.assert_array_equal(loaded.predict(ws)[k], pa[k])
    assert loaded.cfg == a.cfg and loaded.level_names == ws.level_names and loaded.heads == ["level", "location"]
    for name in ("W", "mean", "std", "pos"):
        np.testing.assert_array_equal(getattr(loaded.pre, name), getattr(a.pre, name))
    f2 = a.save(tmp_path / "b")
    np.testing.assert_array_equal(Fitted.load(f2).predict(ws)["level"], pa["level"])


def test_resume_equals_uninterrupted(ws, tmp_path):
    """Stopping after 2 epochs and resuming to 4 gives exactly the 4-epoch run."""
    full = fit(ws, _cfg(epochs=4), out_dir=tmp_path / "full")
    part = fit(ws, _cfg(epochs=2), out_dir=tmp_path / "part")
    assert part.summary["epochs_run"] == 2
    resumed = fit(ws, _cfg(epochs=4), out_dir=tmp_path / "part", resume=True)
    assert resumed.summary["epochs_run"] == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.summary["best_epoch"] == full.summary["best_epoch"]
    for k in ("level", "location"):
        np.testing.assert_array_equal(resumed.predict(ws)[k], full.predict(ws)[k])
    with pytest.raises(ValueError, match="lr=0.003"):
        fit(ws, _cfg(epochs=5, lr=0.01), out_dir=tmp_path / "part", resume=True)
    with pytest.raises(ValueError, match="other training trials"):
        fit(ws.subset(np.arange(len(ws)) > 0), _cfg(epochs=5), out_dir=tmp_path / "part", resume=True)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        fit(ws, _cfg(), out_dir=tmp_path / "none", resume=True)


def test_early_stopping_keeps_the_best_epoch(ws):
    """Patience 1 stops after the first epoch without improvement and keeps the best weights."""
    f = fit(ws, _cfg(epochs=30, patience=1, lr=0.05))
    s = f.summary
    assert s["stopped"] == "early stopping" and s["epochs_run"] == s["best_epoch"] + 1
    best = f.history[s["best_epoch"] - 1]
    assert s["best_val_score"] == best["val_score"] and all(
        h["val_score"] <= best["val_score"] for h in f.history)


def test_single_head_dataset(ws):
    """A dataset without location labels trains the level head and predicts (n, 0) locations."""
    t = replace(ws, location=np.full(len(ws), -1), location_names=[])
    f = fit(t, _cfg(epochs=2))
    p = f.predict(t)
    assert f.heads == ["level"] and p["level"].shape == (len(t), 4) and p["location"].shape == (len(t), 0)
    with pytest.raises(ValueError, match="no labels"):
        fit(replace(t, level=np.full(len(ws), -1)), _cfg())


def test_config_from_toml_and_overrides(tmp_path):
    """TOML keys and --set strings are typed from the dataclass; mistakes name the key."""
    toml = tmp_path / "train.toml"
    toml.write_text('model = "edge-max"\nepochs = 12\nlr = 1\nseconds = 30\n[model_args]\nconv1 = 4\n')
    cfg = load_config(toml, ["epochs=20", "seconds=none", "clean=true", "model_args.conv2=8"])
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.seconds, cfg.clean) == ("edge-max", 20, 1.0, None, True)
    assert cfg.model_args == {"conv1": 4, "conv2": 8}
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ValueError, match="epochs must be int"):
        load_config(None, ["epochs=many"])
    with pytest.raises(ValueError, match="val_fraction must be in"):
        load_config(None, ["val_fraction=1.5"])
    with pytest.raises(ValueError, match="model must be one of"):
        config_from_dict({"model": "resnet"})
    with pytest.raises(ValueError, match="batch_size must be int"):
        config_from_dict({"batch_size": True})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
