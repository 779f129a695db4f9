"""PhysioNet motor movement/imagery (S001) as location-labelled trials, through the readers and a built-in mapping."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from painhelm.train.dataset import UNLABELLED, DataError
from painhelm.train.physionet_mi import LOCATION_NAMES, default_root, load_physionet_mi, physionet_mapping
from tests.shared_data import need

# the README's run table, written out independently of the module under test
RUNS = {3: ("executed", "left_hand", "right_hand"), 4: ("imagined", "left_hand", "right_hand"),
        5: ("executed", "both_hands", "feet"), 6: ("imagined", "both_hands", "feet"),
        7: ("executed", "left_hand", "right_hand"), 8: ("imagined", "left_hand", "right_hand"),
        9: ("executed", "both_hands", "feet"), 10: ("imagined", "both_hands", "feet")}


def _expected(root, runs, tmin, tmax, include_rest):
    """(run, location, onset) of every cue whose window fits, from MNE's own reading of the EDFs."""
    out = []
    for run in runs:
        raw = mne.io.read_raw_edf(root / "S001" / f"S001R{run:02d}.edf", verbose="error")
        for onset, desc in zip(raw.annotations.onset, raw.annotations.description):
            loc = {"T1": RUNS[run][1], "T2": RUNS[run][2], "T0": "rest" if include_rest else None}[desc]
            start = int(round(onset * 160)) + int(round(tmin * 160))
            if loc is not None and start >= 0 and start + int(round((tmax - tmin) * 160)) <= raw.n_times:
                out.append((f"R{run:02d}", loc, round(onset, 6)))
    return out


def test_default_load_matches_the_recordings():
    """All eight runs give 0-4 s cue trials labelled by body part, in µV, level unlabelled."""
    root = need("eegmmidb")
    t = load_physionet_mi(root=root)
    expected = _expected(root, sorted(RUNS), 0.0, 4.0, include_rest=False)
    assert t.data.shape == (len(expected), 64, 640) and t.data.dtype == np.float32
    assert t.location_names == LOCATION_NAMES and t.level_names == []
    assert np.all(t.level == UNLABELLED)
    assert [(m["run"], t.location_names[loc], m["onset"]) for m, loc in zip(t.metadata, t.location)] == expected
    assert set(t.subject) == {"S001"} and list(t.session) == [r for r, _, _ in expected]
    assert t.class_counts("location")["rest"] == 0 and t.sfreq == 160.0
    for m in t.metadata:
        assert (m["task"], m["pair"]) == (RUNS[int(m["run"][1:])][0],
                                          "left_right" if RUNS[int(m["run"][1:])][1] == "left_hand" else "fists_feet")
        assert m["event"] in ("T1", "T2") and m["file"].endswith(f"S001{m['run']}.edf")
    # one trial against the file read by MNE directly (volts -> µV)
    i = 17
    raw = mne.io.read_raw_edf(root / "S001" / f"S001{t.metadata[i]['run']}.edf", preload=True, verbose="error")
    start = int(round(t.metadata[i]["onset"] * 160))
    ref = raw.get_data(start=start, stop=start + 640) * 1e6
    np.testing.assert_allclose(t.data[i], ref, rtol=1e-5, atol=1e-3)
    assert t.ch_names[:3] == ["FC5", "FC3", "FC1"] and np.all(np.isfinite(t.pos))


def test_rest_window_and_run_selection():
    """include_rest adds T0 trials; n_times sets the window; runs may be named 'R04' or 8."""
    root = need("eegmmidb")
    t = load_physionet_mi(root=root, runs=["R04", 8], include_rest=True, tmin=0.5, n_times=480)
    expected = _expected(root, [4, 8], 0.5, 3.5, include_rest=True)
    assert t.data.shape == (len(expected), 64, 480)
    assert sorted(set(t.session)) == ["R04", "R08"]
    counts = t.class_counts("location")
    assert counts["rest"] == sum(1 for _, loc, _ in expected if loc == "rest") > 0
    assert counts["both_hands"] == counts["feet"] == 0
    assert {m["task"] for m in t.metadata} == {"imagined"}
    raw = mne.io.read_raw_edf(root / "S001" / "S001R04.edf", preload=True, verbose="error")
    start = int(round((t.metadata[0]["onset"] + 0.5) * 160))
    np.testing.assert_allclose(t.data[0], raw.get_data(start=start, stop=start + 480) * 1e6, rtol=1e-5, atol=1e-3)


def test_missing_folder_says_where_it_looked(tmp_path, monkeypatch):
    """Without the data the error names the folder searched and how to point to the data."""
    monkeypatch.setenv("PAINHELM_SHARED_DATA", str(tmp_path))
    assert default_root() == tmp_path / "eegmmidb"
    with pytest.raises(DataError, match="PAINHELM_SHARED_DATA") as e:
        load_physionet_mi()
    assert str(tmp_path / "eegmmidb") in str(e.value)
    (tmp_path / "eegmmidb").mkdir()
    with pytest.raises(DataError, match="no PhysioNet files"):
        load_physionet_mi()


def test_missing_run_and_bad_arguments():
    """A requested run without its file is named; nonsense arguments name the parameter."""
    root = need("eegmmidb")
    with pytest.raises(DataError, match="missing S001R11.edf"):
        load_physionet_mi(root=root, runs=[3, 11])
    with pytest.raises(ValueError, match="run must be a task run 3..14 .* got 1"):
        load_physionet_mi(root=root, runs=[1])
    with pytest.raises(ValueError, match="runs must be run numbers"):
        load_physionet_mi(root=root, runs=["left"])
    with pytest.raises(ValueError, match="tmax must be greater than tmin"):
        load_physionet_mi(root=root, tmin=2.0, tmax=1.0)


def test_builtin_mapping_goes_through_validation():
    """The built-in mapping is an ordinary validated Mapping, per run pair."""
    m = physionet_mapping(5, include_rest=True)
    assert m.events == {"T1": {"level": None, "location": "both_hands"}, "T2": {"level": None, "location": "feet"},
                        "T0": {"level": None, "location": "rest"}}
    assert m.location_names == LOCATION_NAMES and (m.tmin, m.tmax) == (0.0, 4.0)
    with pytest.raises(DataError, match="tmax: must be greater than tmin"):
        physionet_mapping(3, tmin=1.0, tmax=1.0)
