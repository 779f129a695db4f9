"""BLE link: firmware_py/link_ble.py on the simulated radio (firmware_py/ble_sim.py) against the
host's central (host_tools/ble.py).

No radio exists here. The helmet side is the real link_ble code running under the real
MicroPython unix port (and CPython), with ble_sim standing in for MicroPython's
``bluetooth`` module; the host side is the SimAir central behind the pyserial-like object
HelmetLink uses, so the same HelmetLink code is exercised as over a serial port.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from painhelm.firmware import ble_sim, link_ble, wire
from painhelm.host_tools.ble import (BleakSerial, BleDisconnectedError, BleError, SimAir, _describe,
                                     open_ble, parse_adv)
from painhelm.host_tools.link import HelmetLink, LinkError, LinkTimeout

from .link_device import MSG_ECHO, MSG_HOOK, MSG_QUIT, MSG_STALL
from .mpy import FIRMWARE, REPO, micropython_exe
from .test_link import LossyPort

IMPLS = ["micropython", "cpython"]


@pytest.fixture
def air():
    with SimAir() as a:
        yield a


class Device:
    """A helmet process serving tests/link_device.py over BleLink on the simulated air."""

    def __init__(self, impl: str, air: SimAir, name: str, **kw) -> None:
        code = "import link_device\nlink_device.main_ble(%r, %r, **%r)\n" % (name, air.address, kw)
        argv = ([micropython_exe(), "-X", "heapsize=256K", "-c", code] if impl == "micropython"
                else [sys.executable, "-c", code])
        env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:{REPO / 'tests'}",
                   PYTHONPATH=f"{FIRMWARE}:{REPO / 'tests'}")
        self.proc = subprocess.Popen(argv, env=env, cwd=str(FIRMWARE), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.name = name

    def output(self) -> str:
        self.proc.kill()
        return self.proc.communicate()[0].decode(errors="replace")

    def stop(self, link: HelmetLink | None = None) -> str:
        if link is not None:
            link.request(MSG_QUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return self.output()


@pytest.fixture
def device(air):
    """Factory of helmet processes; each is killed at the end and its output printed (shown on failure)."""
    made: list[Device] = []

    def make(impl: str, name: str = "helmet-7", **kw) -> Device:
        d = Device(impl, air, name, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc.returncode is None:
            print(f"--- helmet process ({d.name}) output:\n{d.output()}")


def _connect(air: SimAir, name: str = "helmet-7", **kw) -> tuple:
    port = air.connect(name, timeout=10.0, **kw)
    link = HelmetLink(port, timeout=5.0)
    return port, link


# ---------------------------------------------------------------------- payloads, no radio
def test_advertising_payloads_fit_and_describe_the_helmet():
    """Adv data carries flags + name, the scan response the NUS UUID; both within 31 bytes."""
    adv = link_ble.adv_payload("helmet-7", flags=True)
    resp = link_ble.adv_payload(uuids128=(link_ble.NUS_SERVICE,))
    assert adv == b"\x02\x01\x06\x09\x09helmet-7" and len(resp) == 18
    assert parse_adv(adv) == {0x01: [b"\x06"], 0x09: [b"helmet-7"]}
    assert _describe(adv, resp) == ("helmet-7", [link_ble.NUS_SERVICE])
    assert link_ble.uuid128_le(link_ble.NUS_RX)[::-1].hex().upper() == link_ble.NUS_RX.replace("-", "")
    with pytest.raises(ValueError, match="at most 31"):
        link_ble.adv_payload("x" * 27, flags=True)
    with pytest.raises(ValueError, match="remain"):
        parse_adv(b"\x05\x09ab")


def test_bleak_backend_explains_a_missing_package():
    """Without bleak installed the real-radio backend says what to install."""
    try:
        import bleak  # noqa: F401
    except ImportError:
        with pytest.raises(BleError, match="pip install bleak"):
            BleakSerial("helmet-7")
        with pytest.raises(BleError, match="pip install bleak"):
            open_ble("helmet-7")
    else:
        pytest.skip("bleak is installed; the real backend needs a radio")


# ---------------------------------------------------------------------- the sim radio itself
def test_sim_radio_follows_micropython_semantics(air):
    """Raw bluetooth API on the sim: 20-byte default write buffer, notifications cut to MTU - 3,
    31-byte advertising limit, ENOTCONN after a disconnect, IRQs with MicroPython's arguments."""
    ble_sim.AIR = air.address
    events, seen = [], threading.Event()

    def irq(event, data):
        events.append((event, tuple(bytes(d) if isinstance(d, memoryview) else d for d in data)))
        seen.set()

    ble = ble_sim.BLE()
    assert ble is ble_sim.BLE() and not ble.active()
    try:
        assert ble.active(True)
        ble.irq(irq)
        ble.config(gap_name="raw", mtu=100)
        assert ble.config("mtu") == 100 and ble.config("gap_name") == b"raw"
        with pytest.raises(ValueError):
            ble.config("nonsense")
        U = ble_sim.UUID
        ((tx, rx),) = ble.gatts_register_services(((U(link_ble.NUS_SERVICE), (
            (U(link_ble.NUS_TX), ble_sim.FLAG_NOTIFY),
            (U(link_ble.NUS_RX), ble_sim.FLAG_WRITE | ble_sim.FLAG_WRITE_NO_RESPONSE))),))
        with pytest.raises(OSError):
            ble.gap_advertise(100000, adv_data=bytes(32))
        ble.gap_advertise(100000, adv_data=link_ble.adv_payload("raw", flags=True))
        port = air.connect("raw", mtu=247)
        assert port.mtu == 100  # min(central 247, peripheral 100)

        def wait_for(kind):
            deadline = time.monotonic() + 5
            while not any(e[0] == kind for e in events):
                assert time.monotonic() < deadline, events
                seen.wait(0.1)
                seen.clear()
            return [e for e in events if e[0] == kind][-1][1]

        conn, addr_type, addr = wait_for(1)  # _IRQ_CENTRAL_CONNECT
        assert len(addr) == 6 and wait_for(21) == (conn, 100)  # _IRQ_MTU_EXCHANGED
        port.write(bytes(range(60)))  # one write; the default buffer keeps 20 bytes
        assert wait_for(3) == (conn, rx)  # _IRQ_GATTS_WRITE
        assert ble.gatts_read(rx) == bytes(range(20))
        ble.gatts_notify(conn, tx, bytes(200))  # 200 > MTU - 3: cut, as NimBLE does
        port.timeout = 2.0
        assert port.read(97) == bytes(97) and ble.sim_truncated == 1
        ble.gatts_write(tx, b"hello", send_update=True)
        assert port.read(5) == b"hello"
        port.close()
        wait_for(2)  # _IRQ_CENTRAL_DISCONNECT
        with pytest.raises(OSError) as e:
            ble.gatts_notify(conn, tx, b"x")
        assert e.value.args[0] == errno.ENOTCONN
        assert not air.scan(0.2, name="raw")  # advertising stopped when the central connected
    finally:
        ble.active(False)
        ble.irq(None)
        ble_sim.AIR = None
    assert not ble.active()


