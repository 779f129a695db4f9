"""Sample sources: link frames, recordings played back, the ADS1299 (simulated), BrainFlow's synthetic board."""

import json
import struct
import time
from array import array

import numpy as np
import pytest

from painhelm.firmware import ads1299_sim, recording, ring, source_ads1299, source_brainflow, source_playback, sources
from painhelm.host_tools.recording import read_recording, recording_from_raw, write_recording

from .mpy import run_micropython

SFREQ = 250.0


def _payload(first, data):
    """A MSG_SAMPLES payload of ``data`` (n_samples, n_ch) starting at absolute index ``first``."""
    data = np.asarray(data, dtype="<f4")
    return struct.pack("<HHI", data.shape[1], data.shape[0], first) + data.tobytes()


def _signal(n_ch=4, n_times=500, seed=0):
    """Seeded noise plus a 10 Hz sine on channel 0, in µV."""
    rng = np.random.default_rng(seed)
    x = 5 * rng.standard_normal((n_ch, n_times))
    x[0] += 30 * np.sin(2 * np.pi * 10 * np.arange(n_times) / SFREQ)
    return x


def _drain(src, max_n=7, limit=10000):
    """Everything read() gives until it gives 0, as (n_samples, n_ch)."""
    buf = array("f", bytes(4 * max_n * src.n_ch))
    out = []
    for _ in range(limit):
        n = src.read(buf, max_n)
        if n == 0:
            break
        out.append(np.array(buf[:n * src.n_ch]).reshape(n, src.n_ch))
    return np.concatenate(out) if out else np.zeros((0, src.n_ch))


# --- link ---------------------------------------------------------------------------------

def test_link_source_passes_samples_and_counts_gaps():
    """Frames come out in order; a jump in first_index counts the missing samples as dropped."""
    src = sources.LinkSource(3, SFREQ, capacity=100)
    src.start()
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    src.feed(_payload(1000, x[:5]))
    src.feed(_payload(1005, x[5:10]))
    src.feed(_payload(1014, x[10:20]))  # 4 samples lost on the link
    assert src.dropped == 4 and src.available() == 20
    np.testing.assert_array_equal(_drain(src), x)
    assert src.read(array("f", bytes(12)), 1) == 0


def test_link_source_overrun_keeps_newest():
    """A full FIFO drops its oldest samples and counts them; the index wraps at 2**32 without a gap."""
    src = sources.LinkSource(2, SFREQ, capacity=8)
    src.start()
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    src.feed(_payload(2**32 - 6, x[:6]))
    src.feed(_payload(0, x[6:12]))  # wrapped index: no gap; FIFO overruns by 4
    assert src.dropped == 4
    np.testing.assert_array_equal(_drain(src, 3), x[4:12])
    src.feed(_payload(6, x[12:20]))
    src.feed(_payload(3, x[:2]))  # backwards: a restarted stream, not a gap (but the full FIFO loses 2)
    assert src.resyncs == 1 and src.dropped == 4 + 2
    np.testing.assert_array_equal(_drain(src), np.concatenate([x[14:20], x[:2]]))


def test_link_source_rejects_bad_frames_and_ignores_when_stopped():
    """A frame of another channel count or size is a ValueError; frames fed while stopped are dropped."""
    src = sources.LinkSource(2, SFREQ, capacity=8)
    with pytest.raises(ValueError, match="samples frame has 3 channels, the source 2"):
        src.feed(_payload(0, np.zeros((2, 3))))
    with pytest.raises(ValueError, match="samples payload is 17 bytes, expected 16 for 1 samples x 2 ch"):
        src.feed(_payload(0, np.zeros((1, 2)))[:-3] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="header needs 8"):
        src.feed(b"\1\0")
    src.feed(_payload(0, np.ones((2, 2))))
    assert src.available() == 0
    with pytest.raises(ValueError, match="buf has 3 values, 2 samples x 2 channels need 4"):
        src.start()
        src.feed(_payload(0, np.ones((2, 2))))
        src.read(array("f", bytes(12)), 2)


