"""`painhelm data check`: subjects, runs and trials per class; every unusable file named, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest

from painhelm.host_tools.cli import main
from painhelm.train.check import check_folder
from tests.shared_data import need

PAINHELM = Path(sys.executable).parent / "painhelm"  # the console script of the venv running the tests
PAIRS = {"left_right": ("left_hand", "right_hand"), "fists_feet": ("both_hands", "feet")}


def _physionet_counts(root: Path, exclude: str = "") -> Counter:
    """Trials per class the check should report, from MNE's reading and the README's run table."""
    counts = Counter()
    for edf in sorted(root.rglob("S*R*.edf")):
        if edf.name == exclude:
            continue
        run = int(edf.stem[-2:])
        t1, t2 = PAIRS["left_right" if run in (3, 4, 7, 8) else "fists_feet"]
        raw = mne.io.read_raw_edf(edf, verbose="error")
        for onset, desc in zip(raw.annotations.onset, raw.annotations.description):
            if int(round(onset * 160)) + 640 <= raw.n_times:
                counts[{"T0": "rest", "T1": t1, "T2": t2}[desc]] += 1
    return counts


@pytest.fixture(scope="module")
def physionet_copy(tmp_path_factory):
    """A writable copy of the eegmmidb folder (files are ~2.5 MB each)."""
    src = need("eegmmidb")
    dst = tmp_path_factory.mktemp("eegmmidb") / "eegmmidb"
    shutil.copytree(src, dst)
    return dst


def test_real_folder_lists_subjects_runs_and_classes(capsys):
    """On the real folder: exit 0, subject S001, runs R03-R10, and the trials per class of the recordings."""
    root = need("eegmmidb")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "S001: R03, R04, R05, R06, R07, R08, R09, R10" in out and "subjects: 1, runs: 8" in out
    expected = _physionet_counts(root)
    for cls in ("left_hand", "right_hand", "both_hands", "feet", "rest"):
        line = next(x for x in out.splitlines() if x.strip().startswith(cls + " "))
        assert int(line.split()[-1]) == expected[cls] > 0
    assert f"total {sum(expected.values()):6d}".replace(" ", "") in out.replace(" ", "")
    assert "all 8 files usable" in out and "SHA256SUMS" in out


def test_truncated_edf_fails_the_check_and_is_named(physionet_copy, tmp_path, capsys):
    """One truncated EDF in the folder: exit 1, the file and 'truncated' named, the other seven still OK."""
    root = tmp_path / "eegmmidb"
    shutil.copytree(physionet_copy, root)
    bad = root / "S001" / "S001R05.edf"
    bad.write_bytes(bad.read_bytes()[:1_000_000])
    assert main(["data", "check", str(root)]) == 1
    captured = capsys.readouterr()
    assert "S001/S001R05.edf: truncated EDF file" in captured.out
    assert "7 of 8 files usable; 1 unusable" in captured.out
    assert sum(1 for line in captured.out.splitlines() if line.rstrip().endswith(" OK")) == 7
    assert str(bad) in captured.err and "Traceback" not in captured.out + captured.err
    # the truncated run's trials are not counted
    expected = _physionet_counts(physionet_copy, exclude="S001R05.edf")
    for cls in ("both_hands", "feet", "rest"):
        line = next(x for x in captured.out.splitlines() if x.strip().startswith(cls + " "))
        assert int(line.split()[-1]) == expected[cls]


def test_cli_subprocess_names_the_corrupt_file(physionet_copy, tmp_path):
    """The installed `painhelm` command exits 1 naming a corrupt EDF, with no traceback."""
    root = tmp_path / "eegmmidb"
    shutil.copytree(physionet_copy, root)
    bad = root / "S001" / "S001R09.edf"
    blob = bytearray(bad.read_bytes())
    blob[:8] = b"\x00GARBAGE"  # a damaged first block
    bad.write_bytes(bytes(blob))
    r = subprocess.run([str(PAINHELM), "data", "check", str(root)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "S001/S001R09.edf: not a valid EDF file" in r.stdout
    assert r.stderr.startswith("painhelm: an unusable recording: ") and str(bad) in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def _write_fif(path: Path, ch_names, annotations, sfreq=100.0, seconds=30.0, nan=False, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 10e-6, (len(ch_names), int(sfreq * seconds)))
    if nan:
        data[0, 100] = np.nan
    raw = mne.io.RawArray(data, mne.create_info(list(ch_names), sfreq, "eeg"), verbose="error")
    onset, desc = zip(*annotations)
    raw.set_annotations(mne.Annotations(list(onset), [0.0] * len(onset), list(desc)))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, verbose="error")


CHANNELS = ["Fz", "C3", "Cz", "C4", "Pz", "Oz"]
MAPPING = """
[recording]
required_channels = ["C3", "C4"]
[labels]
level_names = ["low", "high"]
[epochs]
tmax = 2.0
[events]
lo = { level = "low" }
hi = { level = "high" }
"""


def test_user_mapping_counts_classes_and_names_bad_files(tmp_path, capsys):
    """With --mapping: per-class counts over BIDS-named files; NaN and missing channels are named."""
    root = tmp_path / "study"
    events = [(1.0, "lo"), (4.0, "hi"), (7.0, "hi"), (10.0, "other")]
    _write_fif(root / "sub-01" / "ses-1" / "sub-01_ses-1_raw.fif", CHANNELS, events)
    _write_fif(root / "sub-02" / "ses-1" / "sub-02_ses-1_raw.fif", CHANNELS, events[:2], seed=1)
    _write_fif(root / "sub-03" / "ses-1" / "sub-03_ses-1_raw.fif", CHANNELS, events, nan=True)
    _write_fif(root / "sub-04" / "ses-2" / "sub-04_ses-2_raw.fif", ["Fz", "Cz", "Pz", "Oz"], events)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(MAPPING)
    assert main(["data", "check", str(root), "--mapping", str(mapping)]) == 1
    out = capsys.readouterr().out
    assert "subjects: 2, sessions: 2" in out and "  01: 1" in out and "  02: 1" in out
    counts = {x.split()[0]: int(x.split()[1]) for x in out.split("trials per class (level):")[1].splitlines()[1:4]}
    assert counts == {"low": 2, "high": 3, "total": 5}
    assert "sub-03/ses-1/sub-03_ses-1_raw.fif: non-finite samples (NaN/inf) in channels Fz" in out
    assert "sub-04/ses-2/sub-04_ses-2_raw.fif: missing required channels C3, C4" in out

    report = check_folder(root, mapping=mapping)
    assert [f.ok for f in report.files] == [True, True, False, False] and report.exit_status == 1
    assert report.files[0].counts["level"] == {"low": 1, "high": 2}


def test_without_mapping_events_are_listed(capsys):
    """A single EEGLAB file without a mapping: exit 0 and its events with their counts."""
    folder = need("eeglab-sample")
    assert main(["data", "check", str(folder / "eeglab_data.set")]) == 0
    out = capsys.readouterr().out
    raw = mne.io.read_raw_eeglab(folder / "eeglab_data.set", verbose="error")
    for desc, n in Counter(raw.annotations.description).items():
        assert any(line.split()[:2] == [desc, str(n)] for line in out.splitlines())
    assert "eeglab_data.set" in out and "the file is usable" in out


def test_folder_without_events_and_flat_channel(tmp_path, capsys):
    """No events makes a file unusable; a flat channel is a note, not a failure."""
    good = tmp_path / "a_raw.fif"
    _write_fif(good, CHANNELS, [(1.0, "x")])
    raw = mne.io.read_raw_fif(good, preload=True, verbose="error")
    raw._data[2] = 0.0
    raw.save(good, overwrite=True, verbose="error")
    raw.set_annotations(None)
    raw.save(tmp_path / "b_raw.fif", verbose="error")
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "a_raw.fif: flat channels (peak-to-peak below 0.1 µV): Cz" in out
    assert "b_raw.fif: no events" in out and "1 of 2 files usable" in out


def test_bad_inputs_are_one_line(tmp_path, capsys):
    """A missing path, an empty folder and a broken mapping file give one clear line, exit 1."""
    assert main(["data", "check", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.strip() == f"painhelm: {tmp_path / 'nope'}: no such file or folder"
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty")]) == 1
    captured = capsys.readouterr()
    assert "no recordings" in captured.out and "no recordings found" in captured.err
    bad = tmp_path / "m.toml"
    bad.write_text("[epochs]\ntmin = 2\ntmax = 1\n[events]\nx = { level = 'a' }\n")
    assert main(["data", "check", str(tmp_path / "empty"), "--mapping", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"painhelm: {bad}: [epochs] tmax: must be greater than tmin (2), got 1"
    (tmp_path / "x.edf").write_bytes(b"")
    assert main(["data", "check", str(tmp_path / "x.edf")]) == 1
    captured = capsys.readouterr()
    assert "x.edf: not a valid EDF file: 0 bytes" in captured.out and "Traceback" not in captured.out + captured.err
