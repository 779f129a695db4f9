"""Band powers: numpy equals scipy's Welch, the firmware's kernels equal numpy under MicroPython."""

import json
import logging
from array import array

import numpy as np
import pytest
import scipy.signal

from painhelm.firmware import dsp as fw_dsp
from painhelm.train import dsp

from .mpy import run_micropython
from .shared_data import need

SFREQ = 128.0


def _signal(n_ch=3, n_times=256, seed=0):
    """Seeded noise plus a 10 Hz sine on channel 0 and a 20 Hz sine on channel 2."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ
    x = rng.standard_normal((n_ch, n_times))
    x[0] += 20 * np.sin(2 * np.pi * 10 * t)
    x[2] += 20 * np.sin(2 * np.pi * 20 * t)
    return x


def _welch_reference(data, sfreq, n_frames, bands, n_per_seg=None):
    """scipy.signal.welch summed over the band bins, in dsp.band_powers' layout (power, not log)."""
    *lead, n_ch, n_times = data.shape
    n = n_times // n_frames
    nps = n_per_seg or n
    x = data.reshape(*lead, n_ch, n_frames, n)
    freqs, psd = scipy.signal.welch(x, sfreq, window="hann", nperseg=nps, noverlap=nps // 2,
                                    detrend="constant", scaling="density", axis=-1)
    df = freqs[1] - freqs[0]
    power = np.stack([psd[..., (freqs >= lo) & (freqs < hi)].sum(axis=-1) * df for lo, hi in bands], axis=-1)
    return np.moveaxis(power, -3, -1), freqs


def _power(logbp):
    return 10.0 ** np.asarray(logbp, dtype=np.float64) - fw_dsp.LOG_EPS


def _rel_err(logbp, power_ref):
    return float(np.max(np.abs(_power(logbp) - power_ref) / power_ref))


def test_peak_lands_in_its_band():
    """A 10 Hz sine raises alpha, a 20 Hz sine raises beta, each on its own channel."""
    lbp = dsp.band_powers(_signal(), SFREQ, n_frames=4)  # (4 frames, 3 bands, 3 ch)
    assert lbp.shape == (4, 3, 3)
    assert np.all(lbp[:, 1, 0] > lbp[:, 1, 1] + 1)  # alpha, ch0 vs ch1
    assert np.all(lbp[:, 2, 2] > lbp[:, 2, 1] + 1)  # beta, ch2 vs ch1


def test_band_edges_are_half_open():
    """Bins are in [l_freq, h_freq): at 2 Hz resolution 8 Hz is alpha, not theta; DC and Nyquist count."""
    assert fw_dsp.band_bins(64, 128.0) == [[2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14]]
    assert fw_dsp.band_bins(64, 128.0, ((0.0, 2.0), (60.0, 65.0))) == [[0], [30, 31, 32]]
    assert [fw_dsp.onesided_factor(k, 64) for k in (0, 1, 31, 32)] == [1, 2, 2, 1]
    assert fw_dsp.onesided_factor(31, 63) == 2  # odd length: the last bin is not Nyquist


def test_gamma_bands_extend_the_default():
    """BANDS_GAMMA is BANDS plus 30-45 Hz, with matching names."""
    assert fw_dsp.BANDS_GAMMA[:3] == fw_dsp.BANDS and fw_dsp.BANDS_GAMMA[3] == (30.0, 45.0)
    assert fw_dsp.BAND_NAMES_GAMMA == fw_dsp.BAND_NAMES + ("gamma",)
    assert len(fw_dsp.BANDS) == len(fw_dsp.BAND_NAMES) == 3
    assert dsp.band_powers(_signal(n_times=256), SFREQ, 2, dsp.BANDS_GAMMA).shape == (2, 4, 3)


def test_welch_segments():
    """Segments of n_per_seg samples every n_per_seg - n_per_seg // 2; the rest of a frame is dropped."""
    assert fw_dsp.welch_segments(250) == (250, 1, 250)
    assert fw_dsp.welch_segments(250, 100) == (100, 4, 50)
    assert fw_dsp.welch_segments(250, 250) == (250, 1, 125)
    assert fw_dsp.welch_segments(101, 51) == (51, 2, 26)


