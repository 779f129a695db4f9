"""Recording readers: every format through MNE, every failure a DataError naming file and problem."""

from __future__ import annotations

import shutil
import struct

import mne
import numpy as np
import pytest

from painhelm.train.dataset import DataError
from painhelm.train.readers import (check_events, check_flat, check_nan, check_raw, check_required_channels,
                                    check_sfreq, description_matches, normalize_ch_names, positions, read_raw,
                                    recording_format, set_montage)
from tests.shared_data import need

STANDARD_NAMES = set(mne.channels.make_standard_montage("colin27_1005").ch_names)


def _edf(name="S001R03.edf"):
    return need("eegmmidb") / "S001" / name


def _raw_array(ch_names, sfreq=100.0, seconds=10.0, seed=0):
    """Seeded noise (about 10 µV) on named EEG channels, in volts as MNE keeps it."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 10e-6, (len(ch_names), int(seconds * sfreq)))
    return mne.io.RawArray(data, mne.create_info(list(ch_names), sfreq, "eeg"), verbose="error")


def _write_bdf(path, data_uv, sfreq, ch_names, status=None):
    """A minimal BioSemi BDF (24-bit) with 1-s records; ``status`` adds a Status channel of codes."""
    signals = [(ch, np.asarray(x, dtype=np.float64), -8388.608, 8388.607) for ch, x in zip(ch_names, data_uv)]
    if status is not None:
        signals.append(("Status", np.asarray(status, dtype=np.float64), -8388608, 8388607))
    n_rec = data_uv.shape[1] // int(sfreq)
    ns, spr = len(signals), int(sfreq)

    def f(v, n):
        return str(v).ljust(n)[:n].encode("ascii")

    hdr = b"\xffBIOSEMI" + f("X", 80) + f("X", 80) + f("01.01.20", 8) + f("00.00.00", 8) + f(256 * (ns + 1), 8)
    hdr += f("24BIT", 44) + f(n_rec, 8) + f(1, 8) + f(ns, 4)
    for key, width in (("label", 16), ("trans", 80), ("dim", 8), ("pmin", 8), ("pmax", 8), ("dmin", 8),
                       ("dmax", 8), ("filt", 80), ("n", 8), ("res", 32)):
        for label, _, pmin, pmax in signals:
            hdr += f({"label": label, "trans": "", "dim": "uV" if label != "Status" else "Boolean",
                      "pmin": pmin, "pmax": pmax, "dmin": -8388608, "dmax": 8388607, "filt": "",
                      "n": spr, "res": ""}[key], width)
    body = bytearray()
    for r in range(n_rec):
        for label, x, pmin, pmax in signals:
            seg = x[r * spr:(r + 1) * spr]
            digital = np.round((seg - pmin) / (pmax - pmin) * (8388607 + 8388608) - 8388608).astype(np.int64)
            for v in digital:
                body += struct.pack("<i", int(v))[:3]
    path.write_bytes(hdr + bytes(body))


# --- reading what works -------------------------------------------------------------------

def test_physionet_edf_gets_standard_channel_names():
    """The PhysioNet EDF reads with 64 EEG channels renamed onto standard 10-05 names."""
    raw = read_raw(_edf())
    assert raw.info["sfreq"] == 160.0 and len(raw.ch_names) == 64
    assert {"FC5", "FCz", "Cz", "Fp1", "AF7", "POz", "Iz", "T10"} <= set(raw.ch_names)
    assert not any(ch.endswith(".") for ch in raw.ch_names)
    assert set(raw.ch_names) <= STANDARD_NAMES
    assert set(raw.annotations.description) == {"T0", "T1", "T2"}


def test_normalize_ch_names_maps_padding_and_case():
    """Dots, case and clinical decorations go ("Fc5." -> "FC5"); unknown names stay; no duplicates."""
    rename = normalize_ch_names(["Fc5.", "Fp1.", "Cz", "Cz..", "Foo..", "Afz.", "EEG T7-REF", "EEG X-LE"])
    assert rename == {"Fc5.": "FC5", "Fp1.": "Fp1", "Foo..": "Foo", "Afz.": "AFz", "EEG T7-REF": "T7"}


def test_positions_of_physionet_montage_are_centred_on_the_head():
    """Positions are 64 x 3 metres around the head centre: Cz on top, T7 left, T8 right, Fpz front."""
    raw = read_raw(_edf())
    assert set_montage(raw, "standard_1005") == []
    ch_names, pos = positions(raw)
    assert ch_names == raw.ch_names and pos.shape == (64, 3)
    r = np.linalg.norm(pos, axis=1)
    assert np.all((r > 0.07) & (r < 0.12))
    p = dict(zip(ch_names, pos))
    elevation = np.degrees(np.arccos(p["Cz"][2] / np.linalg.norm(p["Cz"])))
    assert elevation < 12
    assert p["T7"][0] < -0.06 and p["T8"][0] > 0.06 and p["Fpz"][1] > 0.06 and p["Oz"][1] < -0.06
    for ch in ("T7", "T8", "Fpz", "Oz"):  # the 10-20 equator lies near the projection's rim
        assert 75 < np.degrees(np.arccos(p[ch][2] / np.linalg.norm(p[ch]))) < 105


def test_eeglab_set_with_montage_file():
    """The EEGLAB set reads; EOG channels are typed EOG; a .locs file gives the same directions as the .set."""
    folder = need("eeglab-sample")
    raw = read_raw(folder / "eeglab_data.set")
    assert raw.info["sfreq"] == 128.0 and len(raw.ch_names) == 32
    assert raw.get_channel_types(["EOG1", "EOG2"]) == ["eog", "eog"]
    names_own, pos_own = positions(raw)
    assert set_montage(raw, folder / "eeglab_chan32.locs") == []
    names_locs, pos_locs = positions(raw)
    assert names_locs == names_own and len(names_locs) == 30 and "EOG1" not in names_locs
    unit = lambda p: p / np.linalg.norm(p, axis=1, keepdims=True)  # noqa: E731
    assert np.max(np.abs(unit(pos_own) - unit(pos_locs))) < 0.02


def test_fif_and_fif_gz_round_trip(tmp_path):
    """A FIF written by MNE (plain and gzipped) reads back with the same data, in volts."""
    raw = _raw_array(["Cz", "C3", "C4"])
    for name in ("rec_raw.fif", "rec_raw.fif.gz"):
        raw.save(tmp_path / name, verbose="error")
        back = read_raw(tmp_path / name)
        np.testing.assert_allclose(back.get_data(), raw.get_data(), rtol=1e-6)
        assert recording_format(tmp_path / name) == "FIF"


def test_bdf_status_channel_becomes_annotations(tmp_path):
    """A BDF's Status trigger codes become annotations at the right times; the signal survives 24-bit."""
    sfreq, n = 128, 128 * 6
    rng = np.random.default_rng(3)
    data = rng.normal(0, 20, (3, n))
    status = np.zeros(n)
    status[128:140], status[512:520] = 5, 7  # codes 5 at 1 s and 7 at 4 s
    _write_bdf(tmp_path / "rec.bdf", data, sfreq, ["Cz", "C3", "C4"], status)
    raw = read_raw(tmp_path / "rec.bdf")
    assert raw.get_channel_types() == ["eeg", "eeg", "eeg", "stim"]
    np.testing.assert_allclose(raw.get_data(picks="eeg") * 1e6, data, atol=0.01)
    assert list(raw.annotations.description) == ["5", "7"]
    np.testing.assert_allclose(raw.annotations.onset, [1.0, 4.0])


