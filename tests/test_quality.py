"""Signal-quality checks per channel: each flag on a known signal, the bit mask of bad channels,
the statistics against numpy, defaults, and the same numbers under MicroPython as CPython."""

import math
import subprocess
import sys
from array import array

import numpy as np
import pytest

from painhelm.firmware import quality
from painhelm.firmware.quality import QF_ARTIFACT, QF_FLAT, QF_LINE_NOISE, QF_NONFINITE, QF_SATURATED, Quality

from .mpy import FIRMWARE, run_micropython

SFREQ = 128.0
N_CH, N_TIMES = 6, 256
# limits that seeded noise plus an 8 Hz sine (RMS about 10 µV) passes with room to spare
CFG = {"flat_uv": 2.0, "saturation_uv": 1000.0, "stuck_samples": 4, "line_freq": 50.0, "line_ratio": 0.05,
       "artifact_ptp_uv": 120.0, "artifact_hf_uv": 25.0, "artifact_jump_uv": 60.0, "max_bad_channels": 0}


def _window(seed=0, n_ch=N_CH, n_times=N_TIMES):
    """Seeded noise (sd 3 µV) plus an 8 Hz sine of 10 µV amplitude on every channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ
    return 3.0 * rng.standard_normal((n_ch, n_times)) + 10.0 * np.sin(2 * np.pi * 8 * t + np.arange(n_ch)[:, None])


def _f32(x):
    a = array("f")
    a.frombytes(np.ascontiguousarray(x, "<f4").tobytes())
    return a


def _check(x, cfg=CFG, sfreq=SFREQ):
    q = Quality(x.shape[0], x.shape[1], sfreq, cfg)
    return q, q.check(_f32(x))


def test_clean_window_passes():
    """Seeded noise plus an 8 Hz sine raises no flag, and the gate is open."""
    q, flags = _check(_window())
    assert flags == 0 and q.bad == 0 and q.n_bad == 0 and q.ok
    assert bytes(q.ch_flags) == bytes(N_CH)


def test_flat_channel_sets_its_bit_only():
    """A disconnected channel (all 0 µV) is flat, only its bit is set, and the gate closes."""
    x = _window()
    x[3] = 0.0
    q, flags = _check(x)
    assert flags == QF_FLAT and q.ch_flags[3] == QF_FLAT
    assert q.bad == 1 << 3 and q.n_bad == 1 and not q.ok
    assert q.ptp[3] == 0.0 and q.stuck[3] == N_TIMES


def test_saturated_by_clipping_and_by_level():
    """Samples pinned at a rail (a run of identical values) and |x| beyond saturation_uv both flag."""
    x = _window()
    x[1] = np.clip(x[1] * 3, -20.0, 20.0)  # the ADC rail at ±20 µV: runs of the same value
    x[4, 100] = 1500.0  # one sample beyond the amplifier's range
    q, flags = _check(x, dict(CFG, artifact_ptp_uv=0.0, artifact_hf_uv=0.0, artifact_jump_uv=0.0))
    assert q.ch_flags[1] == QF_SATURATED and q.ch_flags[4] == QF_SATURATED
    assert q.bad == (1 << 1) | (1 << 4) and q.n_bad == 2
    assert q.stuck[1] >= 4 and q.absmax[4] == 1500.0


@pytest.mark.parametrize("sfreq, n_times, line_freq", [(128.0, 256, 50.0), (128.0, 256, 60.0), (160.0, 250, 60.0)])
def test_line_noise_at_the_mains_frequency(sfreq, n_times, line_freq):
    """A sinusoid at the set mains frequency (on a bin or between bins) flags its channel and its
    power ratio is measured; a sinusoid at the other mains frequency is not line noise."""
    x = _window(n_times=n_times)
    t = np.arange(n_times) / sfreq
    x[2] += 8.0 * np.sin(2 * np.pi * line_freq * t + 0.3)
    other = 50.0 if line_freq == 60.0 else 60.0
    x[5] += 8.0 * np.sin(2 * np.pi * other * t)
    cfg = dict(CFG, line_freq=line_freq, artifact_hf_uv=0.0, artifact_ptp_uv=0.0, artifact_jump_uv=0.0)
    q, flags = _check(x, cfg, sfreq)
    assert q.ch_flags[2] == QF_LINE_NOISE and q.ch_flags[5] == 0 and q.bad == 1 << 2
    expect = 32.0 / np.var(x[2].astype(np.float32).astype(np.float64))  # (8^2 / 2) / total power
    assert q.line[2] == pytest.approx(expect, rel=0.2)  # the noise at the mains bin adds with a random phase
    assert q.line[0] < 0.01  # white noise: its share of power in the Hann main lobe


def test_artifact_by_amplitude_high_frequency_and_jump():
    """A blink-like deflection (ptp), a muscle burst (hf) and an electrode pop (jump) are artifacts."""
    x = _window()
    rng = np.random.default_rng(1)
    n = np.arange(40)
    x[0, 60:100] += 150.0 * np.sin(np.pi * (n + 0.5) / 40) ** 2  # 0.3 s blink, 150 µV
    x[1, 100:200] += 30.0 * np.diff(rng.standard_normal(101))  # broadband above 20 Hz, sd ~42 µV
    x[2, 150:] += 80.0 * np.exp(-np.arange(N_TIMES - 150) / 20.0)  # a pop: 80 µV step, 0.15 s decay
    cases = {0: ("artifact_ptp_uv", "ptp"), 1: ("artifact_hf_uv", "hf"), 2: ("artifact_jump_uv", "jump")}
    q, flags = _check(x)
    assert flags == QF_ARTIFACT and q.bad == 0b111
    for ch, (key, stat) in cases.items():  # each check alone finds its own artifact
        only = dict(CFG, **{k: 0.0 for k in ("artifact_ptp_uv", "artifact_hf_uv", "artifact_jump_uv") if k != key})
        q1, _ = _check(x, only)
        assert q1.ch_flags[ch] == QF_ARTIFACT, (key, list(q1.ch_flags))
        assert getattr(q1, stat)[ch] > CFG[key]


def test_per_channel_limits():
    """A list of limits applies per channel; a list of the wrong length names the setting."""
    x = _window()
    q, _ = _check(x, dict(CFG, artifact_ptp_uv=[120.0, 120.0, 5.0, 120.0, 120.0, 120.0]))
    assert q.bad == 1 << 2
    with pytest.raises(ValueError, match="artifact_ptp_uv has 2 values, expected one or n_ch = 6"):
        Quality(N_CH, N_TIMES, SFREQ, dict(CFG, artifact_ptp_uv=[1.0, 2.0]))


def test_nonfinite_sample():
    """A NaN sample flags its channel as non-finite, nothing else, and its statistics are NaN."""
    x = _window()
    x[4, 10] = np.nan
    q, flags = _check(x)
    assert flags == quality.QF_NONFINITE and q.bad == 1 << 4 and math.isnan(q.ptp[4])
    assert quality.flag_names(flags | QF_FLAT) == ["flat", "nonfinite"]


def test_max_bad_channels():
    """The gate fails only when more channels than max_bad_channels are bad."""
    x = _window()
    x[0] = 0.0
    q, _ = _check(x, dict(CFG, max_bad_channels=1))
    assert q.n_bad == 1 and q.ok
    x[5] = 0.0
    q, _ = _check(x, dict(CFG, max_bad_channels=1))
    assert q.n_bad == 2 and not q.ok and q.bad == 0b100001


def test_defaults_without_settings():
    """Without the bundle's settings the lenient defaults apply: flat below 0.5 µV, clipped after
    50 ms of identical samples, artifacts above 500 µV peak-to-peak, line noise above half the power."""
    q = Quality(N_CH, N_TIMES, SFREQ, None)
    assert q.stuck_samples == math.ceil(0.05 * SFREQ) and q.flat_uv == 0.5 and q.max_bad_channels == 0
    assert list(q.artifact_ptp_uv) == [500.0] * N_CH and q.saturation_uv == 0.0
    x = _window()
    assert q.check(_f32(x)) == 0
    x[0, 50:60] = x[0, 50]  # 10 identical samples > 7
    x[1] *= 20.0  # ptp about 600 µV
    x[2] = 0.1 * np.sin(np.arange(N_TIMES))  # ptp 0.2 µV
    assert q.check(_f32(x)) == QF_SATURATED | QF_ARTIFACT | QF_FLAT
    assert list(q.ch_flags)[:3] == [QF_SATURATED, QF_ARTIFACT, QF_FLAT]
    assert Quality(N_CH, N_TIMES, SFREQ, {"stuck_samples": 12}).stuck_samples == 12  # partial settings


def test_statistics_equal_numpy():
    """ptp, absmax, hf, jump, line and stuck equal their numpy definitions."""
    x = _window(seed=3).astype(np.float32)
    x[2, 20:25] = x[2, 20]
    q, _ = _check(x)
    d = x.astype(np.float64)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_TIMES) / N_TIMES)
    coef = np.exp(-2j * np.pi * 50.0 / SFREQ * np.arange(N_TIMES))
    for ch in range(N_CH):
        v = d[ch]
        diff = np.diff(v)
        assert q.ptp[ch] == pytest.approx(np.ptp(v), rel=1e-6)
        assert q.absmax[ch] == pytest.approx(np.abs(v).max(), rel=1e-6)
        assert q.hf[ch] == pytest.approx(np.sqrt(np.mean(diff ** 2)), rel=1e-5)
        assert q.jump[ch] == pytest.approx(np.abs(diff).max(), rel=1e-5)
        X = np.sum((v - v[0]) * w.astype(np.float32) * coef)
        assert q.line[ch] == pytest.approx(8 * abs(X) ** 2 / N_TIMES ** 2 / np.var(v), rel=1e-4, abs=1e-9)
        runs = max(len(list(g)) for _, g in __import__("itertools").groupby(v.tolist()))
        assert q.stuck[ch] == runs
    assert q.stuck[2] == 5


def test_window_length_is_checked():
    """A window of the wrong length is refused with both numbers."""
    with pytest.raises(ValueError, match="window has 10 samples, quality expects n_ch \\* n_times = 1536"):
        Quality(N_CH, N_TIMES, SFREQ, CFG).check(array("f", [0.0] * 10))


# A seeded stream of windows with every kind of fault, identical under both interpreters
# (an integer LCG, no `random`); prints flags, bad mask and the statistics' exact bits.
_SCRIPT = """
import struct, math
from array import array
from binascii import hexlify
import quality
n_ch, n_times, sfreq = 5, 128, 128.0
cfg = {'flat_uv': 2.0, 'saturation_uv': 400.0, 'stuck_samples': 4, 'line_freq': 50.0, 'line_ratio': 0.05,
       'artifact_ptp_uv': [120.0, 120.0, 90.0, 120.0, 120.0], 'artifact_hf_uv': 25.0, 'artifact_jump_uv': 60.0,
       'max_bad_channels': 1}