def test_no_air_is_like_no_controller():
    """active(True) without an air to attach to fails with OSError, as a board without a radio."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ble_sim.AIR = f"127.0.0.1:{port}"
    try:
        with pytest.raises(OSError):
            ble_sim.BLE().active(True)
        assert not ble_sim.BLE().active()
    finally:
        ble_sim.AIR = None


# ---------------------------------------------------------------------- BleLink end to end
@pytest.mark.parametrize("impl", IMPLS)
def test_frames_larger_than_the_mtu_cross_both_ways(impl, air, device):
    """Advertise, connect, exchange the MTU, echo frames of many MTUs, stream heartbeats."""
    dev = device(impl, heartbeat_ms=100)
    ads = air.scan(10.0, name="helmet-7")
    assert ads and ads[0].services == [link_ble.NUS_SERVICE] and ads[0].connectable
    port, link = _connect(air)
    assert port.mtu == 247
    info = link.wait_ready(10.0)
    assert (info["impl"], info["mtu"], info["connections"], info["protocol"]) == (impl, 247, 1, 1)
    for n in (0, 1, 160, 181, 244, 1000, 8000):  # lines of 9 .. 10.7 kB, MTU - 3 = 244
        payload = (bytes(range(256)) * (n // 256 + 1))[:n]
        assert link.request(MSG_ECHO, payload) == (MSG_ECHO, payload)
    assert link.command(wire.CMD_CONFIG, {"heartbeat_ms": 100}) == "config ['heartbeat_ms']"
    time.sleep(0.35)
    assert len(link.heartbeats) >= 2 and link.last_heartbeat_age() < 0.3
    assert link.bad_frames == 0
    assert air.scan(0.1, name="helmet-7") == []  # connected: not advertising
    out = dev.stop(link)
    assert "done 1 0" in out, out


@pytest.mark.parametrize("impl", IMPLS)
def test_small_mtu_means_20_byte_notifications(impl, air, device):
    """A central that keeps the 23-byte MTU still gets whole frames, 20 bytes per notification."""
    dev = device(impl)
    port, link = _connect(air, mtu=23)
    info = link.wait_ready(10.0)
    assert port.mtu == 23 and info["mtu"] == 23
    payload = bytes(range(256)) * 4
    assert link.request(MSG_ECHO, payload) == (MSG_ECHO, payload)
    dev.stop(link)


@pytest.mark.parametrize("impl", IMPLS)
def test_disconnect_readvertise_and_reconnect(impl, air, device):
    """After the central leaves (closed or out of range) the helmet advertises again and a new
    central gets a clean stream, even when the last one left half a frame behind."""
    dev = device(impl)
    port, link = _connect(air)
    link.wait_ready(10.0)
    adverts = air.adverts
    port.write(wire.encode_line(MSG_ECHO, 5, b"never finished")[:15])  # half a frame
    port.close()
    assert air.scan(10.0, name="helmet-7"), "the helmet did not advertise again"
    assert air.adverts == adverts + 1
    port2, link2 = _connect(air)
    info = link2.wait_ready(10.0)
    assert info["connections"] == 2 and info["mtu"] == 247
    assert link2.request(MSG_ECHO, b"second") == (MSG_ECHO, b"second")
    assert link2.bad_frames == 0
    # link loss: both ends notice, the helmet advertises again
    port2.drop()
    with pytest.raises(BleDisconnectedError):
        link2.request(MSG_ECHO, b"lost")
    assert air.scan(10.0, name="helmet-7")
    port3, link3 = _connect(air)
    assert link3.wait_ready(10.0)["connections"] == 3
    dev.stop(link3)


@pytest.mark.parametrize("impl", IMPLS)
def test_losing_the_radio_disconnects_without_a_crash(impl, air, device):
    """When the air goes away (the controller vanishes) the central sees a disconnect and the
    helmet keeps running its loop, writing into the void without errors."""
    dev = device(impl)
    port, link = _connect(air)
    link.wait_ready(10.0)
    air.close()
    with pytest.raises(BleDisconnectedError):
        link.request(MSG_ECHO, b"anyone?")
    time.sleep(0.3)  # heartbeats and re-advertising meet a dead air meanwhile
    assert dev.proc.poll() is None, dev.output()
    out = dev.output()
    assert "Traceback" not in out and "exception" not in out, out


@pytest.mark.parametrize("impl", IMPLS)
def test_rx_overflow_is_counted_and_the_link_recovers(impl, air, device):
    """A burst larger than the receive ring while the loop is not reading: bytes are dropped and
    counted, the damaged frame is reported as ERR_BAD_FRAME, the device keeps serving."""
    dev = device(impl, rx_size=1024)
    port, link = _connect(air)
    link.wait_ready(10.0)
    stall = link.send(MSG_STALL, struct.pack("<H", 800))
    burst = link.send(MSG_ECHO, bytes(6000))  # an 8 kB line into a 1 kB ring
    assert link.receive(5.0, seq=stall)[0] == MSG_ECHO
    # a ping sent before the loop has emptied the full ring is lost as well: ping until answered
    info = link.wait_ready(10.0)
    assert info["rx_dropped"] > 0
    errors = []
    while True:
        try:
            kind, _, payload = link.receive(0.3, seq=0)
        except LinkTimeout:
            break
        if kind == wire.MSG_ERROR:
            errors.append(wire.unpack_error(payload)[0])
    assert errors and set(errors) == {wire.ERR_BAD_FRAME}, errors
    with pytest.raises(LinkTimeout):
        link.receive(0.2, seq=burst)  # the damaged request got no answer
    for _ in range(3):  # and every frame after the recovery arrives whole
        payload = bytes(range(256)) * 3
        assert link.request(MSG_ECHO, payload) == (MSG_ECHO, payload)
    dev.stop(link)


@pytest.mark.parametrize("impl", IMPLS)
def test_full_transmit_buffers_are_retried(impl, air, device):
    """gatts_notify failing with ENOMEM (stack buffers full) is retried: nothing is lost."""
    dev = device(impl)
    port, link = _connect(air)
    before = link.wait_ready(10.0)["tx_dropped"]
    assert link.request(MSG_HOOK, bytes([6])) == (MSG_ECHO, bytes([6]))  # its answer hits 6 failures
    payload = bytes(range(256)) * 8
    assert link.request(MSG_ECHO, payload) == (MSG_ECHO, payload)
    assert link.ping()["tx_dropped"] == before
    dev.stop(link)


@pytest.mark.parametrize("impl", IMPLS)
def test_command_retry_over_ble_runs_once(impl, air, device):
    """A lost ACK over BLE: the same seq is resent and answered from the helmet's log."""
    dev = device(impl)
    port, link = _connect(air)
    link.wait_ready(10.0)
    lossy = LossyPort(port, drop_types=(wire.MSG_ACK,), count=1)
    link.serial = lossy
    assert link.command(wire.CMD_START, timeout=0.5) == ""
    info = link.ping()
    assert lossy.dropped and info["runs"] == {"1": 1} and info["replays"] == 1
    assert info["state"] == wire.STATE_STREAMING
    link.serial = port
    dev.stop(link)