def test_link_source_rejects_bad_payloads():
    """A truncated or header-less samples payload is a ValueError naming the sizes."""
    src = sources.LinkSource(2, SFREQ, 4)
    src.start()
    with pytest.raises(ValueError, match="samples payload is 12 bytes, expected 16 for 1 samples x 2 ch"):
        src.feed(_payload(7, [[1.0, 2.0]])[:-4])
    with pytest.raises(ValueError, match="samples payload is 2 bytes, header needs 8"):
        src.feed(b"\1\0")


# --- recordings and playback ------------------------------------------------------------

def test_recording_round_trip(tmp_path):
    """The host writes, the helmet's reader and the host reader read back the same µV (f4 exact, i2 within scale/2)."""
    x = _signal()
    f4 = write_recording(tmp_path / "a.phr", x, SFREQ, ["Fz", "Cz", "Pz", "Oz"])
    i2 = write_recording(tmp_path / "b.phr", x, SFREQ, dtype="i2")
    back, head = read_recording(f4)
    np.testing.assert_array_equal(back, x.astype(np.float32))
    assert head["ch_names"] == ["Fz", "Cz", "Pz", "Oz"] and head["sfreq"] == SFREQ and head["dtype"] == "f4"
    back2, head2 = read_recording(i2)
    assert np.max(np.abs(back2 - x)) <= head2["scale"] / 2 * 1.001
    for path, ref in ((f4, back), (i2, back2)):
        with recording.Reader(str(path)) as r:
            assert (r.n_ch, r.n_samples, r.sfreq) == (4, 500, SFREQ)
            buf = array("f", bytes(4 * 4 * 64))
            got = []
            while True:
                n = r.readinto(buf, 64)
                if not n:
                    break
                got.append(np.array(buf[:4 * n]).reshape(n, 4))
            np.testing.assert_array_equal(np.concatenate(got).T, ref)  # same float32 bits as the host


def test_recording_cut_short_and_bad_files(tmp_path):
    """A truncated file plays its whole samples; a foreign file is a RecordingError naming why."""
    p = write_recording(tmp_path / "a.phr", _signal(n_times=100), SFREQ)
    raw = p.read_bytes()
    (tmp_path / "cut.phr").write_bytes(raw[:-10])
    with recording.Reader(str(tmp_path / "cut.phr")) as r:
        assert r.n_samples == 99
    (tmp_path / "bad.phr").write_bytes(b'{"magic": "other"}\n1234')
    with pytest.raises(recording.RecordingError, match="not a painhelm recording"):
        recording.Reader(str(tmp_path / "bad.phr"))
    (tmp_path / "v9.phr").write_bytes(raw.replace(b'"version": 1', b'"version": 9', 1))
    with pytest.raises(recording.RecordingError, match="recording version 9, this firmware reads version 1"):
        recording.Reader(str(tmp_path / "v9.phr"))
    with pytest.raises(ValueError, match="data_uV must have shape"):
        write_recording(tmp_path / "x.phr", np.zeros(10), SFREQ)
    with pytest.raises(ValueError, match="dtype must be one of 'f4', 'i2', got 'f8'"):
        write_recording(tmp_path / "x.phr", np.zeros((1, 10)), SFREQ, dtype="f8")
    with pytest.raises(ValueError, match="3 samples exceed"):
        write_recording(tmp_path / "x.phr", np.array([[0.0, 5.0, -5.0, 9.0]]), SFREQ, dtype="i2", scale=1e-4)


def test_recording_from_raw(tmp_path):
    """An MNE Raw (volts) becomes a recording of its EEG channels in µV."""
    import mne

    x = _signal(n_ch=3)
    info = mne.create_info(["C3", "C4", "EOG"], SFREQ, ["eeg", "eeg", "eog"])
    raw = mne.io.RawArray(x * 1e-6, info, verbose=False)
    back, head = read_recording(recording_from_raw(raw, tmp_path / "r.phr"))
    assert head["ch_names"] == ["C3", "C4"]
    np.testing.assert_allclose(back, x[:2], rtol=1e-6)
    with pytest.raises(ValueError, match="'X1' is neither a channel name nor a channel type"):
        recording_from_raw(raw, tmp_path / "s.phr", picks=["X1"])