q = quality.Quality(n_ch, n_times, sfreq, cfg)
state = [12345]
def rnd():
    state[0] = (1103515245 * state[0] + 12345) % 2147483648
    return state[0] / 2147483648.0 - 0.5
x = array('f', [0.0] * (n_ch * n_times))
def h(v):
    return hexlify(struct.pack('<d', v)).decode()
for w in range(12):
    for ch in range(n_ch):
        for t in range(n_times):
            x[ch * n_times + t] = 12.0 * rnd() + 10.0 * math.sin(0.39 * t + ch)
    kind = w % 6
    c = w % n_ch
    if kind == 1:
        for t in range(n_times):
            x[c * n_times + t] = 0.0
    elif kind == 2:
        for t in range(n_times):
            v = x[c * n_times + t] * 4
            x[c * n_times + t] = 25.0 if v > 25.0 else (-25.0 if v < -25.0 else v)
    elif kind == 3:
        for t in range(n_times):
            x[c * n_times + t] += 9.0 * math.sin(2 * math.pi * 50.0 * t / sfreq)
    elif kind == 4:
        x[c * n_times + 40] += 300.0
    elif kind == 5:
        x[c * n_times + 7] = float('nan')
    flags = q.check(x)
    print(w, flags, q.bad, q.n_bad, q.ok, list(q.ch_flags), list(q.stuck),
          ' '.join(h(v) for a in (q.ptp, q.absmax, q.hf, q.jump, q.line) for v in a))
"""


def test_micropython_equals_cpython():
    """The same windows give the same flags, masks and statistics (bit for bit) on both interpreters."""
    mpy = run_micropython(_SCRIPT).strip().splitlines()
    cpy = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=str(FIRMWARE), capture_output=True, text=True,
                         env={"PYTHONPATH": str(FIRMWARE)}, check=True).stdout.strip().splitlines()
    assert len(mpy) == 12 and mpy == cpy
    flags = [int(line.split()[1]) for line in cpy]
    assert flags[1] == QF_FLAT and flags[2] == QF_SATURATED and flags[3] & QF_LINE_NOISE
    assert flags[4] == QF_ARTIFACT and flags[5] == QF_NONFINITE