def test_micropython_link_does_not_leak(air, device):
    """Hundreds of frames through BleLink under MicroPython leave the heap where it was."""
    air.rate = None  # no radio pacing: this test is about the heap, not the air
    dev = device("micropython")
    port, link = _connect(air)
    link.wait_ready(10.0)
    for _ in range(20):  # warm up: first-use allocations (dict growth, interned strings)
        link.request(MSG_ECHO, bytes(500))
    before = link.ping()["mem_alloc"]
    for i in range(200):
        link.request(MSG_ECHO, bytes(i % 7) * 300)
    after = link.ping()["mem_alloc"]
    assert abs(after - before) < 2048, (before, after)
    dev.stop(link)


@pytest.mark.parametrize("impl", IMPLS)
def test_helmet_runtime_serves_over_ble(impl, air, tmp_path):
    """The firmware's own serve loop (app.Runtime, no bundle) answers over BleLink on the sim radio:
    PONG, heartbeats, command ACKs and refusals, error frames, across a reconnect."""
    code = ("import ble_sim, link_ble, app\n"
            "app.Runtime(link_ble.BleLink('helmet-app', bt=ble_sim)).run()\n")
    argv = ([micropython_exe(), "-X", "heapsize=512K", "-c", code] if impl == "micropython"
            else [sys.executable, "-c", code])
    env = dict(os.environ, MICROPYPATH=str(FIRMWARE), PYTHONPATH=str(FIRMWARE), PAINHELM_BLE_AIR=air.address)
    proc = subprocess.Popen(argv, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port, link = _connect(air, "helmet-app")
        info = link.wait_ready(10.0)
        assert info["impl"] == impl and info["protocol"] == 1 and info["state"] == wire.STATE_NO_BUNDLE
        link.command(wire.CMD_CONFIG, {"heartbeat_ms": 100})
        time.sleep(0.4)
        assert link.last_heartbeat_age() < 0.3 and link.heartbeats[-1]["state"] == wire.STATE_NO_BUNDLE
        with pytest.raises(LinkError, match="command failed"):
            link.command(wire.CMD_START)
        with pytest.raises(LinkError, match="error %d" % wire.ERR_UNKNOWN_TYPE):
            link.request(0x42)
        port.write(wire.encode_line(wire.MSG_PING, 9)[:-6] + b"\n")
        kind, _, payload = link.receive(5.0, seq=0)
        if kind == wire.MSG_PONG:  # the ready announcement, when we connected before it went out
            kind, _, payload = link.receive(5.0, seq=0)
        assert kind == wire.MSG_ERROR and wire.unpack_error(payload)[0] == wire.ERR_BAD_FRAME
        port.close()
        port2, link2 = _connect(air, "helmet-app")
        assert link2.ping()["protocol"] == 1
        port2.close()
    finally:
        proc.kill()
        out = proc.communicate()[0].decode(errors="replace")
        print(out)