def test_playback_fast_and_loop(tmp_path):
    """realtime=False gives max_n per read; without loop it finishes, with loop it starts over."""
    x = _signal(n_times=50)
    p = str(write_recording(tmp_path / "a.phr", x, SFREQ, ["a", "b", "c", "d"]))
    src = source_playback.PlaybackSource(p, realtime=False)
    assert (src.n_ch, src.sfreq, src.ch_names) == (4, SFREQ, ["a", "b", "c", "d"])
    src.start()
    np.testing.assert_array_equal(_drain(src).T, x.astype(np.float32))
    assert src.finished and src.read(array("f", bytes(64)), 4) == 0
    src.close()
    src = source_playback.PlaybackSource(p, realtime=False, loop=True)
    src.start()
    got = _drain(src, max_n=7, limit=25)  # a read stops at the end of the file: 7 x 7 + 1 per pass
    assert len(got) == 3 * 50 + 7
    np.testing.assert_array_equal(got.T, np.tile(x.astype(np.float32), 4)[:, :157])
    src.close()


def test_playback_real_time_pacing_and_backlog(tmp_path):
    """In real time a read gets what the clock says is due; a reader behind by more than max_backlog loses the oldest."""
    x = _signal(n_times=500)
    p = str(write_recording(tmp_path / "a.phr", x, SFREQ))
    clk = ads1299_sim.FakeClock()  # milliseconds here
    src = source_playback.PlaybackSource(p, loop=True, max_backlog=50, clock=clk.now)
    src.start()
    buf = array("f", bytes(4 * 4 * 100))
    assert src.read(buf, 100) == 0
    clk.advance_us(100)  # 100 ms: 25 samples due
    assert src.read(buf, 100) == 25 and src.read(buf, 100) == 0
    clk.advance_us(6)  # 1.5 samples: one now, the half carried over
    assert src.read(buf, 100) == 1
    clk.advance_us(2)
    assert src.read(buf, 100) == 1
    clk.advance_us(1000)  # 250 due, backlog 50: 200 lost
    assert src.read(buf, 100) == 50 and src.dropped == 200
    np.testing.assert_array_equal(np.array(buf[:200]).reshape(50, 4).T, x[:, 227:277].astype(np.float32))


def test_playback_in_real_time(tmp_path):
    """Against the real clock playback delivers sfreq samples per second."""
    p = str(write_recording(tmp_path / "a.phr", _signal(n_times=100), SFREQ))
    src = source_playback.PlaybackSource(p, loop=True)
    buf = array("f", bytes(4 * 4 * 64))
    t0 = time.monotonic()
    src.start()
    n = 0
    while time.monotonic() - t0 < 0.2:
        n += src.read(buf, 64)
        time.sleep(0.01)
    t_a = time.monotonic() - t0
    n += src.read(buf, 64)  # everything due by a moment between t_a and t_b
    t_b = time.monotonic() - t0
    assert 250 * t_a - 2 <= n <= 250 * t_b + 1 and src.dropped == 0  # ticks_ms: 1 ms steps
    src.close()


# --- make_source ---------------------------------------------------------------------------

