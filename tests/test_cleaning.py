"""Cleaning: filters, ICA fitted with MNE and exported as one matrix, the helmet's apply_matrix."""

import json
from array import array

import mne
import numpy as np
import pytest
from scipy.signal import freqz

from painhelm.firmware import clean as fw_clean
from painhelm.train.cleaning import (apply_cleaning, filter_eeg, filter_raw, filter_trials, fit_cleaning,
                                     plot_cleaning)
from painhelm.train.dataset import DataError, Trials
from painhelm.train.dsp import band_powers

from .mpy import run_micropython
from .shared_data import need

SFREQ = 250.0
DELTA, ALPHA = (1.0, 4.0), (8.0, 13.0)


def _eeglab_raw() -> mne.io.BaseRaw:
    path = need("eeglab-sample") / "eeglab_data.set"
    return mne.io.read_raw_eeglab(path, preload=True, verbose=False)


def _as_trials(raw: mne.io.BaseRaw, n_times: int, picks=None) -> Trials:
    """Cut a Raw into consecutive unlabelled trials of n_times samples (µV)."""
    picks = list(raw.ch_names) if picks is None else list(picks)
    x = raw.get_data(picks=picks) * 1e6
    k = x.shape[1] // n_times
    data = x[:, :k * n_times].reshape(len(picks), k, n_times).transpose(1, 0, 2)
    ch_pos = raw.get_montage().get_positions()["ch_pos"]
    return Trials(data=data.astype(np.float32), ch_names=picks, sfreq=raw.info["sfreq"],
                  pos=np.array([ch_pos[c] for c in picks]), level=np.full(k, -1), location=np.full(k, -1),
                  subject=["eeglab"] * k, session=["1"] * k, name="eeglab-sample")


@pytest.fixture(scope="module")
def eeglab():
    """The EEGLAB sample recording and a cleaning fitted on all of it (about 10 s)."""
    raw = _eeglab_raw()
    return raw, fit_cleaning(raw)


