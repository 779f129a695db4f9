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


def _fif(path, events, seed):
    """A 20-s, 4-channel FIF recording at 100 Hz with the given (onset, description) events."""
    import mne

    rng = np.random.default_rng(seed)
    info = mne.create_info(["C3", "Cz", "C4", "Pz"], 100.0, "eeg")
    raw = mne.io.RawArray(1e-5 * rng.standard_normal((4, 2000)), info, verbose=False)
    raw.set_annotations(mne.Annotations([e[0] for e in events], [0.0] * len(events), [e[1] for e in events]))
    raw.save(path, verbose=False)


MAPPING = '''
name = "tiny-study"
[files]
pattern = '(?P<subject>vp\\d+)_(?P<session>s\\d)'
[recording]
montage = "standard_1005"
[labels]
level_names = ["low", "high"]
[epochs]
tmin = 0.0
tmax = 2.0
[events]
"cold" = { level = "low" }
"hot" = { level = "high" }
'''


def test_own_recordings_through_a_mapping_file(tmp_path):
    rec = tmp_path / "recs"
    rec.mkdir()
    _fif(rec / "vp01_s1_raw.fif", [(2, "cold"), (6, "hot"), (10, "cold")], 0)
    _fif(rec / "vp02_s1_raw.fif", [(3, "hot"), (12, "hot")], 1)
    (tmp_path / "study.toml").write_text(MAPPING)
    t = datasets.load_recordings(rec, tmp_path / "study.toml")
    assert len(t) == 5 and t.data.shape == (5, 4, 200)
    assert list(t.subject) == ["vp01"] * 3 + ["vp02"] * 2 and set(t.session) == {"s1"}
    assert t.class_counts("level") == {"low": 2, "high": 3} and t.name == "tiny-study"
    again = datasets.load_recordings(rec, tmp_path / "study.toml")
    np.testing.assert_array_equal(again.data, t.data)
    with pytest.raises(DataError, match="study.toml: not an EEG recording"):
        datasets.load_recordings(tmp_path / "study.toml", tmp_path / "study.toml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no EEG recordings"):
        datasets.load_recordings(tmp_path / "empty", tmp_path / "study.toml")
