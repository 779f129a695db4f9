"""The synthetic-pain generator: determinism, labels, documented physiology, artifacts, errors."""

import numpy as np
import pytest
from scipy import stats
from scipy.signal import welch

from painhelm.train.dataset import Trials
from painhelm.train.synthetic import ARTIFACT_TYPES, CH_NAMES, LEVEL_NAMES, LOCATION_NAMES, make_synthetic


def _band_db(trials, l_freq, h_freq, ch_names, nperseg=None):
    """Per-trial power (dB re µV²) in [l_freq, h_freq), averaged over ``ch_names``."""
    freqs, psd = welch(trials.data, trials.sfreq, nperseg=nperseg or trials.n_times, axis=-1)
    picks = [trials.ch_names.index(ch) for ch in ch_names]
    band = (freqs >= l_freq) & (freqs < h_freq)
    return 10 * np.log10(psd[:, picks][:, :, band].sum(-1).mean(-1))


@pytest.fixture(scope="module")
def clean():
    """Three subjects, 4 levels x 2 hands x 20 trials each, no artifacts."""
    return make_synthetic(n_subjects=3, windows_per_class=20, seed=7)


def test_same_seed_same_data_other_seed_other_data():
    """The same arguments give bitwise-identical data, labels and metadata; another seed does not."""
    kw = dict(n_subjects=2, windows_per_class=3, artifact_rate=0.5)
    a, b, c = make_synthetic(seed=3, **kw), make_synthetic(seed=3, **kw), make_synthetic(seed=4, **kw)
    assert np.array_equal(a.data, b.data)
    for name in ("level", "location", "subject", "session", "pos"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.metadata == b.metadata
    assert not np.array_equal(a.data, c.data)
    assert not np.array_equal(a.level, c.level)  # trial order is shuffled per seed too


def test_trials_table_layout(clean):
    """A Trials table with named subjects, one session, the level/location names and µV float32 data."""
    assert isinstance(clean, Trials) and clean.name == "synthetic-pain"
    assert clean.data.shape == (3 * 4 * 2 * 20, len(CH_NAMES), 256) and clean.data.dtype == np.float32
    assert clean.ch_names == CH_NAMES and clean.sfreq == 128.0
    assert list(dict.fromkeys(clean.subject)) == ["S01", "S02", "S03"] and set(clean.session) == {"1"}
    assert clean.level_names == LEVEL_NAMES and clean.location_names == LOCATION_NAMES
    assert clean.class_counts("level") == {name: 3 * 2 * 20 for name in LEVEL_NAMES}
    assert clean.class_counts("location") == {name: 3 * 4 * 20 for name in LOCATION_NAMES}
    rms = clean.data.std(axis=-1)
    assert 3.0 < np.median(rms) < 30.0 and np.abs(clean.data).max() < 300.0  # tens of µV, not V or nV
    assert all(m["artifacts"] == [] and m["bads"] == [] for m in clean.metadata)


def test_positions_are_head_frame_10_05(clean):
    """pos holds MNE head-frame positions: Fp1 front-left, C4 right, Cz on top, O2 back, ~10 cm radius."""
    pos = dict(zip(clean.ch_names, clean.pos))
    assert clean.montage == "colin27_1005" and clean.pos.shape == (len(CH_NAMES), 3)
    assert pos["Fp1"][1] > 0.08 and pos["Fp1"][0] < 0 and pos["O2"][1] < -0.08 and pos["O2"][0] > 0
    assert pos["C3"][0] < -0.05 < 0.05 < pos["C4"][0]
    assert pos["Cz"][2] == clean.pos[:, 2].max()
    assert np.all((np.linalg.norm(clean.pos, axis=1) > 0.07) & (np.linalg.norm(clean.pos, axis=1) < 0.16))


def test_any_10_05_channels_case_insensitive():
    """ch_names may be any electrodes of the 10-05 system, in any case."""
    t = make_synthetic(n_subjects=1, windows_per_class=1, ch_names=["fcz", "CP3", "PO8", "AF7"])
    assert t.ch_names == ["fcz", "CP3", "PO8", "AF7"] and t.data.shape == (8, 4, 256)
    assert t.pos[2, 0] > 0 and t.pos[3, 0] < 0  # PO8 right, AF7 left


def test_a_subject_does_not_depend_on_how_many_there_are():
    """S01 is the same person whether 1 or 3 subjects are generated."""
    one = make_synthetic(n_subjects=1, windows_per_class=2, seed=11)
    three = make_synthetic(n_subjects=3, windows_per_class=2, seed=11)
    assert np.array_equal(one.data, three.data[three.subject == "S01"])


def test_subjects_differ_in_alpha_peak_frequency():
    """Each subject's Welch alpha peak sits at its own frequency (the documented one), and differs."""
    t = make_synthetic(n_subjects=5, windows_per_class=10, n_times=1024, seed=2)  # 8-s trials: 0.125 Hz bins
    none = t.subset(t.level == 0)
    freqs, psd = welch(none.data, none.sfreq, nperseg=1024, axis=-1)
    post = [none.ch_names.index(ch) for ch in ("O1", "Oz", "O2", "Pz")]
    band = (freqs >= 7.0) & (freqs <= 13.0)
    peak = freqs[band][psd[:, post][:, :, band].mean(1).argmax(-1)]  # per trial
    true = np.array([m["alpha_peak_hz"] for m in none.metadata])
    per_subject = {s: np.median(peak[none.subject == s]) for s in np.unique(none.subject)}
    for s, f in per_subject.items():
        assert abs(f - true[none.subject == s][0]) < 0.4, (s, f)
    assert max(per_subject.values()) - min(per_subject.values()) > 0.5
    # one-way ANOVA: the subject explains the per-trial peak frequency
    assert stats.f_oneway(*[peak[none.subject == s] for s in per_subject]).pvalue < 1e-6
    assert len({m["aperiodic_exponent"] for m in t.metadata}) == 5


@pytest.mark.parametrize("n_levels", [4, 5])
def test_pain_level_changes_band_power_gradedly(n_levels):
    """Averaged over trials, alpha falls and theta, beta and gamma rise with every pain level."""
    t = make_synthetic(n_subjects=3, windows_per_class=20, seed=1, n_levels=n_levels)
    assert t.level_names == (LEVEL_NAMES + ["unbearable"])[:n_levels] and set(t.level) == set(range(n_levels))
    bands = {"theta": (4, 8, ["Fz"], 1), "alpha": (8, 13, ["O1", "Oz", "O2"], -1),
             "beta": (13, 30, ["Cz", "C3", "C4"], 1), "gamma": (30, 45, ["Fz", "C3", "C4"], 1)}
    for name, (lo, hi, chs, sign) in bands.items():
        db = _band_db(t, lo, hi, chs)
        means = np.array([db[t.level == lv].mean() for lv in range(n_levels)])
        assert np.all(sign * np.diff(means) > 0.3), (name, means)
        # and it is a real effect, not an average of noise
        assert stats.spearmanr(t.level, db).statistic * sign > 0.5, name


def test_contralateral_alpha_suppression(clean):
    """Painful stimulation of one hand lowers alpha over the opposite C electrode, more with more pain."""
    lat = _band_db(clean, 8, 13, ["C4"]) - _band_db(clean, 8, 13, ["C3"])  # dB, C4 - C3
    left, right = clean.location == 0, clean.location == 1
    for lv in (1, 2, 3):
        at = clean.level == lv
        assert lat[at & left].mean() < -1.0 and lat[at & right].mean() > 1.0, lv
    gap = [lat[(clean.level == lv) & right].mean() - lat[(clean.level == lv) & left].mean() for lv in range(4)]
    assert np.all(np.diff(gap) > 0), gap
    assert stats.ttest_ind(lat[left & (clean.level > 0)], lat[right & (clean.level > 0)]).pvalue < 1e-10


def test_artifacts_at_the_requested_rate_on_unchanged_eeg(clean):
    """About artifact_rate of the trials get one artifact, named in metadata; the EEG under it is unchanged."""
    art = make_synthetic(n_subjects=3, windows_per_class=20, seed=7, artifact_rate=0.3)
    hit = np.array([bool(m["artifacts"]) for m in art.metadata])
    assert abs(hit.mean() - 0.3) < 0.07  # binomial sd over 480 trials is 0.021
    assert {a for m in art.metadata for a in m["artifacts"]} == set(ARTIFACT_TYPES)
    assert all(len(m["artifacts"]) == 1 for m in np.array(art.metadata)[hit])
    assert np.array_equal(art.data[~hit], clean.data[~hit])
    assert np.all(np.abs(art.data[hit] - clean.data[hit]).max(axis=(1, 2)) > 1.0)
    assert not any(m["artifacts"] for m in clean.metadata)


def _artifact_of(kind, **kw):
    """One trial with only artifact ``kind``, its artifact-free twin, and its metadata."""
    common = dict(n_subjects=1, windows_per_class=2, seed=5, ch_names=CH_NAMES + ["F7", "F8"], **kw)
    art = make_synthetic(artifact_rate=1.0, artifact_types=(kind,), **common)
    base = make_synthetic(**common)
    return art.data[0].astype(np.float64), base.data[0].astype(np.float64), art.metadata[0], art


def test_blink_is_frontal_and_decays_backwards():
    """A blink is a large positive deflection at Fp1/Fp2 that falls off towards the back of the head."""
    x, x0, meta, t = _artifact_of("blink")
    diff = np.abs(x - x0).max(axis=1)
    amp = dict(zip(t.ch_names, diff))
    assert meta["artifacts"] == ["blink"] and meta["bads"] == []
    assert min(amp["Fp1"], amp["Fp2"]) > 50.0
    assert amp["Fp1"] > amp["F3"] > amp["C3"] > amp["O1"] and amp["O1"] < 0.05 * amp["Fp1"]
    assert (x - x0)[t.ch_names.index("Fp1")].max() > 50.0  # upward eye rotation: positive at Fp


def test_muscle_burst_is_temporal_and_high_frequency():
    """A muscle burst is broadband activity above 20 Hz, largest at a temporal electrode."""
    x, x0, meta, t = _artifact_of("muscle")
    d = x - x0
    freqs, psd = welch(d, t.sfreq, nperseg=t.n_times, axis=-1)
    assert psd[:, freqs >= 20].sum() > 0.9 * psd.sum()
    top = t.ch_names[int(np.argmax(d.std(axis=1)))]
    assert top in ("T7", "T8", "F7", "F8")
    assert d.std(axis=1).max() > 5 * d[t.ch_names.index("Cz")].std()


def test_line_noise_at_line_freq():
    """Line noise adds a sinusoid at line_freq (here 60 Hz at 256 Hz sampling) on every channel."""
    x, x0, meta, t = _artifact_of("line_noise", sfreq=256.0, n_times=512, line_freq=60.0)
    freqs, psd = welch(x - x0, t.sfreq, nperseg=512, axis=-1)
    assert np.all(freqs[psd.argmax(axis=1)] == 60.0)
    assert meta["artifacts"] == ["line_noise"]


def test_flat_and_bad_channels_are_named():
    """A flat channel is all zeros, a bad one far noisier than the rest; both are listed in 'bads'."""
    x, _, meta, t = _artifact_of("flat_channel")
    assert len(meta["bads"]) == 1
    assert np.all(x[t.ch_names.index(meta["bads"][0])] == 0.0)
    x, _, meta, t = _artifact_of("bad_channel")
    c = t.ch_names.index(meta["bads"][0])
    others = np.delete(x, c, axis=0)
    assert x[c].std() > 4 * np.median(others.std(axis=1))


@pytest.mark.parametrize("kw, match", [
    ({"n_subjects": 0}, "n_subjects must be an integer >= 1, got 0"),
    ({"windows_per_class": 2.5}, "windows_per_class must be an integer >= 1, got 2.5"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"sfreq": 64.0}, r"sfreq must be >= 100 Hz .*got 64.0"),
    ({"n_times": 10}, "n_times must be an integer >= 64, got 10"),
    ({"n_levels": 3}, r"n_levels must be 4 \(none, low, moderate, high\) or 5 .*got 3"),
    ({"artifact_rate": 1.5}, "artifact_rate must be between 0 and 1, got 1.5"),
    ({"artifact_types": ("blink", "sneeze")}, r"artifact_types must be a non-empty selection of .*'sneeze'"),
    ({"artifact_rate": 0.1, "artifact_types": ()}, "artifact_types must be a non-empty selection"),
    ({"line_freq": 70.0}, r"line_freq must be between 0 and sfreq/2 = 64 Hz, got 70.0"),
    ({"effect_size": -1.0}, "effect_size must be >= 0, got -1.0"),
    ({"ch_names": ["Cz", "XYZ"]}, r"ch_names \['XYZ'\] are not in the colin27_1005"),
    ({"ch_names": ["Cz", "cz"]}, "ch_names must be unique"),
    ({"ch_names": "Cz"}, "ch_names must be a list of channel names"),
    ({"ch_names": []}, "ch_names must be a non-empty list"),
])
def test_bad_arguments_are_named(kw, match):
    """Each bad argument raises ValueError naming the parameter, what is allowed and what was given."""
    with pytest.raises(ValueError, match=match):
        make_synthetic(**{"n_subjects": 1, "windows_per_class": 1, **kw})
