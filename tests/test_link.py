"""Serial link (firmware_py/link_serial.py) and the host's HelmetLink (host_tools/link.py).

The device side runs for real: SerialLink under the MicroPython unix port and CPython on
pipes and pseudo-terminals, and tests/link_device.py (a small serve loop) as the virtual
helmet's main.py, talked to with pyserial exactly like a board on /dev/ttyUSB0.
"""

from __future__ import annotations

import binascii
import math
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import tty

import numpy as np
import pytest
import serial

from painhelm.firmware import wire
from painhelm.host_tools.link import HelmetLink, LinkError, LinkTimeout
from painhelm.host_tools.transport import SerialTransport
from painhelm.host_tools.virtual_helmet import VirtualHelmet

from .link_device import MSG_ECHO
from .mpy import FIRMWARE, REPO, micropython_exe

TESTS = REPO / "tests"


class LossyPort:
    """A pyserial-like wrapper that loses chosen frames on the way in (a lossy link)."""

    def __init__(self, inner, drop_types=(wire.MSG_ACK,), count=1):
        self.inner = inner
        self.drop_types = drop_types
        self.left = count
        self.dropped: list[tuple[int, int]] = []
        self._line = bytearray()
        self._out = bytearray()

    @property
    def timeout(self):
        return self.inner.timeout

    @property
    def in_waiting(self) -> int:
        return len(self._out) + self.inner.in_waiting

    def write(self, data: bytes) -> int:
        return self.inner.write(data)

    def _filter(self, data: bytes) -> None:
        self._line += data
        while (nl := self._line.find(b"\n")) >= 0:
            line = bytes(self._line[: nl + 1])
            del self._line[: nl + 1]
            if self.left and line.startswith(b"$"):
                try:
                    kind, seq, _ = wire.decode_frame(binascii.a2b_base64(line[1:-1]))
                except (ValueError, wire.FrameError):
                    kind = seq = None
                if kind in self.drop_types:
                    self.left -= 1
                    self.dropped.append((kind, seq))
                    continue
            self._out += line

    def read(self, size: int = 1) -> bytes:
        if not self._out:
            self._filter(self.inner.read(max(1, self.inner.in_waiting)))
        data = bytes(self._out[:size])
        del self._out[:size]
        return data


# ---------------------------------------------------------------------- SerialLink alone
_ECHO_PROGRAM = """
import sys, time
import link_serial
if hasattr(time, "ticks_ms"):
    now = time.ticks_ms
    def sleep_ms(ms): time.sleep_ms(ms)
else:
    def now(): return int(time.monotonic() * 1000)
    def sleep_ms(ms): time.sleep(ms / 1000)
link = link_serial.SerialLink(rx_size=64)
got = bytearray()
idle = polls = 0
t0 = now()
link.write(b"READY\\n")
while got.count(b"\\n") < 2 and now() - t0 < 10000:
    data = link.poll()
    polls += 1
    if data is None:
        idle += 1
        sleep_ms(1)
    else:
        assert len(data) <= 64
        got += data
link.write(("RESULT %d %d %s\\n" % (idle, polls, bytes(got).hex())).encode())
link.close()
"""


def _spawn(impl: str, code: str, use_pty: bool):
    """Start ``code`` under ``impl`` with stdin/stdout a pipe pair or a pty; return (proc, wfd, rfd)."""
    if impl == "micropython":
        argv = [micropython_exe(), "-X", "heapsize=256K", "-c", code]
    else:
        argv = [sys.executable, "-c", code]
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:{TESTS}", PYTHONPATH=f"{FIRMWARE}:{TESTS}")
    if use_pty:
        master, slave = pty.openpty()
        tty.setraw(slave)
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=str(FIRMWARE))
        os.close(slave)
        return proc, master, master
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=str(FIRMWARE))
    return proc, proc.stdin.fileno(), proc.stdout.fileno()