def test_bad_arguments():
    """Frames that do not divide the window, empty bands, bad n_per_seg and kernels are refused."""
    with pytest.raises(ValueError, match=r"n_times \(250\) must be a multiple of n_frames \(4\)"):
        dsp.band_powers(np.zeros((2, 250)), SFREQ, 4)
    with pytest.raises(ValueError, match=r"n_times \(250\) must be a multiple of n_frames \(4\)"):
        fw_dsp.BandPower(2, 250, 4, SFREQ)
    with pytest.raises(ValueError, match="band 5.0-5.5 Hz has no FFT bin: bins are 2.0 Hz apart"):
        fw_dsp.band_bins(64, 128.0, bands=((5.0, 5.5),))
    with pytest.raises(ValueError, match="band 5.0-5.5 Hz has no FFT bin"):
        fw_dsp.BandPower(2, 128, 2, SFREQ, bands=((5.0, 5.5),))
    with pytest.raises(ValueError, match="band 5.0-5.5 Hz has no FFT bin"):
        dsp.band_powers(np.zeros((2, 128)), SFREQ, 2, bands=((5.0, 5.5),))
    with pytest.raises(ValueError, match="n_per_seg is 300 but must be between 2 and .* = 250"):
        dsp.band_powers(np.zeros((2, 250)), 250.0, 1, n_per_seg=300)
    with pytest.raises(ValueError, match="kernel must be one of auto, plain, viper, got 'fast'"):
        fw_dsp.BandPower(2, 256, 1, SFREQ, kernel="fast")
    with pytest.raises(ValueError, match="kernel 'viper' needs MicroPython"):
        fw_dsp.BandPower(2, 256, 1, SFREQ, kernel="viper")  # this is CPython


@pytest.mark.parametrize("n_frames, n_per_seg, bands", [
    (1, None, fw_dsp.BANDS),
    (2, None, fw_dsp.BANDS_GAMMA),
    (1, 100, fw_dsp.BANDS_GAMMA),  # 4 segments, 50 % overlap
    (2, 64, fw_dsp.BANDS),  # 2 segments of 64 per 125-sample frame, 29 samples dropped
    (1, 64, ((0.0, 3.0), (110.0, 126.0))),  # DC and Nyquist (even n_per_seg) bins
    (1, 125, ((0.0, 3.0), (110.0, 126.0))),  # odd n_per_seg: no Nyquist bin
])
def test_numpy_equals_scipy_welch(n_frames, n_per_seg, bands):
    """band_powers is scipy.signal.welch (hann, constant detrend, density) summed over the band bins."""
    rng = np.random.default_rng(1)
    data = rng.standard_normal((2, 5, 250)) * 10 + 3 + np.linspace(0, 40, 250)  # offset and drift
    got = dsp.band_powers(data, 250.0, n_frames, bands, n_per_seg=n_per_seg)
    ref, freqs = _welch_reference(data, 250.0, n_frames, bands, n_per_seg)
    assert got.shape == (2, n_frames, len(bands), 5)
    assert _rel_err(got, ref) < 1e-10
    # and the firmware's bin rule picks the bins scipy's frequencies pick
    nps = n_per_seg or 250 // n_frames
    for (lo, hi), ks in zip(bands, fw_dsp.band_bins(nps, 250.0, bands)):
        assert ks == np.flatnonzero((freqs >= lo) & (freqs < hi)).tolist()


def test_numpy_flags_non_finite_frames(caplog):
    """A NaN or inf sample makes its channel-frame NaN (with a warning), and nothing else."""
    data = _signal(n_ch=3, n_times=256)
    data[1, 10] = np.nan
    data[2, 200] = np.inf
    with caplog.at_level(logging.WARNING, logger="painhelm.train.dsp"):
        lbp = dsp.band_powers(data, SFREQ, 2)
    assert "2 channel-frame(s) have non-finite samples" in caplog.text
    assert np.isnan(lbp[0, :, 1]).all() and np.isnan(lbp[1, :, 2]).all()
    assert np.isfinite(lbp[1, :, 1]).all() and np.isfinite(lbp[0, :, 2]).all() and np.isfinite(lbp[:, :, 0]).all()


def test_firmware_plain_equals_numpy_on_cpython():
    """On CPython (Raspberry Pi) "auto" is the plain kernel, and it equals numpy (Welch, gamma)."""
    x = _signal(n_ch=3, n_times=256).astype(np.float32)
    bp = fw_dsp.BandPower(3, 256, 2, SFREQ, fw_dsp.BANDS_GAMMA, n_per_seg=64)
    assert bp.kernel == "plain" and bp.n_segs == 3
    out = array("d", [0.0] * (2 * 4 * 3))
    assert bp.compute(array("f", x.ravel()), out) is out
    ref = dsp.band_powers(x, SFREQ, 2, fw_dsp.BANDS_GAMMA, n_per_seg=64)
    assert _rel_err(np.array(out).reshape(2, 4, 3), _power(ref)) < 1e-12
    # the app's call: positional bands, float32 output
    out32 = array("f", [0.0] * (4 * 3 * 3))
    fw_dsp.BandPower(3, 256, 4, SFREQ, list(fw_dsp.BANDS)).compute(array("f", x.ravel()), out32)
    np.testing.assert_allclose(np.array(out32).reshape(4, 3, 3), dsp.band_powers(x, SFREQ, 4), atol=1e-5)


