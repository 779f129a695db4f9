"""Label mapping files: validation that names file and key, event trials, cold-pressor windows."""

from __future__ import annotations

import re
from pathlib import Path

import mne
import numpy as np
import pytest

from painhelm.train.dataset import UNLABELLED, DataError
from painhelm.train.labels import (PAIN_LEVELS, concat_trials, infer_subject_session, load_mapping,
                                   mapping_from_dict, trials_from_raw)
from tests.shared_data import need

CH = ["Fp1", "Fp2", "Fz", "C3", "Cz", "C4", "T7", "T8", "Pz", "Oz"]
SFREQ = 100.0

GOOD = """
name = "laser-study"

[recording]
sfreq = 100
required_channels = ["Cz", "C3", "C4"]
montage = "standard_1005"

[files]
pattern = '(?P<subject>vp\\d+)_(?P<session>day\\d)'

[labels]
level_names = ["none", "low", "high"]
location_names = ["left_hand", "right_hand"]

[epochs]
tmin = -0.5
duration = 2.0

[events]
"S 1" = { level = "low", location = "left_hand" }
"S 2" = { level = "high", location = "right_hand" }
"rest" = { level = "none" }
"""


def _ramp_raw(seconds=80.0, annotations=()):
    """EEG whose value tells where it came from: channel k, sample i holds (i + 1000 k) nV."""
    n = int(seconds * SFREQ)
    data = (np.arange(n)[None, :] + 1000.0 * np.arange(len(CH))[:, None]) * 1e-9
    raw = mne.io.RawArray(data, mne.create_info(CH, SFREQ, "eeg"), verbose="error")
    if annotations:
        onset, desc = zip(*annotations)
        raw.set_annotations(mne.Annotations(list(onset), [0.0] * len(onset), list(desc)))
    return raw


def _start_samples(trials):
    """The first sample index of each trial, read back from the ramp in channel 0 (µV -> nV)."""
    return np.round(trials.data[:, 0, 0] * 1e3).astype(int)