def _read_until(fd: int, ending: bytes, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while ending not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {ending!r}; got {data[-400:]!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"the program ended before {ending!r}; it printed {data[-400:]!r}"
            data += chunk
    return data


@pytest.mark.parametrize("use_pty", [True, False], ids=["pty", "pipe"])
@pytest.mark.parametrize("impl", ["micropython", "cpython"])
def test_serial_link_poll_is_non_blocking(impl, use_pty):
    """poll() returns None while nothing arrives and hands over bytes in rx_size pieces (pty: the
    unix port's VMIN=0 path; pipe: the byte-by-byte path a board's console takes)."""
    proc, wfd, rfd = _spawn(impl, _ECHO_PROGRAM, use_pty)
    try:
        _read_until(rfd, b"READY\n")
        os.write(wfd, b"hello\n")
        time.sleep(0.3)  # the device keeps polling meanwhile
        line = bytes(range(32, 127)) * 3 + b"\n"
        os.write(wfd, line)
        out = _read_until(rfd, b"RESULT", 10.0)
        while b"\n" not in out[out.index(b"RESULT"):]:
            out += _read_until(rfd, b"\n", 5.0)
        _, idle, polls, hexdata = out[out.index(b"RESULT"):].split()[:4]
        assert bytes.fromhex(hexdata.decode()) == b"hello\n" + line
        assert int(idle) > 50  # it kept polling (no blocking read) while the host was silent
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        for fd in {wfd, rfd}:
            if use_pty:
                os.close(fd)


def test_serial_link_on_a_tty_device_path():
    """On CPython a device path is opened with pyserial, non-blocking, like /dev/serial0 on a Pi."""
    sys.path.insert(0, str(FIRMWARE))
    try:
        import link_serial
    finally:
        sys.path.remove(str(FIRMWARE))
    master, slave = pty.openpty()
    try:
        link = link_serial.SerialLink(os.ttyname(slave), baudrate=115200, rx_size=16)
        t0 = time.monotonic()
        assert link.poll() is None and time.monotonic() - t0 < 0.05
        os.write(master, b"x" * 40)
        time.sleep(0.05)
        got = b""
        while (d := link.poll()) is not None:
            assert len(d) <= 16
            got += d
        assert got == b"x" * 40 and link.connected
        link.write(b"line\n")
        assert _read_until(master, b"\n", 2.0) == b"line\n"
        link.close()
        assert not link.connected
    finally:
        os.close(master)
        os.close(slave)
    with pytest.raises(ValueError, match="rx_size"):
        link_serial.SerialLink(rx_size=0)


# ---------------------------------------------------------------------- the virtual helmet
@pytest.fixture(scope="module")
def vhelmet(tmp_path_factory):
    """A virtual helmet whose main.py serves tests/link_device.py over SerialLink."""
    fs = tmp_path_factory.mktemp("link_fs")
    for src in (FIRMWARE / "wire.py", FIRMWARE / "clock.py", FIRMWARE / "link_serial.py", TESTS / "link_device.py"):
        shutil.copy(src, fs / src.name)
    (fs / "main.py").write_text("import link_device\nlink_device.main_serial(heartbeat_ms=50, run_ms=600000)\n")
    with VirtualHelmet(fs, heapsize="512K") as vh:
        yield vh


@pytest.fixture
def vlink(vhelmet):
    ser = serial.Serial(vhelmet.port, timeout=0.05)
    link = HelmetLink(ser, timeout=5.0)
    link.wait_ready(timeout=20.0)
    yield link
    ser.close()


@pytest.mark.e2e
def test_frames_of_every_size_cross_the_pty(vlink):
    """Echoed frames from empty to 30 kB come back intact: SerialLink under the unix port on a pty."""
    assert vlink.ping()["impl"] == "micropython"
    for n in (0, 1, 300, 5000, 30000):
        payload = (bytes(range(256)) * (n // 256 + 1))[:n]
        kind, data = vlink.request(MSG_ECHO, payload)
        assert (kind, data) == (MSG_ECHO, payload)
    assert vlink.bad_frames == 0


@pytest.mark.e2e
def test_device_keeps_running_while_a_frame_is_half_sent(vlink):
    """Heartbeats keep coming while the host is silent or has sent half a line: poll never blocks."""
    vlink.poll()
    n0 = len(vlink.heartbeats)
    line = wire.encode_line(MSG_ECHO, 4242, b"half and half")
    vlink.serial.write(line[:10])
    time.sleep(0.4)
    assert vlink.last_heartbeat_age() < 0.2
    assert len(vlink.heartbeats) - n0 >= 4  # 50 ms period
    vlink.serial.write(line[10:])
    kind, seq, data = vlink.receive(seq=4242)
    assert (kind, data) == (MSG_ECHO, b"half and half")
    hb = vlink.heartbeats[-1]
    assert hb["state"] in (wire.STATE_IDLE, wire.STATE_STREAMING) and hb["host_time"] <= time.monotonic()


@pytest.mark.e2e
def test_command_retry_after_lost_ack_runs_once(vlink):
    """The first ACK is lost: the host resends the SAME seq and the device answers from its log."""
    before = vlink.ping()
    lossy = LossyPort(vlink.serial, drop_types=(wire.MSG_ACK,), count=1)
    vlink.serial = lossy
    assert vlink.command(wire.CMD_START, retries=3, timeout=0.5) == ""
    vlink.serial = lossy.inner
    after = vlink.ping()
    assert len(lossy.dropped) == 1
    assert after["runs"].get("1", 0) - before["runs"].get("1", 0) == 1  # executed once
    assert after["replays"] - before["replays"] == 1  # the retry was answered from the log
    assert after["state"] == wire.STATE_STREAMING


@pytest.mark.e2e
def test_refused_commands_raise_with_the_device_text(vlink):
    """ACK_FAILED and ACK_UNKNOWN become LinkError carrying the device's reason."""
    with pytest.raises(LinkError, match="command failed.*nothing to reset"):
        vlink.command(wire.CMD_RESET)
    with pytest.raises(LinkError, match="unknown command.*unknown command 42"):
        vlink.command(42)
    assert vlink.command(wire.CMD_CONFIG, {"heartbeat_ms": 50}) == "config ['heartbeat_ms']"


@pytest.mark.e2e
def test_streamed_samples_yield_reports_that_requests_do_not_drop(vlink):
    """send_samples chunks the stream; the device's seq-0 reports wait in the queue across a request."""
    base = vlink.ping()["samples"]
    n_ch, n = 4, 100
    x = (np.arange(n)[None, :] * 0.25 + np.arange(n_ch)[:, None]).astype(np.float32)
    nxt = vlink.send_samples(x, first_index=1000 + base, max_samples=7)
    assert nxt == 1000 + base + n
    info = vlink.ping()  # a request while reports are queued
    assert info["samples"] - base == n and info["gaps"] == 0
    expected = list(range(base // 32 + 1, (base + n) // 32 + 1))  # a report per 32 samples
    got = [vlink.next_report(timeout=5.0) for _ in expected]
    assert [r["report_seq"] for r in got] == expected
    for r in got:
        assert r["level"] == 1 and r["level_q"] == [1, -2, 3] and r["location_q"] == [4, -5]
        # ood carries the last sample of the chunk that completed the window: the data arrived intact
        last = r["sample_index"] - 1 - (1000 + base)
        assert r["ood"] == pytest.approx(float(x[-1, last]))
    assert vlink.lost_reports == 0
    # a big stream goes in chunks of at most MAX_PAYLOAD
    wide = np.ones((8, 5000), np.float32)
    vlink.send_samples(wide, first_index=nxt)
    assert vlink.ping()["samples"] - base == n + 5000


@pytest.mark.e2e
def test_raw_repl_is_reachable_after_the_serve_loop(vhelmet, vlink):
    """Ctrl-C still breaks into the firmware (base64 carries no 0x03) and the REPL works on the pty."""
    vlink.serial.close()
    t = SerialTransport(vhelmet.port)
    try:
        t.enter_raw_repl()
        assert t.exec_("print(6 * 7)").strip() == b"42"
    finally:
        t.close()


# ---------------------------------------------------------------------- HelmetLink alone
def _loop():
    return serial.serial_for_url("loop://", timeout=0.01)


def _report_line(rs):
    payload = wire.pack_report(rs, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, [], [])
    return wire.encode_line(wire.MSG_REPORT, 0, payload)


def test_unsolicited_frames_are_queued_across_requests():
    """Reports, heartbeats, the ready PONG and error frames (seq 0) survive a request; error
    frames, seq 0 or stale, are also listed in device_errors."""
    port = _loop()
    link = HelmetLink(port, timeout=1.0)
    port.write(_report_line(1) + wire.encode_line(wire.MSG_HEARTBEAT, 0, wire.pack_heartbeat(5, 1, 0, 1, 100))
               + wire.encode_line(wire.MSG_PONG, 0, b'{"ready": 1}') + _report_line(4)
               + wire.encode_line(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, "crc"))
               + wire.encode_line(wire.MSG_ERROR, 77, wire.pack_error(wire.ERR_BAD_PAYLOAD, "late")))
    assert link.request(wire.MSG_PING)[0] == wire.MSG_PING  # loop:// echoes the request itself
    assert [link.next_report(0.1)["report_seq"] for _ in range(2)] == [1, 4]
    assert link.lost_reports == 2
    assert link.receive(0.1, seq=0)[0:2] == (wire.MSG_PONG, 0)
    kind, _, payload = link.receive(0.1, seq=0)
    assert kind == wire.MSG_ERROR and wire.unpack_error(payload) == (wire.ERR_BAD_FRAME, "crc")
    assert list(link.device_errors) == [(0, wire.ERR_BAD_FRAME, "crc"), (77, wire.ERR_BAD_PAYLOAD, "late")]
    assert len(link.heartbeats) == 1 and link.heartbeats[0]["t_ms"] == 5
    assert 0 <= link.last_heartbeat_age() < 5
    with pytest.raises(LinkTimeout, match="no report"):
        link.next_report(timeout=0.05)


def test_unsolicited_queue_is_bounded():
    """With nobody reading, the oldest unsolicited frames are dropped and counted."""
    port = _loop()
    link = HelmetLink(port, timeout=1.0, max_queue=4)
    assert link.last_heartbeat_age() == math.inf
    port.write(b"".join(_report_line(i) for i in range(1, 11)))
    time.sleep(0.05)
    link.poll()
    assert link.dropped == 6 and link.next_report(0.1)["report_seq"] == 7


class _DeafPort:
    """Swallows everything it is sent and never answers."""

    timeout = 0.01
    in_waiting = 0

    def __init__(self):
        self.sent: list[bytes] = []

    def write(self, data):
        self.sent.append(bytes(data))

    def read(self, size=1):
        time.sleep(self.timeout)
        return b""


def test_send_samples_chunks_respect_max_payload():
    """Chunks are sample-major, consecutive, SAMPLES_PER_FRAME long (the helmet's FIFO) and
    never exceed MAX_PAYLOAD (which is the limit for very many channels)."""
    port = _DeafPort()
    link = HelmetLink(port, timeout=1.0)
    n_ch, n = 3, 6000
    x = np.random.default_rng(0).normal(size=(n_ch, n)).astype(np.float32)
    assert link.send_samples(x, first_index=2**32 - 10) == n - 10
    frames = []
    p = wire.LineParser(lambda t, s, pl: frames.append((t, bytes(pl))))
    for line in port.sent:
        p.feed(line)
    got, idx = [], 2**32 - 10
    for t, pl in frames:
        ch, k, first, off = wire.unpack_samples_header(pl)
        assert t == wire.MSG_SAMPLES and ch == n_ch and len(pl) <= wire.MAX_PAYLOAD and first == idx & 0xFFFFFFFF
        idx += k
        got.append(np.frombuffer(pl[off:], "<f4").reshape(k, n_ch))
    assert len(frames) == math.ceil(n / wire.SAMPLES_PER_FRAME)
    wide = HelmetLink(_DeafPort(), timeout=1.0)
    n_ch = 300  # 1200 bytes a sample: fewer than SAMPLES_PER_FRAME fit in MAX_PAYLOAD
    fit = (wire.MAX_PAYLOAD - 8) // (4 * n_ch)
    assert fit < wire.SAMPLES_PER_FRAME
    wide.send_samples(np.zeros((n_ch, 100), np.float32), 0)
    sizes = []
    wire.LineParser(lambda t, s, pl: sizes.append(wire.unpack_samples_header(pl)[1])).feed(b"".join(wide.serial.sent))
    assert sizes == [fit] * (100 // fit) + [100 % fit]
    assert np.array_equal(np.concatenate(got).T, x)
    with pytest.raises(ValueError, match="shape"):
        link.send_samples(np.zeros(5), 0)
    with pytest.raises(ValueError, match="do not fit"):
        link.send_samples(np.zeros((9000, 1)), 0)


def test_command_retries_with_the_same_seq_then_gives_up():
    """Without an ACK the command is sent 1 + retries times, all with one seq, then LinkTimeout."""
    port = _DeafPort()
    link = HelmetLink(port)
    with pytest.raises(LinkTimeout, match="no ACK.*3 tries"):
        link.command(wire.CMD_STOP, retries=2, timeout=0.05)
    frames = []
    p = wire.LineParser(lambda t, s, pl: frames.append((t, s, bytes(pl))))
    for line in port.sent:
        p.feed(line)
    assert len(frames) == 3 and len({f[1] for f in frames}) == 1 and frames[0][1] != 0
    assert {(f[0], f[2]) for f in frames} == {(wire.MSG_COMMAND, wire.pack_command(wire.CMD_STOP))}