def test_make_source_kinds_and_errors(tmp_path):
    """make_source builds each kind from its config and refuses unknown kinds/keys and mismatched sources."""
    p = str(write_recording(tmp_path / "a.phr", _signal(n_times=20), SFREQ))
    assert isinstance(sources.make_source({"kind": "link"}, 4, SFREQ), sources.LinkSource)
    assert sources.make_source({"kind": "link"}, 4, SFREQ).capacity == sources.LINK_CAPACITY
    pb = sources.make_source({"kind": "playback", "path": p, "loop": True}, 4, SFREQ)
    assert isinstance(pb, source_playback.PlaybackSource) and pb.loop
    pb.close()
    ads = sources.make_source({"kind": "ads1299", "sim": True, "n_devices": 4, "gain": 12, "settle_ms": 0}, 32, SFREQ)
    assert isinstance(ads, source_ads1299.ADS1299Source) and ads.n_ch == 32 and ads.device.gain == 12
    assert ads.device.fifo == 125  # half a second buffered by the DRDY interrupt
    with pytest.raises(ValueError, match="source kind must be one of 'link', 'playback', 'ads1299', 'brainflow', got 'usb'"):
        sources.make_source({"kind": "usb"}, 4, SFREQ)
    with pytest.raises(ValueError, match="source 'link' takes capacity, got unknown key 'path'"):
        sources.make_source({"kind": "link", "path": p}, 4, SFREQ)
    with pytest.raises(ValueError, match=r"source 'playback' gives 4 channels at 250.0 Hz, the bundle expects 8 channels at 250.0 Hz"):
        sources.make_source({"kind": "playback", "path": p}, 8, SFREQ)
    with pytest.raises(ValueError, match=r"gives 4 channels at 250.0 Hz, the bundle expects 4 channels at 128.0 Hz"):
        sources.make_source({"kind": "playback", "path": p}, 4, 128.0)
    with pytest.raises(ValueError, match="gives 8 channels at 250.0 Hz, the bundle expects 32"):
        sources.make_source({"kind": "ads1299", "sim": True, "settle_ms": 0}, 32, SFREQ)
    with pytest.raises(ValueError, match="samples at one of 16000, 8000, 4000, 2000, 1000, 500, 250 Hz, the bundle's sfreq is 128.0"):
        sources.make_source({"kind": "ads1299", "sim": True}, 8, 128.0)
    with pytest.raises(ValueError, match="only a MicroPython board has; give \"sim\": true"):
        sources.make_source({"kind": "ads1299", "spi": 1, "cs": 5, "drdy": 4}, 8, SFREQ)


def test_ads1299_source_into_ring():
    """The simulated chain's samples go through ADS1299Source into a Ring as the app will chain them."""
    clk = ads1299_sim.FakeClock()
    from painhelm.firmware import ads1299

    sim = ads1299_sim.SimADS1299(n_devices=2, clock=clk.now)
    src = source_ads1299.ADS1299Source(ads1299.ADS1299(sim.spi, sim.cs, sim.drdy, n_devices=2, settle_ms=0,
                                                clock=clk.now), ch_names=["c%d" % i for i in range(16)])
    r = ring.Ring(16, 300)
    buf = array("f", bytes(4 * 16 * 4))
    src.start()
    for _ in range(250):
        clk.advance_us(4000)
        r.push(buf, src.read(buf, 4))
    assert r.total == 250 and src.dropped == 0
    w = r.window(array("f", bytes(4 * 16 * 250)), 250)
    x = np.array(w).reshape(16, 250)
    f = np.fft.rfftfreq(250, 1 / 250)
    # channel c carries a (4 + c % 20) Hz sine
    assert [int(f[np.argmax(np.abs(np.fft.rfft(x[c])))]) for c in range(16)] == [4 + c for c in range(16)]
    src.stop()


# --- BrainFlow -----------------------------------------------------------------------------

_BRAINFLOW_WARNING = "ignore:pkg_resources is deprecated:UserWarning"  # brainflow 5.23's own import


@pytest.mark.filterwarnings(_BRAINFLOW_WARNING)
def test_brainflow_synthetic_board():
    """BrainFlow's synthetic board through the real BrainFlow code path: 16 EEG channels, 250 Hz, µV, non-blocking reads."""
    pytest.importorskip("brainflow")
    src = sources.make_source({"kind": "brainflow", "board_id": -1}, 16, 250.0)
    assert isinstance(src, source_brainflow.BrainFlowSource) and src.n_ch == 16 and src.sfreq == 250.0
    assert src.ch_names[:3] == ["Fz", "C3", "Cz"]
    buf = array("f", bytes(4 * 16 * 64))
    src.start()
    try:
        t0 = time.monotonic()
        assert src.read(buf, 64) <= 64  # returns at once, with whatever is there
        n = 0
        got = []
        while time.monotonic() - t0 < 0.6:
            k = src.read(buf, 64)
            n += k
            got.append(np.array(buf[:16 * k]).reshape(k, 16))
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
    finally:
        src.stop()
    x = np.concatenate(got)
    # BrainFlow's board thread streams in real time (loosely, on a busy machine)
    assert 0.5 * 250 * elapsed <= n <= 250 * elapsed + 30 and src.dropped == 0
    assert np.all(np.isfinite(x)) and 1 < np.abs(x).max() < 5000  # µV, not V
    assert src.read(buf, 64) == 0  # stopped


