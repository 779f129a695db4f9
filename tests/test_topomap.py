"""Topography images: host matrix, host images and the helmet's int8 writer agree."""

import json
from array import array

import numpy as np
import pytest

from painhelm.compress.export import quantize_array
from painhelm.train import topomap

CH_NAMES = ["Fp1", "Fp2", "F3", "Fz", "F4", "T7", "C3", "Cz", "C4", "T8", "P3", "Pz", "P4", "O1", "Oz", "O2"]
POS = topomap.electrode_positions(CH_NAMES)

from .mpy import run_micropython


def test_matrix_interpolates_exactly_at_electrodes():
    """W is (n_pix, n_ch), rows sum to 1 inside the hull and 0 outside (linear interpolation)."""
    for size in (16, 32):
        W = topomap.topomap_matrix(POS, size)
        assert W.shape == (size * size, len(CH_NAMES)) and W.dtype == np.float32
        sums = W.sum(axis=1)
        inside = topomap.head_mask(W).ravel()
        assert 0.4 < inside.mean() < 0.9
        np.testing.assert_allclose(sums[inside], 1.0, atol=1e-5)
        np.testing.assert_array_equal(W[~inside], 0.0)


def test_default_grid_is_32():
    assert topomap.topomap_matrix(POS).shape == (32 * 32, len(CH_NAMES))


def test_electrode_value_lands_at_its_pixel():
    """A unit value on one electrode peaks at the pixel nearest that electrode's projection."""
    size = 32
    W = topomap.topomap_matrix(POS, size)
    xy = topomap.azimuthal_equidistant(POS)
    X, Y = topomap.grid(xy, size)
    for ch in ("Fz", "C3", "O2"):
        i = CH_NAMES.index(ch)
        peak = np.unravel_index(np.argmax(W[:, i]), (size, size))
        nearest = np.unravel_index(np.argmin((X - xy[i, 0]) ** 2 + (Y - xy[i, 1]) ** 2), (size, size))
        assert abs(peak[0] - nearest[0]) <= 1 and abs(peak[1] - nearest[1]) <= 1, ch


def test_front_is_up_and_left_is_left():
    """Row 0 is the front of the head (Fp1/Fp2), and C3 (left) is in the left half of the image."""
    size = 32
    W = topomap.topomap_matrix(POS, size).reshape(size, size, -1)
    row_fp1 = np.argmax(W[..., CH_NAMES.index("Fp1")].max(axis=1))
    row_o1 = np.argmax(W[..., CH_NAMES.index("O1")].max(axis=1))
    assert row_fp1 < size // 3 < 2 * size // 3 < row_o1
    col_c3 = np.argmax(W[..., CH_NAMES.index("C3")].max(axis=0))
    col_c4 = np.argmax(W[..., CH_NAMES.index("C4")].max(axis=0))
    assert col_c3 < size // 2 < col_c4


def test_unknown_channel_is_named():
    """A channel missing from the montage is named in the error."""
    with pytest.raises(ValueError, match="XYZ"):
        topomap.electrode_positions(["Cz", "XYZ", "Pz"])


def test_degenerate_positions_are_refused():
    with pytest.raises(ValueError, match="triangulate"):
        topomap.topomap_matrix(POS[:2], 16)
    with pytest.raises(ValueError, match="image_size"):
        topomap.topomap_matrix(POS, 2)


def _case(seed=0, n_frames=2, n_bands=3, n_ch=16, size=16):
    rng = np.random.default_rng(seed)
    logbp = rng.normal(1, 0.3, (n_frames, n_bands, n_ch)).astype(np.float32)
    mean = rng.normal(1, 0.1, (n_bands, n_ch)).astype(np.float32)
    std = rng.uniform(0.2, 0.4, (n_bands, n_ch)).astype(np.float32)
    W = topomap.topomap_matrix(POS, size)
    return logbp, mean, std, W


def test_firmware_images_match_host_under_micropython(tmp_path):
    """The helmet's int8 images equal the host's quantized images (MicroPython, float32 params)."""
    logbp, mean, std, W = _case()
    scale, zp = 0.031, 2
    host = quantize_array(topomap.images(logbp[None].astype(np.float64), mean.astype(np.float64),
                                           std.astype(np.float64), W), scale, zp).ravel()
    for name, arr in (("lbp", logbp), ("mean", mean), ("W", W)):
        (tmp_path / name).write_bytes(arr.astype("<f4").tobytes())
    (tmp_path / "invstd").write_bytes((1.0 / std.astype(np.float64)).astype("<f4").tobytes())
    code = (
        "from array import array\n"
        "import topomap\n"
        "ld = lambda n: array('f', open(n, 'rb').read())\n"
        "out = array('b', [0] * %d)\n"
        "topomap.images_int8(ld('lbp'), ld('mean'), ld('invstd'), ld('W'), 2, 3, 16, 256, %r, %d,"
        " array('f', [0.0] * 16), out, topomap.head_mask(ld('W'), 256, 16))\n"
        "print(list(out))\n" % (host.size, scale, zp)
    )
    dev = np.array(json.loads(run_micropython(code, cwd=tmp_path).strip()))
    # inv_std is shipped as float32 on the helmet; allow a rare ±1 at a rounding tie
    assert np.mean(dev == host) > 0.995 and np.abs(dev - host).max() <= 1