# --- under MicroPython -----------------------------------------------------------------

_MPY_RUN = """
import json
from array import array
import dsp
x = array('f', open('x.f32', 'rb').read())
cfg = json.loads(open('cfg.json').read())
n_win = cfg['n_win']
n_ch = cfg['n_ch']
n_times = cfg['n_times']
bands = [tuple(b) for b in cfg['bands']]
for kernel in cfg['kernels']:
    bp = dsp.BandPower(n_ch, n_times, cfg['n_frames'], cfg['sfreq'], bands, n_per_seg=cfg['n_per_seg'],
                       kernel=kernel, _word_bits_override=cfg['word_bits'])
    out = array('d', [0.0] * (cfg['n_frames'] * len(bands) * n_ch))
    res = []
    w = n_ch * n_times
    for i in range(n_win):
        bp.compute(x[i * w:(i + 1) * w], out)
        res.extend(out)
    print(json.dumps({'kernel': bp.kernel, 'res': [repr(v) for v in res]}))
"""


def _run_firmware(tmp_path, windows, sfreq, n_frames, bands, kernels, n_per_seg=None, word_bits=None):
    """Run dsp.BandPower on ``windows`` (n_win, n_ch, n_times) under MicroPython, once per kernel.

    Output goes to an array('d') so that the comparison sees the kernel, not float32 output
    rounding. Returns {kernel asked for: (kernel used, logbp (n_win, n_frames, n_bands, n_ch))}.
    """
    n_win, n_ch, n_times = windows.shape
    (tmp_path / "x.f32").write_bytes(np.ascontiguousarray(windows, "<f4").tobytes())
    (tmp_path / "cfg.json").write_text(json.dumps({
        "n_win": n_win, "n_ch": n_ch, "n_times": n_times, "n_frames": n_frames, "sfreq": sfreq,
        "bands": [list(b) for b in bands], "n_per_seg": n_per_seg, "kernels": kernels, "word_bits": word_bits}))
    lines = run_micropython(_MPY_RUN, cwd=tmp_path, heapsize="2M").strip().splitlines()
    out = {}
    for kernel, line in zip(kernels, lines):
        rec = json.loads(line)
        res = np.array([float(v) for v in rec["res"]]).reshape(n_win, n_frames, len(bands), n_ch)
        out[kernel] = (rec["kernel"], res)
    return out


@pytest.fixture(scope="module")
def eeg_windows():
    """Real EEG: 4 one-second windows of 32 channels of PhysioNet eegmmidb S001R03, in µV."""
    import mne

    path = need("eegmmidb") / "S001" / "S001R03.edf"
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    data = raw.get_data(picks="eeg") * 1e6  # V -> µV
    sfreq = raw.info["sfreq"]
    n = int(sfreq)
    starts = (5 * n, 40 * n, 77 * n, 110 * n)
    return np.stack([data[:32, s:s + n] for s in starts]).astype(np.float32), sfreq


@pytest.mark.parametrize("n_frames, n_per_seg, bands", [
    (1, None, fw_dsp.BANDS_GAMMA),  # one periodogram per 1-s window, 1 Hz bins
    (2, 40, fw_dsp.BANDS),  # Welch: 3 segments of 40 per 80-sample frame
])
def test_kernels_equal_numpy_on_real_eeg_under_micropython(tmp_path, eeg_windows, n_frames, n_per_seg, bands):
    """Plain and viper kernels under MicroPython give numpy's band powers to 1e-5 on real EEG."""
    windows, sfreq = eeg_windows
    ref = _power(dsp.band_powers(windows, sfreq, n_frames, bands, n_per_seg=n_per_seg))
    got = _run_firmware(tmp_path, windows, sfreq, n_frames, bands, ["plain", "viper", "auto"], n_per_seg)
    assert got["auto"][0] == "viper"  # the unix port has the viper emitter
    for kernel in ("plain", "viper"):
        used, logbp = got[kernel]
        assert used == kernel
        assert _rel_err(logbp, ref) <= 1e-5, kernel
    np.testing.assert_array_equal(got["auto"][1], got["viper"][1])


def test_viper_on_a_32_bit_word_emulated(tmp_path, eeg_windows):
    """The 32-bit-word kernel (split accumulators, 15-bit samples, 14-bit table) stays within 1e-3.

    Run here on the 64-bit port with the 32-bit widths: every intermediate of that kernel is
    bounded below 2**31 by construction, so these are the numbers a 32-bit board computes.
    """
    windows, sfreq = eeg_windows
    ref = _power(dsp.band_powers(windows, sfreq, 1, fw_dsp.BANDS_GAMMA))
    used, logbp = _run_firmware(tmp_path, windows, sfreq, 1, fw_dsp.BANDS_GAMMA, ["viper"], word_bits=32)["viper"]
    assert used == "viper"
    assert _rel_err(logbp, ref) <= 1e-3