# --- reading what does not work ---------------------------------------------------------

def test_truncated_edf_is_detected(tmp_path):
    """An EDF cut short names the file, the records the header promises and the bytes there are."""
    bad = tmp_path / "S001R03.edf"
    blob = _edf().read_bytes()
    bad.write_bytes(blob[:len(blob) * 6 // 10])
    # MNE alone reads it without an error, just fewer samples: that is why the size check exists
    silent = mne.io.read_raw_edf(bad, preload=True, verbose="error")
    assert silent.n_times < 20000
    with pytest.raises(DataError, match="truncated EDF file") as e:
        read_raw(bad)
    assert str(bad) in str(e.value) and "125 data records" in str(e.value) and e.value.path == str(bad)


def test_truncated_bdf_is_detected(tmp_path):
    """A BDF missing its last bytes is truncated too (3-byte samples)."""
    path = tmp_path / "rec.bdf"
    _write_bdf(path, np.zeros((2, 256)), 128, ["Cz", "Pz"])
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated BDF file: the header announces 2 data records"):
        read_raw(path)


@pytest.mark.parametrize("name, content, message", [
    ("garbage.edf", bytes(range(256)) * 20, "not a valid EDF file: it does not start with the EDF signature"),
    ("empty.edf", b"", "not a valid EDF file: 0 bytes"),
    ("garbage.bdf", b"0       " + b"x" * 3000, "not a valid BDF file"),
    ("garbage.fif", bytes(range(256)) * 20, "cannot read as FIF"),
    ("garbage.set", b"MATLAB 5.0 but not really" * 50, "cannot read as EEGLAB"),
    ("garbage.vhdr", b"\x00\x01 nothing here", "not a BrainVision header"),
    ("notes.csv", b"a,b\n1,2\n", "unsupported file type '.csv'"),
    ("noext", b"x", "unsupported file type '\\(no extension\\)'"),
])
def test_corrupt_or_unsupported_files(tmp_path, name, content, message):
    """Garbage in any format, and files of other kinds, give a DataError with the file and the problem."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as e:
        read_raw(path)
    assert str(e.value).startswith(str(path) + ": ")


def test_corrupt_edf_header_field(tmp_path):
    """An EDF whose record count is not a number is reported as a corrupt header."""
    blob = bytearray(_edf().read_bytes())
    blob[236:244] = b"12x45   "
    path = tmp_path / "bad.edf"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt EDF header: 'number of data records' is '12x45'"):
        read_raw(path)


def test_missing_file_and_folder(tmp_path):
    """A path that is not there, or a folder, is named as such."""
    with pytest.raises(DataError, match="no such file"):
        read_raw(tmp_path / "nope.edf")
    (tmp_path / "dir.edf").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        read_raw(tmp_path / "dir.edf")


def test_brainvision_header_without_eeg_names_the_missing_file():
    """The real BrainVision headers come without signal data: the reader names the missing .eeg."""
    vhdr = need("laser-pain-features") / "markers" / "Exp_Mediation_Paradigm1_Perception_vp01.vhdr"
    with pytest.raises(DataError, match="'Exp_Mediation_Paradigm1_Perception_vp01.eeg'.*is missing") as e:
        read_raw(vhdr)
    assert e.value.path == str(vhdr)


def test_brainvision_header_without_marker_file(tmp_path):
    """A .vhdr whose .vmrk is gone names the marker file."""
    src = need("laser-pain-features") / "markers" / "Exp_Mediation_Paradigm1_Perception_vp02.vhdr"
    shutil.copy(src, tmp_path / src.name)
    (tmp_path / src.with_suffix(".eeg").name).write_bytes(b"")
    with pytest.raises(DataError, match="marker file 'Exp_Mediation_Paradigm1_Perception_vp02.vmrk'"):
        read_raw(tmp_path / src.name)


def test_eeglab_set_without_fdt(tmp_path):
    """A .set copied without its .fdt names the missing .fdt."""
    shutil.copy(need("eeglab-sample") / "eeglab_data.set", tmp_path / "eeglab_data.set")
    with pytest.raises(DataError, match="EEGLAB data file 'eeglab_data.fdt' is missing"):
        read_raw(tmp_path / "eeglab_data.set")


def test_unknown_montage_is_named(tmp_path):
    """A montage that is neither built in nor a file is reported by name."""
    raw = _raw_array(["Cz", "C3", "C4"])
    with pytest.raises(DataError, match="neither a file nor a built-in MNE montage"):
        set_montage(raw, tmp_path / "nope.elc")


# --- validation -------------------------------------------------------------------------

def test_check_helpers_find_each_problem():
    """Missing channels, NaN, flat channels, a wrong sampling rate and missing events are each named."""
    raw = _raw_array(["Cz", "C3", "C4", "Pz"], sfreq=100.0)
    data = raw.get_data()
    data[1, 50] = np.nan
    data[3] = 1e-6  # a constant, disconnected electrode
    raw._data[:] = data
    assert check_required_channels(raw, ["cz", "Fz", "Oz"]) == [
        "missing required channels Fz, Oz (the recording has 4: Cz, C3, C4, Pz)"]
    assert check_nan(raw) == ["non-finite samples (NaN/inf) in channels C3"]
    assert check_flat(raw) == ["flat channels (peak-to-peak below 0.1 µV): Pz"]
    assert check_flat(raw, ["Cz"]) == []
    assert check_sfreq(raw, 100.0) == [] and check_sfreq(raw, None) == []
    assert check_sfreq(raw, 250.0) == ["sampling rate is 100 Hz, expected 250 Hz"]
    assert check_events(raw) == ["no events: the recording has no annotations or trigger codes to cut trials from"]
    raw.set_annotations(mne.Annotations([1.0, 2.0], [0, 0], ["Stimulus/S  1", "rest"]))
    assert check_events(raw) == [] and check_events(raw, ["S 1"]) == []
    assert check_events(raw, ["S 2"]) == ["none of the events 'S 2' occur; the recording has 'Stimulus/S  1', 'rest'"]
    problems = check_raw(raw, required=["Cz", "Pz"], sfreq=250.0, descriptions=["rest"])
    assert problems == ["flat channels (peak-to-peak below 0.1 µV): Pz", "non-finite samples (NaN/inf) in channels C3",
                        "sampling rate is 100 Hz, expected 250 Hz"]
    misc = _raw_array(["Cz"]).set_channel_types({"Cz": "misc"}, on_unit_change="ignore")
    assert check_raw(misc) == ["no EEG channels (channel types: misc)"]


def test_description_matching():
    """Descriptions match with whitespace collapsed and without the BrainVision type prefix."""
    assert description_matches("Stimulus/S  1", "S 1")
    assert description_matches("Stimulus/S  1", "Stimulus/S 1")
    assert not description_matches("Stimulus/S  1", "Response/S 1")
    assert not description_matches("S 10", "S 1")
