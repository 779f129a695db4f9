"""The on-disk cache: a second run reuses it; changed inputs, parameters or entries do not."""

import numpy as np
import pytest

from painhelm.train import cache
from painhelm.train.features import Preprocessing


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINHELM_CACHE", str(tmp_path / "cache"))


def _counting(value):
    calls = []

    def build():
        calls.append(1)
        return value
    return build, calls


def _save(v, p):
    np.savez(p, v=v)


def _load(p):
    with np.load(p) as z:
        return z["v"]


def test_second_run_reuses_the_entry():
    build, calls = _counting(np.arange(5))
    key = cache.make_key("t", {"a": 1}, arrays=[np.ones(3)])
    a = cache.memo(key, build, _load, _save)
    b = cache.memo(key, build, _load, _save)
    assert len(calls) == 1 and np.array_equal(a, b)
    assert (cache.cache_dir() / f"{key}.npz").exists()


def test_key_follows_parameters_files_and_arrays(tmp_path):
    f = tmp_path / "rec.edf"
    f.write_bytes(b"one")
    k1 = cache.make_key("t", {"a": 1}, files=[f])
    assert k1 == cache.make_key("t", {"a": 1}, files=[f])
    assert k1 != cache.make_key("t", {"a": 2}, files=[f])
    f.write_bytes(b"two")
    assert k1 != cache.make_key("t", {"a": 1}, files=[f])
    assert cache.make_key("t", {}, arrays=[np.zeros(3)]) != cache.make_key("t", {}, arrays=[np.zeros(4)])


def test_corrupt_entry_is_rebuilt():
    build, calls = _counting(np.arange(3))
    key = cache.make_key("t", {})
    path = cache.cache_dir() / f"{key}.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    assert np.array_equal(cache.memo(key, build, _load, _save), np.arange(3)) and calls


def test_band_powers_are_cached_per_window_content():
    rng = np.random.default_rng(0)
    x = (10 * rng.standard_normal((6, 3, 128))).astype(np.float32)
    pre = Preprocessing.fit(x, 128.0, ["C3", "Cz", "C4"], n_frames=2, image_size=8)
    a = cache.cached_band_powers(pre, x)
    assert len(list(cache.cache_dir().glob("bandpower-*.npz"))) == 1
    np.testing.assert_array_equal(a, cache.cached_band_powers(pre, x))
    cache.cached_band_powers(pre, x[:3])
    assert len(list(cache.cache_dir().glob("bandpower-*.npz"))) == 2
    np.testing.assert_array_equal(a, pre.band_powers(x))