def test_kernels_on_extreme_inputs_under_micropython(tmp_path):
    """Large DC offsets, a spike, tiny and huge values, a flat channel, NaN and inf: both kernels."""
    rng = np.random.default_rng(3)
    n = 250
    t = np.arange(n) / 250.0
    noise = rng.standard_normal(n)
    chans = [
        1e5 + noise,  # DC offset far above the signal
        np.eye(1, n, 100)[0] * 1e3,  # one spike
        1e-40 * (noise + np.sin(2 * np.pi * 10 * t)),  # float32 subnormals: LOG_EPS dominates
        1e-4 * (noise + np.sin(2 * np.pi * 10 * t)),  # small
        1e30 * (noise + np.sin(2 * np.pi * 10 * t)),  # huge
        np.full(n, 7.0),  # flat: power 0 -> log10(LOG_EPS)
        noise, noise, noise,
    ]
    windows = np.stack(chans)[None].astype(np.float32)
    windows[0, 6, 17] = np.nan
    windows[0, 7, 200] = np.inf
    windows[0, 8, 3] = -np.inf
    got = _run_firmware(tmp_path, windows, 250.0, 1, fw_dsp.BANDS_GAMMA, ["plain", "viper"])
    with np.errstate(invalid="ignore"):
        ref = dsp.band_powers(windows, 250.0, 1, fw_dsp.BANDS_GAMMA)
    for kernel in ("plain", "viper"):
        logbp = got[kernel][1]
        assert np.isnan(logbp[..., 6:]).all() and np.isnan(ref[..., 6:]).all(), kernel
        np.testing.assert_array_equal(logbp[..., 5], np.log10(fw_dsp.LOG_EPS))
        # log10 differences of 1e-5 / ln(10) = relative power errors of 1e-5
        np.testing.assert_allclose(logbp[..., :5], ref[..., :5], rtol=0, atol=1e-5 / np.log(10), err_msg=kernel)


def test_memory_under_micropython():
    """Construction fits in a few KB, viper kernels allocate nothing, compute() leaks nothing."""
    code = """
import gc, micropython
from array import array
import dsp, dsp_viper
x = array('f', bytearray(4 * 32 * 250))
for i in range(len(x)):
    x[i] = (i * 7919 % 1000) * 0.01
out = array('f', bytearray(4 * 4 * 32))

def measure(kernel):
    gc.collect()
    a0 = gc.mem_alloc()
    bp = dsp.BandPower(32, 250, 1, 250.0, dsp.BANDS_GAMMA, kernel=kernel)
    gc.collect()
    a1 = gc.mem_alloc()
    bp.compute(x, out)
    gc.collect()
    a2 = gc.mem_alloc()
    for _ in range(3):
        bp.compute(x, out)
    gc.collect()
    a3 = gc.mem_alloc()
    bp = None
    gc.collect()
    return a1 - a0, a3 - a2, gc.mem_alloc() - a0

def kernels_allocate():
    bp = dsp.BandPower(32, 250, 1, 250.0, dsp.BANDS_GAMMA, kernel='viper')
    micropython.heap_lock()  # any allocation now raises MemoryError
    try:
        dsp_viper.prep(x, 250, 250, bp._q, bp._par)
        dsp_viper.dft_word(bp._q, 250, bp._cs, bp._runs, bp._y, bp._par)
    finally:
        micropython.heap_unlock()
    return 'no'

for kernel in ('plain', 'viper'):
    print(kernel, *measure(kernel))
print(kernels_allocate())
"""
    lines = run_micropython(code, heapsize="256K").split()
    for i, kernel in enumerate(("plain", "viper")):
        name, built, growth, left = lines[4 * i:4 * i + 4]
        assert name == kernel
        assert 0 < int(built) < 16 * 1024, (kernel, built)  # tables are O(n_per_seg), not O(bins * n)
        assert int(growth) == 0, (kernel, growth)
        assert int(left) == 0, (kernel, left)
    assert lines[8] == "no"


def test_auto_falls_back_when_segment_is_too_long_for_fixed_point():
    """With a 32-bit word a 4097-sample segment is too long for viper: auto runs plain, forced viper says why."""
    code = """
import dsp
print(dsp.BandPower(1, 4097, 1, 1000.0, kernel='auto', _word_bits_override=32).kernel)
print(dsp.BandPower(1, 4096, 1, 1000.0, kernel='auto', _word_bits_override=32).kernel)
try:
    dsp.BandPower(1, 4097, 1, 1000.0, kernel='viper', _word_bits_override=32)
except ValueError as e:
    print(e)
"""
    assert run_micropython(code, heapsize="4M").splitlines() == [
        "plain", "viper", "n_per_seg 4097 is too long for the viper kernel (32-bit word)"]
