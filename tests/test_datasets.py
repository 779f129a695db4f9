"""Built-in datasets by name: loading, caching, clear errors; real data where present."""

import dataclasses

import numpy as np
import pytest

from painhelm.train import datasets
from painhelm.train.dataset import BandPowerTrials, DataError, Trials

from .shared_data import need


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINHELM_CACHE", str(tmp_path / "cache"))


def test_unknown_name_lists_the_built_in_ones():
    with pytest.raises(DataError, match="synthetic-pain, physionet-mi, laser-pain-features"):
        datasets.load_dataset("pain-2000")


def test_missing_folder_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINHELM_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="PAINHELM_SHARED_DATA"):
        datasets.load_dataset("laser-pain-features")


def test_second_load_comes_from_the_cache(monkeypatch):
    spec = datasets.DATASETS["synthetic-pain"]
    calls = []

    def loader(**params):
        calls.append(params)
        return spec.loader(**params)

    monkeypatch.setitem(datasets.DATASETS, "synthetic-pain", dataclasses.replace(spec, loader=loader))
    a = datasets.load_dataset("synthetic-pain", n_subjects=2, windows_per_class=1, seed=4)
    b = datasets.load_dataset("synthetic-pain", n_subjects=2, windows_per_class=1, seed=4)
    assert len(calls) == 1
    assert isinstance(b, Trials) and np.array_equal(a.data, b.data) and np.array_equal(a.level, b.level)
    assert list(a.subject) == list(b.subject) and a.metadata == b.metadata
    datasets.load_dataset("synthetic-pain", n_subjects=2, windows_per_class=1, seed=5)
    assert len(calls) == 2  # new parameters, new entry


def test_laser_pain_features_real_file():
    need("laser-pain-features")
    t = datasets.load_dataset("laser-pain-features")
    assert isinstance(t, BandPowerTrials)
    assert t.logbp.shape == (201, 1, 3, 6)
    assert t.class_counts("level") == {"low": 97, "high": 104}  # the README's counts
    assert sorted(set(t.subject)) == ["vp01", "vp02", "vp03", "vp04", "vp05"]
    assert t.ch_names == ["Cz", "FCz", "C3", "C4", "Fz", "Pz"] and np.all(np.isfinite(t.logbp))
    assert "C4_C3_alpha_asymmetry" in t.metadata[0]["features"]
    five = datasets.load_dataset("laser-pain-features", bands=("delta", "theta", "alpha", "beta", "gamma"))
    assert five.logbp.shape == (201, 1, 5, 6)
    np.testing.assert_array_equal(five.logbp[:, :, 1:4], t.logbp)


def test_laser_pain_features_bad_csv(tmp_path):
    from painhelm.train.laser_pain import load_laser_pain_features

    (tmp_path / "all_features.csv").write_text("Cz_theta_power,label\n1.0,0\n")
    with pytest.raises(DataError, match="all_features.csv: columns missing"):
        load_laser_pain_features(tmp_path)
    with pytest.raises(DataError, match="unknown bands"):
        load_laser_pain_features(tmp_path, bands=("mu",))