def _amplitude(x: np.ndarray, sfreq: float, freq: float) -> float:
    """Amplitude of the sine at freq in x (middle half only, away from filter edges)."""
    x = x[len(x) // 4: 3 * len(x) // 4]
    t = np.arange(len(x)) / sfreq
    return 2 * abs(np.mean(x * np.exp(-2j * np.pi * freq * t)))


def _test_signal(n_times: int = 5000) -> np.ndarray:
    """Two channels: a 10 Hz sine plus a 0.3 Hz drift, a 60 Hz and a 50 Hz sine."""
    t = np.arange(n_times) / SFREQ
    one = (10 * np.sin(2 * np.pi * 10 * t) + 50 * np.sin(2 * np.pi * 0.3 * t)
           + 20 * np.sin(2 * np.pi * 60 * t) + 20 * np.sin(2 * np.pi * 50 * t))
    return np.stack([one, -one])


# ---- filters -------------------------------------------------------------------------

def test_band_pass_removes_drift_and_60_hz_keeps_10_hz():
    """A 1-45 Hz band-pass cuts a 0.3 Hz drift to MNE's filter gain and removes 60 Hz; 10 Hz stays."""
    y = filter_eeg(_test_signal(), SFREQ, 1.0, 45.0, notch_freqs=())
    # MNE's 1 Hz high-pass has a 0-1 Hz transition band: gain 0.18 at 0.3 Hz (-15 dB)
    gain = abs(freqz(mne.filter.create_filter(None, SFREQ, 1.0, 45.0, verbose=False), worN=[0.3], fs=SFREQ)[1][0])
    assert _amplitude(y[0], SFREQ, 0.3) == pytest.approx(50 * gain, rel=0.05)
    assert _amplitude(y[0], SFREQ, 0.3) < 0.2 * 50
    assert _amplitude(y[0], SFREQ, 60.0) < 0.01 * 20
    assert _amplitude(y[0], SFREQ, 10.0) == pytest.approx(10.0, rel=0.01)
    np.testing.assert_allclose(y[1], -y[0])  # each row on its own


def test_notch_removes_50_hz_keeps_10_hz():
    """A 50 Hz notch alone removes 50 Hz and leaves 10 Hz and 60 Hz."""
    y = filter_eeg(_test_signal(), SFREQ, None, None, notch_freqs=(50.0,))
    assert _amplitude(y[0], SFREQ, 50.0) < 0.01 * 20
    assert _amplitude(y[0], SFREQ, 10.0) == pytest.approx(10.0, rel=0.01)
    assert _amplitude(y[0], SFREQ, 60.0) == pytest.approx(20.0, rel=0.02)


def test_filter_raw_and_trials_agree_with_filter_eeg():
    """filter_raw filters a copy (info updated), filter_trials each trial: both as filter_eeg."""
    x = _test_signal()
    raw = mne.io.RawArray(x * 1e-6, mne.create_info(["Fz", "EOG1"], SFREQ, ["eeg", "eog"]), verbose=False)
    ref = filter_eeg(x, SFREQ)
    out = filter_raw(raw)
    np.testing.assert_allclose(out.get_data() * 1e6, ref, atol=1e-9 * np.abs(ref).max())
    assert out.info["highpass"] == 1.0 and out.info["lowpass"] == 45.0
    np.testing.assert_array_equal(raw.get_data(), x * 1e-6)  # the input is left alone
    trials = Trials(data=x[None].astype(np.float32), ch_names=["Fz", "EOG1"], sfreq=SFREQ, pos=np.zeros((2, 3)),
                    level=[0], location=[0], subject=["a"], session=["1"])
    np.testing.assert_allclose(filter_trials(trials).data[0], ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("kwargs, match", [
    ({"h_freq": 125.0}, r"h_freq must be .* Nyquist frequency \(sfreq / 2 = 125 Hz\), got h_freq=125"),
    ({"notch_freqs": (50.0, 150.0)}, r"notch frequency .* got 150 in notch_freqs"),
    ({"l_freq": 40.0, "h_freq": 30.0}, r"l_freq \(40.0\) must be below h_freq \(30.0\)"),
    ({"l_freq": 0.0}, r"l_freq must be above 0"),
])
def test_filter_arguments_checked_against_sfreq(kwargs, match):
    """Edges at or above Nyquist, a crossed band or a zero edge are refused, naming the numbers."""
    with pytest.raises(ValueError, match=match):
        filter_eeg(_test_signal(500), SFREQ, **kwargs)


# ---- ICA cleaning on real data ----------------------------------------------------------

def test_finds_frontal_ocular_components(eeglab):
    """On the EEGLAB sample (blinks), ICA rejects ocular components whose maps peak frontally."""
    raw, cleaning = eeglab
    eog = [i for i, why in cleaning.reasons.items() if why == "eog"]
    assert eog, cleaning.notes
    assert cleaning.excluded == sorted(cleaning.reasons) == cleaning.ica.exclude
    maps = cleaning.ica.get_components()  # (n_ch, n_components)
    frontal = {"FPz", "EOG1", "EOG2", "F3", "Fz", "F4"}
    for i in eog:
        assert cleaning.ica.ch_names[int(np.argmax(np.abs(maps[:, i])))] in frontal
    assert cleaning.matrix.shape == (32, 32) and cleaning.matrix.dtype == np.float32
    assert cleaning.ch_names == raw.ch_names


def test_matrix_equals_ica_apply(eeglab):
    """matrix @ x (+ offset) reproduces ica.apply on the real recording to 1e-6 relative."""
    raw, cleaning = eeglab
    x = raw.get_data()
    ref = cleaning.ica.apply(raw.copy(), verbose=False).get_data()
    got = cleaning.matrix.astype(np.float64) @ x
    scale = np.abs(ref).max()
    assert np.abs(got + cleaning.offset[:, None] * 1e-6 - ref).max() < 1e-6 * scale
    # mean-corrected: the offset is only a constant per channel
    centred = (ref - ref.mean(axis=1, keepdims=True)) - (got - got.mean(axis=1, keepdims=True))
    assert np.abs(centred).max() < 1e-6 * scale


def test_cleaning_removes_blinks_keeps_occipital_alpha(eeglab):
    """Applied to 2 s trials, frontal 1-4 Hz power drops to under a third, occipital alpha stays."""
    raw, cleaning = eeglab
    trials = _as_trials(raw, 256)
    cleaned = apply_cleaning(trials, cleaning)
    before = 10 ** band_powers(trials.data, trials.sfreq, 1, bands=(DELTA, ALPHA))  # (n, 1, 2, n_ch)
    after = 10 ** band_powers(cleaned.data, trials.sfreq, 1, bands=(DELTA, ALPHA))
    ratio = after.sum(axis=(0, 1)) / before.sum(axis=(0, 1))  # (2 bands, n_ch)
    ch = {name: i for i, name in enumerate(trials.ch_names)}
    # measured: FPz 0.11, EOG1 0.13 of the 1-4 Hz power remain
    for name in ("FPz", "EOG1"):
        assert ratio[0, ch[name]] < 0.3, (name, ratio[0, ch[name]])
    # measured: O1 0.985, Oz 0.97, O2 0.945 of the alpha power remain
    for name in ("O1", "Oz", "O2"):
        assert 0.85 < ratio[1, ch[name]] < 1.1, (name, ratio[1, ch[name]])


def _blink_trials(n_trials: int = 40, n_times: int = 256, sfreq: float = 128.0):
    """Known sources mixed onto Fp1, Fp2, Cz, Oz: blinks, 10 Hz alpha and two white noises.

    Returns the trials and the sources (4, n_trials * n_times).
    """
    rng = np.random.default_rng(0)
    n = n_trials * n_times
    t = np.arange(n) / sfreq
    blink = np.zeros(n)
    bump = np.hanning(int(0.3 * sfreq))
    for onset in rng.choice(n - len(bump), size=n // int(3 * sfreq), replace=False):  # one per 3 s
        blink[onset:onset + len(bump)] += 100 * bump
    alpha = 10 * np.sin(2 * np.pi * 10 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.1 * t))
    sources = np.vstack([blink, alpha, 5 * rng.laplace(size=(2, n))])  # broadband, like muscle
    mixing = np.array([[1.0, 0.2, 0.3, 0.1], [0.9, 0.2, 0.1, 0.3], [0.2, 0.6, 0.5, 0.4], [0.05, 1.0, 0.3, 0.6]])
    data = (mixing @ sources).reshape(4, n_trials, n_times).transpose(1, 0, 2)
    r = 0.09  # head radius in metres: Fp1/Fp2 front, Cz on top, Oz at the back
    pos = np.array([[-0.3 * r, 0.95 * r, 0.0], [0.3 * r, 0.95 * r, 0.0], [0.0, 0.0, r], [0.0, -r, 0.0]])
    trials = Trials(data=data.astype(np.float32), ch_names=["Fp1", "Fp2", "Cz", "Oz"], sfreq=sfreq, pos=pos,
                    level=np.zeros(n_trials), location=np.zeros(n_trials), subject=["a"] * n_trials,
                    session=["1"] * n_trials)
    return trials, sources


def test_fit_on_trials_finds_known_sources():
    """On Trials of known sources, blinks go as "eog" (frontal proxies), white noise as "muscle"."""
    trials, sources = _blink_trials()
    cleaning = fit_cleaning(trials)
    assert "frontal proxy channels ['Fp1', 'Fp2']" in cleaning.notes[0]
    assert sorted(cleaning.reasons.values()) == ["eog", "muscle", "muscle"], cleaning.notes
    cleaned = apply_cleaning(trials, cleaning).data.transpose(1, 0, 2).reshape(4, -1)
    r = np.corrcoef(np.vstack([cleaned, sources]))[:4, 4:]  # (channel, source)
    assert np.all(r[:, 1] > 0.99)  # only the alpha source is left, on every channel
    assert np.all(np.abs(r[:, [0, 2, 3]]) < 0.05)
    epochs = mne.EpochsArray(trials.data.astype(np.float64) * 1e-6, cleaning.ica.info, verbose=False)
    ref = cleaning.ica.apply(epochs, verbose=False).get_data() * 1e6
    got = apply_cleaning(trials, cleaning).data.astype(np.float64) + cleaning.offset[:, None]
    assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max()  # float32 storage of the result


@pytest.mark.slow
def test_fit_on_eeglab_trials_matches_epochs_apply():
    """Fitted on real Trials (16 channels), EOG components are found and the matrix equals ica.apply."""
    raw = _eeglab_raw()
    picks = ["FPz", "EOG1", "F3", "Fz", "F4", "EOG2", "C3", "Cz", "C4", "P3", "Pz", "P4",
             "O1", "Oz", "O2", "T7"]
    trials = _as_trials(raw.copy().crop(0, 120), 256, picks)  # 120 s keep the fit a few seconds
    cleaning = fit_cleaning(trials)
    assert "eog" in cleaning.reasons.values(), cleaning.notes
    assert cleaning.ch_names == picks
    epochs = mne.EpochsArray(trials.data.astype(np.float64) * 1e-6, cleaning.ica.info, verbose=False)
    ref = cleaning.ica.apply(epochs, verbose=False).get_data() * 1e6
    got = apply_cleaning(trials, cleaning).data.astype(np.float64) + cleaning.offset[:, None]
    assert np.abs(got - ref).max() < 1e-5 * np.abs(ref).max()  # float32 storage of the result


def test_plot_cleaning_writes_png(eeglab, tmp_path):
    """plot_cleaning writes a PNG of the excluded components' maps."""
    _, cleaning = eeglab
    path = plot_cleaning(cleaning, tmp_path / "excluded.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_few_channels_or_samples():
    """Fitting refuses one channel, or fewer samples than n_components**2, with the numbers."""
    rng = np.random.default_rng(0)
    one = mne.io.RawArray(rng.standard_normal((1, 1000)) * 1e-5, mne.create_info(["Cz"], 100.0, "eeg"),
                          verbose=False)
    with pytest.raises(DataError, match="at least 2 EEG channels, got 1"):
        fit_cleaning(one)
    short = Trials(data=rng.standard_normal((2, 8, 20)).astype(np.float32), ch_names=[f"E{i}" for i in range(8)],
                   sfreq=100.0, pos=np.zeros((8, 3)), level=[0, 0], location=[0, 0], subject=["a", "a"],
                   session=["1", "1"])
    with pytest.raises(DataError, match=r"too few samples to fit ICA: 40 samples for 8 components \(at least"):
        fit_cleaning(short)


def test_apply_cleaning_checks_channels(eeglab):
    """A cleaning fitted on other channels, or a matrix of the wrong size, is refused."""
    raw, cleaning = eeglab
    trials = _as_trials(raw.copy().crop(0, 10), 256, raw.ch_names[:4])
    with pytest.raises(ValueError, match="fitted on channels"):
        apply_cleaning(trials, cleaning)
    with pytest.raises(ValueError, match=r"shape \(n_ch, n_ch\) = \(4, 4\), got \(32, 32\)"):
        apply_cleaning(trials, cleaning.matrix)


# ---- the helmet's apply_matrix --------------------------------------------------------------

def _block(raw, cleaning, n_times=64):
    """The real cleaning matrix and a real block of the recording, float32, as the helmet has them."""
    x = (raw.get_data()[:, 1000:1000 + n_times] * 1e6).astype(np.float32)
    return cleaning.matrix, x


def test_apply_matrix_on_cpython(eeglab):
    """Under CPython apply_matrix gives numpy's matrix @ x to float32 precision."""
    m, x = _block(*eeglab)
    out = array("f", bytes(4 * x.size))
    fw_clean.check_shapes(array("f", m.ravel()), array("f", x.ravel()), 32, 64, out)
    fw_clean.apply_matrix(array("f", m.ravel()), array("f", x.ravel()), 32, 64, out)
    ref = m.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(np.array(out).reshape(32, 64), ref, atol=1e-5 * np.abs(ref).max())


def test_apply_matrix_under_micropython(eeglab, tmp_path):
    """Under real MicroPython apply_matrix equals numpy's matrix @ x and keeps no memory."""
    m, x = _block(*eeglab)
    (tmp_path / "m.f32").write_bytes(m.tobytes())
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    code = (
        "import gc\n"
        "from array import array\n"
        "import clean\n"
        "m = array('f', open('m.f32', 'rb').read())\n"
        "x = array('f', open('x.f32', 'rb').read())\n"
        "out = array('f', bytes(len(x) * 4))\n"
        "clean.check_shapes(m, x, 32, 64, out)\n"
        "clean.apply_matrix(m, x, 32, 64, out)\n"
        "before = k = 0  # globals made before measuring: a new global grows the module dict\n"
        "gc.collect(); before = gc.mem_alloc()\n"
        "for k in range(3):\n"
        "    clean.apply_matrix(m, x, 32, 64, out)\n"
        "gc.collect()\n"
        "print('grew', gc.mem_alloc() - before)\n"
        "try:\n"
        "    clean.check_shapes(m, x, 32, 63, out)\n"
        "except ValueError as e:\n"
        "    print('error', e)\n"
        "print(list(out))\n"
    )
    lines = run_micropython(code, cwd=tmp_path).strip().splitlines()
    assert lines[0] == "grew 0"
    assert lines[1] == "error x must have 2016 values for n_ch=32, n_times=63, got 2048"
    got = np.array(json.loads(lines[2])).reshape(32, 64)
    ref = m.astype(np.float64) @ x.astype(np.float64)
    # float32 accumulation over 32 terms; measured max error about 1e-6 of the largest value
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
