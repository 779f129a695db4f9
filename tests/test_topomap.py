"""Topography images: host matrix, host images and the helmet's int8 writer agree."""

import json
from array import array

import numpy as np
import pytest

from painhelm.compress.export import quantize_array
from painhelm.train import topomap
from painhelm.train.synthetic import CH_NAMES

from .mpy import run_micropython


def test_matrix_interpolates_exactly_at_electrodes():
    """W is (n_pix, n_ch), rows sum to 1 inside the hull and 0 outside (linear interpolation)."""
    W = topomap.topomap_matrix(CH_NAMES, 16)
    assert W.shape == (256, len(CH_NAMES)) and W.dtype == np.float32
    sums = W.sum(axis=1)
    inside = sums > 0
    assert 0.4 < inside.mean() < 0.9
    np.testing.assert_allclose(sums[inside], 1.0, atol=1e-5)


def test_unknown_channel_is_named():
    """A channel missing from the montage is named in the error."""
    with pytest.raises(ValueError, match="XYZ"):
        topomap.topomap_matrix(["Cz", "XYZ", "Pz"], 16)


def _case(seed=0, n_frames=2, n_bands=3, n_ch=16, size=16):
    rng = np.random.default_rng(seed)
    logbp = rng.normal(1, 0.3, (n_frames, n_bands, n_ch)).astype(np.float32)
    mean = rng.normal(1, 0.1, (n_bands, n_ch)).astype(np.float32)
    std = rng.uniform(0.2, 0.4, (n_bands, n_ch)).astype(np.float32)
    W = topomap.topomap_matrix(CH_NAMES, size)
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
        " array('f', [0.0] * 16), out)\n"
        "print(list(out))\n" % (host.size, scale, zp)
    )
    dev = np.array(json.loads(run_micropython(code, cwd=tmp_path).strip()))
    # inv_std is shipped as float32 on the helmet; allow a rare ±1 at a rounding tie
    assert np.mean(dev == host) > 0.995 and np.abs(dev - host).max() <= 1