def _write(tmp_path, text, name="mapping.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- loading and validation -------------------------------------------------------------

def test_load_mapping_reads_every_section(tmp_path):
    """A complete mapping file loads into a Mapping with its windows, checks, names and events."""
    m = load_mapping(_write(tmp_path, GOOD))
    assert m.name == "laser-study" and m.source == str(tmp_path / "mapping.toml")
    assert (m.tmin, m.tmax) == (-0.5, 1.5) and m.sfreq == 100.0
    assert m.required_channels == ["Cz", "C3", "C4"] and m.montage == "standard_1005"
    assert m.level_names == ["none", "low", "high"] and m.location_names == ["left_hand", "right_hand"]
    assert m.events["rest"] == {"level": "none", "location": None}
    assert m.cold_pressor is None and m.descriptions == ["S 1", "S 2", "rest"]


def test_class_names_default_to_order_of_first_use():
    """Without [labels], class names follow the order the events first use them."""
    m = mapping_from_dict({"events": {"b": {"location": "feet"}, "a": {"location": "left_hand"},
                                      "c": {"location": "feet", "level": "high"}}})
    assert m.location_names == ["feet", "left_hand"] and m.level_names == ["high"]


BAD = [
    ('[epochs]\ntmin = 1\ntmax = 0.5\n[events]\nx = { level = "a" }',
     r"\[epochs\] tmax: must be greater than tmin \(1\), got 0.5"),
    ('[epochs]\ntmaxx = 2\n[events]\nx = { level = "a" }',
     r"\[epochs\] tmaxx: unknown key; allowed: duration, tmax, tmin"),
    ('[epochs]\ntmax = 2\nduration = 2\n[events]\nx = { level = "a" }', r"\[epochs\]: give tmax or duration, not both"),
    ('[epochs]\ntmax = "4 s"\n[events]\nx = { level = "a" }', r"\[epochs\] tmax: must be a number, got '4 s'"),
    ('[labels]\nlevel_names = ["low"]\n[events]\nx = { level = "high" }',
     r"\[events\] 'x' level: 'high' is not one of \[labels\] level_names \['low'\]"),
    ('[events]\nx = { level = "a", side = "left" }', r"\[events\] 'x' side: unknown key; allowed: level, location"),
    ('[events]\nx = "low"', r"\[events\] 'x': must be a table like"),
    ('[events]\nx = {}', r"\[events\] 'x': needs a level, a location or both"),
    ('[events]\n"S 1" = { level = "a" }\n"S  1" = { level = "b" }', r"\[events\]: event 'S 1' is listed twice"),
    ('name = "x"', r"\[events\]: the mapping labels nothing"),
    ('evnets = 1\n[events]\nx = { level = "a" }', r"evnets: unknown section or key"),
    ('[recording]\nsfreq = -5\n[events]\nx = { level = "a" }', r"\[recording\] sfreq: must be positive, got -5"),
    ('[recording]\nrequired_channels = "Cz"\n[events]\nx = { level = "a" }',
     r"\[recording\] required_channels: must be a list of non-empty strings, got 'Cz'"),
    ('[recording]\nmontage = "my_cap.elc"\n[events]\nx = { level = "a" }',
     r"\[recording\] montage: 'my_cap.elc' is neither a built-in MNE montage .* nor a file"),
    ("[files]\npattern = 'vp(\\d+)'\n[events]\nx = { level = \"a\" }",
     r"\[files\] pattern: needs a named group \(\?P<subject>"),
    ('[cold_pressor]\nimmerse = "in"\nwithdraw = "out"\nlevels = 3',
     r"\[cold_pressor\] levels: must be 4 .* or 5 .*, got 3"),
    ('[cold_pressor]\nimmerse = "in"', r"\[cold_pressor\] withdraw: missing"),
    ('[cold_pressor]\nimmerse = "in"\nwithdraw = "in"',
     r"\[cold_pressor\]: 'in' is both an immerse and a withdraw marker"),
    ('[cold_pressor]\nimmerse = "in"\nwithdraw = "out"\nlocation = { inn = "left_hand" }',
     r"\[cold_pressor\] location 'inn': is not one of the immerse markers"),
    ('[cold_pressor]\nimmerse = "in"\nwithdraw = "out"\n[labels]\nlevel_names = ["a", "b"]',
     r"\[labels\] level_names: \[cold_pressor\] levels = 4 needs 4 names"),
    ('[events\nx = 1', r"not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_mapping_names_file_and_key(tmp_path, text, message):
    """Each mistake in a mapping file is a DataError naming the file, the key and what is wrong."""
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as e:
        load_mapping(path)
    assert e.value.path == str(path)
    assert re.search(message, e.value.problem), e.value.problem


def test_missing_mapping_file(tmp_path):
    """A mapping path that does not exist is named."""
    with pytest.raises(DataError, match="mapping file not found"):
        load_mapping(tmp_path / "nope.toml")


def test_montage_file_is_relative_to_the_mapping(tmp_path):
    """A montage file named in the mapping is found beside the mapping file."""
    (tmp_path / "caps").mkdir()
    locs = need("eeglab-sample") / "eeglab_chan32.locs"
    (tmp_path / "caps" / "cap.locs").write_bytes(locs.read_bytes())
    m = load_mapping(_write(tmp_path, '[recording]\nmontage = "caps/cap.locs"\n[events]\nx = { level = "a" }'))
    assert m.montage == str(tmp_path / "caps" / "cap.locs")


def test_subject_and_session_from_paths():
    """Subject/session come from a pattern, BIDS names, PhysioNet names, else the file name."""
    assert infer_subject_session("/d/vp07_day2.vhdr", r"(?P<subject>vp\d+)_(?P<session>day\d)") == ("vp07", "day2")
    assert infer_subject_session("/d/sub-03/ses-1/eeg/sub-03_ses-1_task-cp_eeg.edf") == ("03", "1")
    assert infer_subject_session("/d/S001/S001R04.edf") == ("S001", "R04")
    assert infer_subject_session("/d/anna.fif.gz") == ("anna", "")
    with pytest.raises(DataError, match="does not match \\[files\\] pattern"):
        infer_subject_session("/d/x.edf", r"(?P<subject>vp\d+)")


# --- event trials -----------------------------------------------------------------------

def test_event_trials_cut_the_right_samples(tmp_path):
    """Each matching event gives one trial from onset+tmin, in µV, with labels and metadata."""
    m = load_mapping(_write(tmp_path, GOOD))
    raw = _ramp_raw(20.0, [(2.0, "Stimulus/S  1"), (5.0, "Stimulus/S  2"), (7.5, "rest"), (9.0, "Comment/other"),
                           (19.0, "Stimulus/S  1")])  # the last one runs past the end: left out
    t = trials_from_raw(raw, m, "vp01", "day1", file="rec.vhdr")
    assert t.data.shape == (3, len(CH), 200) and t.data.dtype == np.float32 and t.sfreq == SFREQ
    np.testing.assert_array_equal(_start_samples(t), [150, 450, 700])  # onset - 0.5 s
    np.testing.assert_allclose(t.data[1, 3, :3], (np.arange(450, 453) + 3000) * 1e-3, rtol=1e-6)  # C3, µV
    assert [t.level_names[i] for i in t.level] == ["low", "high", "none"]
    assert list(t.location) == [0, 1, UNLABELLED]
    assert list(t.subject) == ["vp01"] * 3 and list(t.session) == ["day1"] * 3
    assert t.metadata[0] == {"file": "rec.vhdr", "onset": 2.0, "event": "Stimulus/S  1"}
    assert t.ch_names == CH and t.pos.shape == (len(CH), 3) and t.montage == "standard_1005"
    assert t.name == "laser-study"


def test_event_trials_of_a_cropped_recording():
    """With a measurement date and a cropped start, onsets still land on the right samples."""
    from datetime import datetime, timezone

    raw = _ramp_raw(30.0)
    raw.set_meas_date(datetime(2024, 1, 2, tzinfo=timezone.utc))
    raw.set_annotations(mne.Annotations([12.0], [0.0], ["x"], orig_time=raw.info["meas_date"]))
    raw.crop(tmin=5.0)  # the data now starts at sample 500 of the measurement
    assert raw.first_samp == 500
    m = mapping_from_dict({"epochs": {"tmax": 1.0}, "events": {"x": {"level": "a"}}})
    t = trials_from_raw(raw, m, "s", "")
    np.testing.assert_array_equal(_start_samples(t), [1200])  # the ramp counts measurement samples
    assert t.metadata[0]["onset"] == 7.0  # seconds into the data that is there


def test_event_trials_refuse_unusable_recordings(tmp_path):
    """Missing required channels, wrong sfreq and unmatched events are DataErrors naming the file."""
    m = load_mapping(_write(tmp_path, GOOD))
    raw = _ramp_raw(20.0, [(2.0, "S 1")]).drop_channels(["C4"])
    with pytest.raises(DataError, match="missing required channels C4") as e:
        trials_from_raw(raw, m, "s", "", file="rec.edf")
    assert e.value.path == "rec.edf"
    raw = _ramp_raw(20.0, [(2.0, "S 9")])
    with pytest.raises(DataError, match="none of the events 'S 1', 'S 2', 'rest' occur; the recording has 'S 9'"):
        trials_from_raw(raw, m, "s", "", file="rec.edf")
    raw = _ramp_raw(20.0, [(19.5, "S 1")])
    with pytest.raises(DataError, match="1 events match the mapping but no 2 s window"):
        trials_from_raw(raw, m, "s", "", file="rec.edf")
    m.sfreq = 250.0
    with pytest.raises(DataError, match="sampling rate is 100 Hz, expected 250 Hz"):
        trials_from_raw(_ramp_raw(20.0, [(2.0, "S 1")]), m, "s", "", file="rec.edf")


# --- cold pressor -----------------------------------------------------------------------

def _cold_mapping(levels=4, window=2.0, step=None, with_location=True):
    cp = {"immerse": ["hand_in_left", "hand_in_right"], "withdraw": "hand_out", "levels": levels, "window": window}
    if step is not None:
        cp["step"] = step
    if with_location:
        cp["location"] = {"hand_in_left": "left_hand", "hand_in_right": "right_hand"}
    return mapping_from_dict({"cold_pressor": cp})


def test_cold_pressor_splits_immersion_into_four_levels():
    """Immersion 10-50 s in 4 levels of 10 s, cut into 2-s windows: 5 windows per level, in order."""
    raw = _ramp_raw(80.0, [(3.0, "baseline"), (10.0, "hand_in_left"), (50.0, "hand_out")])
    t = trials_from_raw(raw, _cold_mapping(), "p1", "1", file="cp.fif")
    assert t.level_names == PAIN_LEVELS[:4] and t.location_names == ["left_hand", "right_hand"]
    assert t.data.shape == (20, len(CH), 200)
    np.testing.assert_array_equal(t.level, np.repeat([0, 1, 2, 3], 5))
    np.testing.assert_array_equal(_start_samples(t), np.arange(1000, 5000, 200))
    assert set(t.location) == {0}
    assert t.metadata[7] == {"file": "cp.fif", "onset": 24.0, "event": "hand_in_left", "immerse_onset": 10.0,
                             "withdraw_onset": 50.0, "segment": 1}


def test_cold_pressor_five_levels_two_hands_and_overlap():
    """Five levels add 'unbearable'; each immersion takes its hand's location; step < window overlaps."""
    raw = _ramp_raw(200.0, [(10.0, "hand_in_left"), (35.0, "hand_out"), (100.0, "hand_in_right"), (150.0, "hand_out")])
    t = trials_from_raw(raw, _cold_mapping(levels=5, window=4.0, step=2.0), "p1", "1")
    assert t.level_names[-1] == "unbearable"
    left, right = t.location == 0, t.location == 1
    # 25 s / 5 = 5 s per level: of the 4-s windows every 2 s only the one at +0 fits
    assert np.sum(left) == 5 and list(t.level[left]) == [0, 1, 2, 3, 4]
    # 50 s / 5 = 10 s per level: 4-s windows every 2 s -> starts at +0, +2, +4, +6 -> 4 per level
    assert np.sum(right) == 20 and list(np.bincount(t.level[right])) == [4] * 5
    np.testing.assert_array_equal(_start_samples(t)[right][:4], [10000, 10200, 10400, 10600])


def test_cold_pressor_marker_errors():
    """An immersion without withdrawal, or one too short for the window, is named with its time."""
    raw = _ramp_raw(60.0, [(10.0, "hand_in_left"), (20.0, "hand_in_right"), (30.0, "hand_out")])
    with pytest.raises(DataError, match="immerse marker 'hand_in_left' at 10.000 s is followed by another immerse"):
        trials_from_raw(raw, _cold_mapping(), "p", "", file="cp.edf")
    raw = _ramp_raw(60.0, [(10.0, "hand_in_left")])
    with pytest.raises(DataError, match="followed by the end of the recording"):
        trials_from_raw(raw, _cold_mapping(), "p", "", file="cp.edf")
    raw = _ramp_raw(60.0, [(10.0, "hand_in_left"), (16.0, "hand_out")])
    with pytest.raises(DataError, match="lasts 6.000 s; in 4 levels that is 1.500 s per level, shorter than the 2 s"):
        trials_from_raw(raw, _cold_mapping(), "p", "", file="cp.edf")


def test_cold_pressor_without_location_leaves_it_unlabelled():
    """Without a location table the windows carry only the level."""
    raw = _ramp_raw(60.0, [(10.0, "hand_in_right"), (50.0, "hand_out")])
    t = trials_from_raw(raw, _cold_mapping(with_location=False), "p", "")
    assert t.location_names == [] and set(t.location) == {UNLABELLED} and len(t) == 20


# --- BrainVision markers ----------------------------------------------------------------

def test_brainvision_markers_become_trials():
    """The real .vmrk markers (read by MNE) label a recording: 'S 1'/'S 2'/'S 3' match 'Stimulus/S  n'."""
    markers = need("laser-pain-features") / "markers"
    vhdr = (markers / "Exp_Mediation_Paradigm1_Perception_vp03.vhdr").read_text("utf-8-sig")
    vmrk_path = markers / "Exp_Mediation_Paradigm1_Perception_vp03.vmrk"
    # what the files say, read independently of MNE
    interval_us = float(re.search(r"^SamplingInterval=(\S+)", vhdr, re.M).group(1))
    ch_names = re.findall(r"^Ch\d+=([^,]+),", vhdr, re.M)
    marks = re.findall(r"^Mk\d+=Stimulus,(S\s+\d+),(\d+),", vmrk_path.read_text("utf-8-sig"), re.M)
    expected = {k: sum(1 for d, _ in marks if d.split() == ["S", k]) for k in "123"}
    assert min(expected.values()) > 0

    annotations = mne.read_annotations(vmrk_path, sfreq=1e6 / interval_us)
    keep = [ch for ch in ch_names if ch in CH + ["FC1", "FC2", "CP1", "CP2", "P3", "P4", "O1", "O2"]]
    sfreq = 100.0  # annotations are in seconds, so a lower rate keeps the test light
    n = int((annotations.onset.max() + 5) * sfreq)
    rng = np.random.default_rng(0)
    raw = mne.io.RawArray(rng.normal(0, 1e-5, (len(keep), n)), mne.create_info(keep, sfreq, "eeg"), verbose="error")
    raw.set_annotations(annotations)
    m = mapping_from_dict({"labels": {"level_names": ["low", "medium", "high"]},
                           "epochs": {"tmin": 0.0, "tmax": 1.0},
                           "events": {"S 1": {"level": "low"}, "S 2": {"level": "medium"}, "S 3": {"level": "high"}}})
    t = trials_from_raw(raw, m, "vp03", "")
    assert t.class_counts("level") == {"low": expected["1"], "medium": expected["2"], "high": expected["3"]}
    mapped = [(d, int(pos)) for d, pos in marks if d.split()[1] in ("1", "2", "3")]
    assert [m["event"] for m in t.metadata] == ["Stimulus/" + d for d, _ in mapped]
    onsets = [(pos - 1) * interval_us / 1e6 for _, pos in mapped]  # positions count from 1
    np.testing.assert_allclose([m["onset"] for m in t.metadata], onsets, atol=0.5 / sfreq)


def test_concat_trials_checks_agreement():
    """Tables from two recordings stack; a different channel set is refused naming the file."""
    m = mapping_from_dict({"epochs": {"tmax": 1.0}, "events": {"x": {"level": "a"}}})
    a = trials_from_raw(_ramp_raw(10.0, [(1.0, "x")]), m, "s1", "1", file="a.fif")
    b = trials_from_raw(_ramp_raw(10.0, [(2.0, "x"), (3.0, "x")]), m, "s2", "1", file="b.fif")
    both = concat_trials([a, b])
    assert len(both) == 3 and list(both.subject) == ["s1", "s2", "s2"]
    c = trials_from_raw(_ramp_raw(10.0, [(1.0, "x")]).drop_channels(["Oz"]), m, "s3", "1", file="c.fif")
    with pytest.raises(DataError, match="^c.fif: ch_names differ"):
        concat_trials([a, c])


def test_docs_example_mapping_loads(tmp_path):
    """The mapping shown in docs/data.md (with its cold-pressor section) is valid as written."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    m = load_mapping(_write(tmp_path, "\n".join(blocks)))
    assert m.name == "laser-study" and m.cold_pressor.n_levels == 4 and len(m.events) == 5
    assert m.level_names == PAIN_LEVELS[:4] and m.location_names == ["left_hand", "right_hand"]
    assert infer_subject_session("/data/vp01_day1.vhdr", m.file_pattern) == ("vp01", "day1")