@pytest.mark.filterwarnings(_BRAINFLOW_WARNING)
def test_brainflow_mismatch_and_params():
    """A BrainFlow board with another channel count is refused before a session opens; unknown params are named."""
    pytest.importorskip("brainflow")
    with pytest.raises(ValueError, match="source 'brainflow' gives 16 channels at 250.0 Hz, the bundle expects 8"):
        sources.make_source({"kind": "brainflow", "board_id": -1}, 8, 250.0)
    with pytest.raises(ValueError, match="params: BrainFlowInputParams has no field 'baud'"):
        source_brainflow.BrainFlowSource(-1, params={"baud": 115200})


# --- MicroPython ---------------------------------------------------------------------------

_MPY_CODE = """
import gc, json, micropython, struct
from array import array
import sources, source_playback, ads1299_sim

def link():
    src = sources.LinkSource(4, 250.0, 64)
    src.start()
    buf = array('f', bytes(4 * 4 * 16))
    out = []
    for k in range(6):
        n = 10 + k
        first = 1000 + 12 * k  # each frame 12 samples after the last: gaps of 2, 1, 0, ...
        vals = [float(first * 10 + i) for i in range(n * 4)]
        src.feed(struct.pack('<HHI', 4, n, first) + struct.pack('<%df' % len(vals), *vals))
        while True:
            got = src.read(buf, 16)
            if not got:
                break
            out.extend(buf[:4 * got])
    # allocation: feed frames, then read with the heap locked
    frame = struct.pack('<HHI', 4, 16, 0) + bytes(4 * 4 * 16)
    src.feed(frame)
    gc.collect()
    micropython.heap_lock()
    try:
        for _ in range(4):
            src.read(buf, 4)
    finally:
        micropython.heap_unlock()
    return out, src.dropped

def playback(path):
    src = source_playback.PlaybackSource(path, realtime=False, loop=True)
    src.start()
    buf = array('f', bytes(4 * 4 * 7))
    out = []
    for _ in range(10):
        n = src.read(buf, 7)
        out.extend(buf[:4 * n])
    src.read(buf, 7)
    gc.collect()
    micropython.heap_lock()
    try:
        for _ in range(100):
            src.read(buf, 7)
    finally:
        micropython.heap_unlock()
    src.close()
    return out

def paced(path):
    clk = ads1299_sim.FakeClock()
    src = source_playback.PlaybackSource(path, loop=True, max_backlog=50, clock=clk.now)
    src.start()
    buf = array('f', bytes(4 * 4 * 64))
    n = []
    for step in (100, 6, 2, 1000):
        clk.advance_us(step)
        n.append(src.read(buf, 64))
    return n, src.dropped

out, dropped = link()
print(json.dumps(out))
print(dropped)
print(json.dumps(playback('a.phr')))
print(json.dumps(paced('a.phr')))
"""


def test_sources_under_micropython(tmp_path):
    """Under MicroPython: link and playback give CPython's samples, reads allocate nothing, pacing matches."""
    x = _signal(n_times=50)
    write_recording(tmp_path / "a.phr", x, SFREQ)
    lines = run_micropython(_MPY_CODE, cwd=tmp_path, heapsize="256K").strip().splitlines()
    got = np.array(json.loads(lines[0]))
    ref = np.concatenate([1000 * 10 + 120 * k + np.arange((10 + k) * 4) for k in range(6)])
    np.testing.assert_array_equal(got, ref)
    assert int(lines[1]) == 2 + 1 + 0 + 0 + 0  # gaps between frames: 12 - 10, 12 - 11
    # reads of 7 stop at the end of the 50-sample file: 7 x 7 + 1, then 7 + 7 from the start
    np.testing.assert_array_equal(np.array(json.loads(lines[2])).reshape(64, 4).T,
                                  np.tile(x.astype(np.float32), 2)[:, :64])
    # as on CPython; the last read stops at the end of this shorter file (27 + 200 = 4 x 50 + 27)
    assert json.loads(lines[3]) == [[25, 1, 1, 23], 200]
