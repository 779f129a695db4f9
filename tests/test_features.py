"""Preprocessing: per-band normalisation fitted on training data, cleaning matrix, band-power tables."""

import numpy as np
import pytest

from painhelm.train import dsp, topomap
from painhelm.train.dataset import BandPowerTrials
from painhelm.train.features import Preprocessing

CH = ["F3", "Fz", "F4", "C3", "Cz", "C4", "P3", "Pz", "P4"]
SFREQ = 128.0


def _windows(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return (10 * rng.standard_normal((n, len(CH), 256))).astype(np.float32)


def test_per_band_normalisation_is_one_value_per_band():
    x = _windows()
    pre = Preprocessing.fit(x, SFREQ, CH, n_frames=4, image_size=16)
    assert pre.mean.shape == pre.std.shape == (3, len(CH))
    assert np.all(pre.mean == pre.mean[:, :1]) and np.all(pre.std == pre.std[:, :1])
    lbp = dsp.band_powers(x, SFREQ, 4)
    np.testing.assert_allclose(pre.mean[:, 0], lbp.mean(axis=(0, 1, 3)), rtol=1e-5)
    # the training images are z-scores: each band's electrode values have mean 0, std 1
    z = (lbp - pre.mean) / pre.std
    np.testing.assert_allclose(z.mean(axis=(0, 1, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1, 3)), 1, atol=1e-3)


def test_channel_normalisation_and_bad_norm():
    x = _windows()
    pre = Preprocessing.fit(x, SFREQ, CH, n_frames=4, norm="channel")
    assert not np.all(pre.mean == pre.mean[:, :1])
    with pytest.raises(ValueError, match="norm"):
        Preprocessing.fit(x, SFREQ, CH, norm="pixel")


def test_images_shape_and_mask():
    x = _windows()
    pre = Preprocessing.fit(x, SFREQ, CH, n_frames=4, image_size=32)
    img = pre.images(x[:3])
    assert img.shape == (3, 4, 3, 32, 32) and img.dtype == np.float32
    mask = topomap.head_mask(pre.W)
    assert np.all(img[..., ~mask] == 0) and np.any(img[..., mask] != 0)


def test_cleaning_matrix_is_applied_before_the_dsp():
    """A matrix that zeroes C3 and copies Cz into it gives C3 the band powers of Cz."""
    x = _windows()
    M = np.eye(len(CH), dtype=np.float32)
    c3, cz = CH.index("C3"), CH.index("Cz")
    M[c3, c3], M[c3, cz] = 0.0, 1.0
    pre = Preprocessing.fit(x, SFREQ, CH, n_frames=4, clean=M)
    lbp = pre.band_powers(x)
    np.testing.assert_allclose(lbp[..., c3], lbp[..., cz], rtol=1e-9)
    np.testing.assert_allclose(lbp[..., cz], dsp.band_powers(x, SFREQ, 4)[..., cz], rtol=1e-9)


def test_wrong_window_shape_is_explained():
    pre = Preprocessing.fit(_windows(), SFREQ, CH)
    with pytest.raises(ValueError, match="9 channels, 256 samples"):
        pre.images(np.zeros((2, 9, 200), np.float32))


def test_band_power_tables_enter_after_the_dsp():
    rng = np.random.default_rng(1)
    n = 10
    t = BandPowerTrials(logbp=rng.normal(-10, 0.02, (n, 1, 3, 6)).astype(np.float32),
                        bands=((4, 8), (8, 13), (13, 30)), ch_names=["Cz", "FCz", "C3", "C4", "Fz", "Pz"],
                        pos=topomap.electrode_positions(["Cz", "FCz", "C3", "C4", "Fz", "Pz"]),
                        level=rng.integers(0, 2, n), location=np.full(n, -1), subject=["a"] * n,
                        session=["a"] * n, level_names=["low", "high"])
    pre = Preprocessing.for_trials(t, image_size=16)
    img = pre.trial_images(t)
    assert img.shape == (n, 1, 3, 16, 16)
    with pytest.raises(ValueError, match="band-power"):
        Preprocessing.for_trials(t, clean=np.eye(6))
