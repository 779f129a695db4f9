"""Ring buffer: sample-major pushes in, channel-major windows out, on CPython and MicroPython."""

import json
from array import array

import numpy as np
import pytest

from painhelm.firmware import ring

from .mpy import run_micropython

N_CH = 3
CAP = 50
# push sizes that wrap the rows several times, one larger than the ring
PUSHES = [7, 13, 1, 30, 49, 5, 60, 11, 2]


def _stream(n_total, n_ch=N_CH):
    """Sample t of channel c is 1000 * c + t: every value says where it came from."""
    t = np.arange(n_total)
    return (1000.0 * np.arange(n_ch)[:, None] + t[None, :]).astype(np.float32)  # (n_ch, n_total)


def _run(r, pushes, channel_major=False):
    """Push the stream in chunks; after each, record windows of 20 at two ends."""
    data = _stream(sum(pushes))
    out = []
    t = 0
    w = array("f", bytes(4 * N_CH * 20))
    for n in pushes:
        chunk = data[:, t:t + n]
        if channel_major:
            r.push_channel_major(array("f", chunk.tobytes()), N_CH, n)
        else:
            r.push(array("f", chunk.T.tobytes()), n)
        t += n
        assert r.total == t and r.filled() == min(t, CAP)
        for end in (t, t - 5):
            if end - 20 >= t - r.filled():
                out.append((end, list(r.window(w, 20, end))))
    return data, out


@pytest.mark.parametrize("channel_major", [False, True])
def test_windows_are_the_pushed_samples(channel_major):
    """Every window equals the stream's [end - n_times, end), channel-major, across wraps."""
    r = ring.Ring(N_CH, CAP)
    data, out = _run(r, PUSHES, channel_major)
    assert len(out) > 10
    for end, got in out:
        np.testing.assert_array_equal(np.array(got).reshape(N_CH, 20), data[:, end - 20:end])


def test_push_offset_and_memoryview():
    """push reads n samples from value `offset` of an array or a memoryview of one."""
    r = ring.Ring(2, 8)
    buf = array("f", range(20))
    r.push(memoryview(buf), 3, offset=4)  # samples (4,5) (6,7) (8,9)
    w = array("f", bytes(4 * 6))
    assert list(r.window(w, 3)) == [4.0, 6.0, 8.0, 5.0, 7.0, 9.0]


def test_default_end_is_newest_and_reset():
    """window() without end ends at the newest sample; reset() forgets everything."""
    r = ring.Ring(1, 4)
    r.push(array("f", [1, 2, 3, 4, 5, 6]), 6)
    assert r.total == 6 and r.filled() == 4
    assert list(r.window(array("f", bytes(8)), 2)) == [5.0, 6.0]
    r.reset()
    assert (r.total, r.filled()) == (0, 0)
    with pytest.raises(ValueError, match=r"window \[-2, 0\) is not held: the ring holds samples \[0, 0\)"):
        r.window(array("f", bytes(8)), 2)


@pytest.mark.parametrize("end,n_times,match", [
    (12, 3, r"window \[9, 12\) is not held: the ring holds samples \[2, 10\)"),
    (4, 3, r"window \[1, 4\) is not held"),
    (10, 9, r"window \[1, 10\) is not held"),
])
def test_window_not_held(end, n_times, match):
    """A window reaching past the newest or before the oldest held sample is refused."""
    r = ring.Ring(1, 8)
    r.push(array("f", range(10)), 10)
    with pytest.raises(ValueError, match=match):
        r.window(array("f", bytes(4 * n_times)), n_times, end)


def test_argument_errors():
    """Short buffers and channel mismatches name the sizes involved."""
    r = ring.Ring(2, 8)
    with pytest.raises(ValueError, match="buf has 5 values, push of 3 samples x 2 channels from offset 0 needs 6"):
        r.push(array("f", range(5)), 3)
    with pytest.raises(ValueError, match="buf has 3 channels, the ring 2"):
        r.push_channel_major(array("f", range(9)), 3, 3)
    r.push(array("f", range(8)), 4)
    with pytest.raises(ValueError, match="dst has 5 values, a 2 x 3 window needs 6"):
        r.window(array("f", range(5)), 3)
    with pytest.raises(ValueError, match="kernel must be one of auto, plain, viper, got 'fast'"):
        ring.Ring(2, 8, kernel="fast")


def test_copy_f32():
    """copy_f32 copies n values between offsets."""
    src = array("f", range(10))
    dst = array("f", bytes(40))
    ring.copy_f32(src, 3, dst, 5, 4)
    assert list(dst[5:9]) == [3.0, 4.0, 5.0, 6.0] and dst[4] == 0 and dst[9] == 0


_MPY_CODE = """
import gc, json, micropython
from array import array
import ring

N_CH = %d
CAP = %d
PUSHES = %s

def run(kernel, channel_major):
    r = ring.Ring(N_CH, CAP, kernel=kernel)
    total = sum(PUSHES)
    out = []
    t = 0
    w = array('f', bytes(4 * N_CH * 20))
    for n in PUSHES:
        if channel_major:
            buf = array('f', [1000.0 * c + t + i for c in range(N_CH) for i in range(n)])
            r.push_channel_major(buf, N_CH, n)
        else:
            buf = array('f', [1000.0 * c + t + i for i in range(n) for c in range(N_CH)])
            r.push(buf, n)
        t += n
        for end in (t, t - 5):
            if end - 20 >= t - r.filled():
                out.append([end, list(r.window(w, 20, end))])
    return out

def alloc(kernel):
    r = ring.Ring(32, 500, kernel=kernel)
    buf = array('f', bytes(4 * 32 * 25))
    w = array('f', bytes(4 * 32 * 250))
    r.push(buf, 25)
    r.window(w, 20)
    gc.collect()
    a0 = gc.mem_alloc()
    for i in range(100):
        r.push(buf, 25)
        if i >= 10:
            r.window(w, 250)
    gc.collect()
    grew = gc.mem_alloc() - a0
    locked = 'no'
    if kernel == 'viper':
        micropython.heap_lock()  # any allocation now raises MemoryError
        try:
            for i in range(50):
                r.push(buf, 25)
                r.window(w, 250, r.total - 3)
                ring.copy_f32(buf, 0, w, 7, 100)
        finally:
            micropython.heap_unlock()
        locked = 'yes'
    return grew, locked

print(ring._V is not None)
for kernel in ('plain', 'viper'):
    for cm in (False, True):
        print(json.dumps(run(kernel, cm)))
for kernel in ('plain', 'viper'):
    print(kernel, *alloc(kernel))
""" % (N_CH, CAP, PUSHES)


def test_ring_under_micropython():
    """Under MicroPython both kernels give CPython's windows; viper pushes and windows allocate nothing."""
    lines = run_micropython(_MPY_CODE, heapsize="512K").strip().splitlines()
    assert lines[0] == "True"  # the unix port compiles the viper kernels
    _, ref = _run(ring.Ring(N_CH, CAP), PUSHES)
    ref = [[end, vals] for end, vals in ref]
    for line in lines[1:5]:
        assert json.loads(line) == ref
    # plain loops box floats (garbage, collected); neither keeps memory
    assert lines[5].split()[:2] == ["plain", "0"]
    assert lines[6].split() == ["viper", "0", "yes"]
