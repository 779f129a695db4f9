"""Band powers: the firmware's pure-Python reference and the host's numpy version agree."""

import json
import math
from array import array

import numpy as np
import pytest

from painhelm.firmware import dsp as fw_dsp
from painhelm.train import dsp

from .mpy import run_micropython

SFREQ = 128.0


def _signal(n_ch=3, n_times=256, seed=0):
    """Seeded noise plus a 10 Hz sine on channel 0 and a 20 Hz sine on channel 2."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ
    x = rng.standard_normal((n_ch, n_times))
    x[0] += 20 * np.sin(2 * np.pi * 10 * t)
    x[2] += 20 * np.sin(2 * np.pi * 20 * t)
    return x


def test_peak_lands_in_its_band():
    """A 10 Hz sine raises alpha, a 20 Hz sine raises beta, each on its own channel."""
    lbp = dsp.band_powers(_signal(), SFREQ, n_frames=4)  # (4 frames, 3 bands, 3 ch)
    assert lbp.shape == (4, 3, 3)
    assert np.all(lbp[:, 1, 0] > lbp[:, 1, 1] + 1)  # alpha, ch0 vs ch1
    assert np.all(lbp[:, 2, 2] > lbp[:, 2, 1] + 1)  # beta, ch2 vs ch1


def test_band_edges_are_half_open():
    """Bins are in [l_freq, h_freq): at 2 Hz resolution 8 Hz is alpha, not theta."""
    assert fw_dsp.band_bins(64, 128.0) == [[2, 3], [4, 5, 6], [7, 8, 9, 10, 11, 12, 13, 14]]


def test_bad_arguments():
    """Frames that do not divide the window and empty bands are refused with the numbers."""
    with pytest.raises(ValueError, match="multiple of n_frames"):
        dsp.band_powers(np.zeros((2, 250)), SFREQ, 4)
    with pytest.raises(ValueError, match="no FFT bin"):
        fw_dsp.band_bins(64, 128.0, bands=((5.0, 5.5),))


def test_firmware_matches_numpy_on_cpython():
    """The pure-Python reference equals the numpy version to float32 precision."""
    x = _signal()
    bp = fw_dsp.BandPower(3, 256, 4, SFREQ)
    out = array("f", [0.0] * 36)
    bp.compute(array("f", x.astype(np.float32).ravel()), out)
    ref = dsp.band_powers(x.astype(np.float32), SFREQ, 4)
    np.testing.assert_allclose(np.array(out).reshape(4, 3, 3), ref, atol=1e-4)


def test_firmware_matches_numpy_under_micropython(tmp_path):
    """Under real MicroPython the reference gives the numpy values too."""
    x = _signal().astype(np.float32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    code = (
        "from array import array\n"
        "import dsp\n"
        "x = array('f', open('x.f32', 'rb').read())\n"
        "out = array('f', [0.0] * 36)\n"
        "dsp.BandPower(3, 256, 4, 128.0).compute(x, out)\n"
        "print(list(out))\n"
    )
    got = np.array(json.loads(run_micropython(code, cwd=tmp_path).strip())).reshape(4, 3, 3)
    np.testing.assert_allclose(got, dsp.band_powers(x, SFREQ, 4), atol=1e-4)
