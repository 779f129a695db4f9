"""BLE link on a Raspberry Pi: firmware_py/link_bluez.py against a fake BlueZ on a private D-Bus.

No bluetoothd and no radio exist here, but a real ``dbus-daemon`` does. Each test starts the
real BluezLink (dbus-next, its asyncio thread, its exported objects) on a private bus where
``FakeBluez`` owns ``org.bluez`` and behaves as bluetoothd does towards an application:

* RegisterApplication: calls GetManagedObjects back on the application's ObjectManager
  before answering, and accepts it only if it finds a primary NUS service and its RX / TX
  characteristics (UUID, Service, Flags) - else org.bluez.Error.Failed, like BlueZ;
* RegisterAdvertisement: reads the advertisement's properties (Properties.GetAll);
* as the central: WriteValue(value, {"device", "mtu", ...}) on RX, StartNotify / StopNotify on
  TX, and collects the PropertiesChanged(Value) signals of TX - what BlueZ turns into
  notifications (it cuts a value to MTU - 3 bytes, so the fake records the pieces as sent).
"""

import asyncio
import os
import shutil
import subprocess
import threading
import time

import pytest

pytest.importorskip("dbus_next", reason="dbus-next is not installed (requirements.lock)")

from dbus_next import Message, MessageType, Variant  # noqa: E402
from dbus_next.aio import MessageBus  # noqa: E402
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property  # noqa: E402

from painhelm.firmware import link_bluez, wire  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None,
                                reason="dbus-daemon is not on PATH: no private D-Bus to test on")

ADAPTER = "/org/bluez/hci0"
DEVICE = ADAPTER + "/dev_AA_BB_CC_DD_EE_FF"
NUS = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def wait_for(cond, timeout=5.0, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.005)


@pytest.fixture(scope="module")
def bus_address(tmp_path_factory):
    """A private dbus-daemon for this module; yields its address."""
    d = tmp_path_factory.mktemp("dbus")
    conf = d / "bus.conf"
    conf.write_text(BUS_CONFIG % d)
    proc = subprocess.Popen(["dbus-daemon", "--config-file=%s" % conf, "--nofork", "--print-address"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = proc.stdout.readline().strip()
        if not address:
            proc.kill()
            pytest.fail("dbus-daemon did not start: %s" % proc.stderr.read())
        yield address
    finally:
        proc.terminate()
        proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


class Adapter(ServiceInterface):
    def __init__(self):
        super().__init__("org.bluez.Adapter1")
        self.powered = False

    @dbus_property(name="Address", access=PropertyAccess.READ)
    def address(self) -> "s":
        return "DC:A6:32:01:02:03"

    @dbus_property(name="Powered")
    def powered_prop(self) -> "b":
        return self.powered

    @powered_prop.setter
    def powered_prop(self, value: "b"):
        self.powered = value


class FakeBluez:
    """bluetoothd's side of the GATT / advertising D-Bus API, and a central, in its own thread."""

    def __init__(self, address):
        self.address = address
        self.apps = {}  # (sender, path) -> managed objects
        self.advs = {}  # (sender, path) -> properties (plain values)
        self.unregistered = []  # (member, path)
        self.notifications = []  # TX values, as BlueZ would notify them
        self.lock = threading.Lock()
        self.closed = False
        self.tx_path = None
        self.adapter = Adapter()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self._start())

    def run(self, coro, timeout=5.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self):
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.export(ADAPTER, self.adapter)
        self.bus.add_message_handler(self._handle)
        await self.bus.request_name("org.bluez")

    def close(self):
        if self.closed:
            return
        self.closed = True

        async def stop():
            self.bus.disconnect()
            await self.bus.wait_for_disconnect()
            self.bus._sock.close()  # dbus-next 0.2.3 leaves it open

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    # -------------------------------------------------------------- bluetoothd
    def _handle(self, msg):
        if msg.message_type == MessageType.SIGNAL:
            if (msg.member == "PropertiesChanged" and msg.body[0] == "org.bluez.GattCharacteristic1"
                    and "Value" in msg.body[1] and msg.path == self.tx_path):
                with self.lock:
                    self.notifications.append(bytes(msg.body[1]["Value"].value))
            return False
        if msg.message_type != MessageType.METHOD_CALL or msg.path != ADAPTER:
            return False
        if msg.interface == "org.bluez.GattManager1" and msg.member == "RegisterApplication":
            asyncio.ensure_future(self._register_app(msg))
            return True
        if msg.interface == "org.bluez.LEAdvertisingManager1" and msg.member == "RegisterAdvertisement":
            asyncio.ensure_future(self._register_adv(msg))
            return True
        if msg.member in ("UnregisterApplication", "UnregisterAdvertisement"):
            table = self.apps if msg.member == "UnregisterApplication" else self.advs
            if table.pop((msg.sender, msg.body[0]), None) is None:
                return Message.new_error(msg, "org.bluez.Error.DoesNotExist", "Does Not Exist")
            self.unregistered.append((msg.member, msg.body[0]))
            return Message.new_method_return(msg)
        return False

    async def _register_app(self, msg):
        path = msg.body[0]
        reply = await self.bus.call(Message(destination=msg.sender, path=path,
                                            interface="org.freedesktop.DBus.ObjectManager",
                                            member="GetManagedObjects"))
        if reply.message_type == MessageType.ERROR:
            self.bus.send(Message.new_error(msg, "org.bluez.Error.Failed", "Failed to register application"))
            return
        objects = reply.body[0]
        problem = self._find_nus(msg.sender, objects)
        if problem:
            self.bus.send(Message.new_error(msg, "org.bluez.Error.Failed", problem))
            return
        self.apps[(msg.sender, path)] = objects
        # BlueZ subscribes to the application's property changes (notifications)
        await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                    body=["type='signal',sender='%s',interface='org.freedesktop.DBus.Properties',"
                                          "member='PropertiesChanged'" % msg.sender]))
        self.bus.send(Message.new_method_return(msg))

    def _find_nus(self, sender, objects):
        """Locate the NUS service and characteristics as BlueZ would; return a problem or None."""
        services = {p: i["org.bluez.GattService1"] for p, i in objects.items() if "org.bluez.GattService1" in i}
        chars = {p: i["org.bluez.GattCharacteristic1"] for p, i in objects.items()
                 if "org.bluez.GattCharacteristic1" in i}
        nus = [p for p, s in services.items() if s["UUID"].value.lower() == NUS and s["Primary"].value]
        if len(nus) != 1:
            return "no primary NUS service"
        self.app_sender = sender
        self.service_path = nus[0]
        self.rx_path = self.tx_path = None
        for p, c in chars.items():
            if c["Service"].signature != "o" or c["Service"].value not in services:
                return "characteristic %s: unknown service" % p
            if c["Flags"].signature != "as":
                return "characteristic %s: Flags is not as" % p
            if c["Service"].value == self.service_path and c["UUID"].value.lower() == RX:
                self.rx_path = p
            elif c["Service"].value == self.service_path and c["UUID"].value.lower() == TX:
                self.tx_path = p
        if self.rx_path is None or self.tx_path is None:
            return "NUS RX/TX characteristic missing"
        return None

    async def _register_adv(self, msg):
        reply = await self.bus.call(Message(destination=msg.sender, path=msg.body[0], interface="org.freedesktop.DBus.Properties",
                                            member="GetAll", signature="s", body=["org.bluez.LEAdvertisement1"]))
        if reply.message_type == MessageType.ERROR:
            self.bus.send(Message.new_error(msg, "org.bluez.Error.Failed", "Failed to parse advertisement."))
            return
        self.advs[(msg.sender, msg.body[0])] = {k: v.value for k, v in reply.body[0].items()}
        self.bus.send(Message.new_method_return(msg))

    # -------------------------------------------------------------- the central
    async def _app_call(self, path, member, signature="", body=()):
        reply = await self.bus.call(Message(destination=self.app_sender, path=path,
                                            interface="org.bluez.GattCharacteristic1", member=member,
                                            signature=signature, body=list(body)))
        assert reply.message_type == MessageType.METHOD_RETURN, reply.body
        return reply.body

    def write(self, data, mtu=23, kind="command"):
        """The central writes ``data`` to RX (as BlueZ calls WriteValue on the application)."""
        options = {"device": Variant("o", DEVICE), "mtu": Variant("q", mtu), "offset": Variant("q", 0),
                   "link": Variant("s", "LE"), "type": Variant("s", kind)}
        self.run(self._app_call(self.rx_path, "WriteValue", "aya{sv}", [bytes(data), options]))

    def start_notify(self):
        self.run(self._app_call(self.tx_path, "StartNotify"))

    def stop_notify(self):
        self.run(self._app_call(self.tx_path, "StopNotify"))

    def received(self):
        with self.lock:
            return b"".join(self.notifications)


@pytest.fixture
def bluez(bus_address):
    fake = FakeBluez(bus_address)
    yield fake
    fake.close()


@pytest.fixture
def link(bluez, bus_address):
    lk = link_bluez.BluezLink(name="helmet-7", bus_address=bus_address, start_timeout_s=10.0)
    yield lk
    lk.close()


def test_registers_nus_application_and_powers_adapter(link, bluez):
    assert link.advertising and not link.connected and not link.closed
    assert bluez.adapter.powered is True  # the adapter was off: the link switched it on
    assert link.address == "DC:A6:32:01:02:03"
    ((sender, app_path), objects), = bluez.apps.items()
    assert sender == bluez.app_sender and app_path == "/org/painhelm/gatt"
    assert all(p.startswith(app_path + "/") for p in objects)  # BlueZ only looks below the app
    service = objects[bluez.service_path]["org.bluez.GattService1"]
    assert service["UUID"] == Variant("s", NUS) and service["Primary"] == Variant("b", True)
    rx = objects[bluez.rx_path]["org.bluez.GattCharacteristic1"]
    tx = objects[bluez.tx_path]["org.bluez.GattCharacteristic1"]
    assert rx["UUID"] == Variant("s", RX) and tx["UUID"] == Variant("s", TX)
    assert rx["Service"] == Variant("o", bluez.service_path) == tx["Service"]
    assert rx["Flags"] == Variant("as", ["write", "write-without-response"])
    assert tx["Flags"] == Variant("as", ["notify"])
    assert tx["Notifying"] == Variant("b", False)
    assert link_bluez.NUS_SERVICE.upper() == "6E400001-B5A3-F393-E0A9-E50E24DCCA9E"


def test_advertisement_properties(link, bluez):
    ((sender, path), props), = bluez.advs.items()
    assert sender == bluez.app_sender and path == "/org/painhelm/adv0"
    assert props["Type"] == "peripheral"
    assert NUS in props["ServiceUUIDs"]
    assert props["LocalName"] == "helmet-7"
    assert props["Discoverable"] is True


def test_central_writes_arrive_via_poll_and_readinto(link, bluez):
    assert link.poll() is None
    line = wire.encode_line(wire.MSG_PING, 513)
    for i in range(0, len(line), 20):  # a 23-byte-MTU central writes 20 bytes at a time
        bluez.write(line[i : i + 20], kind="command" if i % 40 else "request")
    wait_for(lambda: link.any() >= len(line), what="the RX bytes")
    got = []
    parser = wire.LineParser(lambda t, s, p: got.append((t, s, bytes(p))))
    parser.feed(link.poll())
    assert got == [(wire.MSG_PING, 513, b"")]
    assert link.poll() is None
    assert link.device == DEVICE and link.mtu == 23

    bluez.write(b"abcdefgh")
    wait_for(lambda: link.any() == 8, what="8 bytes")
    buf = bytearray(5)
    assert link.readinto(buf) == 5 and buf == b"abcde"
    assert link.readinto(buf) == 3 and buf[:3] == b"fgh"
    assert link.readinto(buf) == 0


def test_write_bigger_than_mtu_arrives_complete_and_in_order(link, bluez):
    line = wire.encode_line(wire.MSG_REPORT, 0, bytes(range(256)) * 3)  # ~1 KB line
    assert link.write(line) == 0 and link.tx_dropped == len(line)  # nobody subscribed: dropped
    bluez.start_notify()
    wait_for(lambda: link.connected, what="connected")
    assert link.connections == 1
    assert link.write(line) == len(line)  # MTU 23 until a write tells otherwise: 20-byte pieces
    wait_for(lambda: len(bluez.received()) >= len(line), what="the notifications")
    assert bluez.received() == line
    assert all(len(n) <= 20 for n in bluez.notifications) and len(bluez.notifications) == -(-len(line) // 20)

    bluez.notifications.clear()
    bluez.write(b"\n", mtu=185)  # BlueZ passes the negotiated MTU with each write
    wait_for(lambda: link.mtu == 185, what="the MTU")
    second = wire.encode_line(wire.MSG_ACK, 7, wire.pack_ack(0, "ok")) + line
    assert link.write(second) == len(second)
    wait_for(lambda: len(bluez.received()) >= len(second), what="the notifications")
    assert bluez.received() == second
    assert max(len(n) for n in bluez.notifications) == 182
    frames = []
    wire.LineParser(lambda t, s, p: frames.append((t, s))).feed(bluez.received())
    assert frames == [(wire.MSG_ACK, 7), (wire.MSG_REPORT, 0)]


def test_start_stop_notify_drive_connected(link, bluez):
    bluez.start_notify()
    wait_for(lambda: link.connected, what="connected")
    bluez.write(b"$half-a-li", mtu=100)
    wait_for(lambda: link.any() == 10, what="the bytes")
    bluez.stop_notify()  # the central left in the middle of a line
    wait_for(lambda: not link.connected, what="disconnected")
    assert link.mtu == 23
    assert link.poll() == b"$half-a-li\n"  # the half line is ended: the next frame stays whole
    n = link.tx_dropped
    assert link.write(b"lost\n") == 0 and link.tx_dropped == n + 5
    bluez.start_notify()
    wait_for(lambda: link.connected, what="connected again")
    assert link.connections == 2


def test_receive_overflow_drops_and_resyncs(bluez, bus_address):
    lk = link_bluez.BluezLink(bus_address=bus_address, rx_size=16, path="/org/painhelm2")
    try:
        bluez.write(b"0123456789")
        bluez.write(b"abcdefghij")  # 4 bytes lost
        wait_for(lambda: lk.rx_dropped == 4, what="the drop")
        assert lk.poll() == b"0123456789abcdef"
        bluez.write(b"$next\n")
        wait_for(lambda: lk.any() == 7, what="the next line")
        assert lk.poll() == b"\n$next\n"
    finally:
        lk.close()


def test_close_unregisters(bluez, bus_address):
    lk = link_bluez.BluezLink(bus_address=bus_address)
    assert len(bluez.apps) == 1 and len(bluez.advs) == 1
    lk.close()
    assert lk.closed and not lk.connected and not lk.advertising
    assert bluez.apps == {} and bluez.advs == {}
    assert sorted(bluez.unregistered) == [("UnregisterAdvertisement", "/org/painhelm/adv0"),
                                          ("UnregisterApplication", "/org/painhelm/gatt")]
    assert not lk._thread.is_alive()
    assert lk.write(b"x") == 0 and lk.poll() is None
    lk.close()  # twice is harmless


def test_bluetoothd_leaving_drops_the_central(bluez, bus_address):
    lk = link_bluez.BluezLink(bus_address=bus_address)
    try:
        bluez.start_notify()
        wait_for(lambda: lk.connected, what="connected")
        bluez.close()  # bluetoothd stops: its registrations and connections are gone
        wait_for(lambda: not lk.connected and not lk.advertising, what="the link to notice")
    finally:
        t = time.monotonic()
        lk.close()  # nothing to unregister from: must not hang
        assert time.monotonic() - t < 3.0


def test_no_bluez_raises_oserror(bus_address):
    """No bluetoothd on the bus: OSError, the error after which app falls back to serial."""
    t = time.monotonic()
    with pytest.raises(OSError, match="org.bluez|ServiceUnknown"):
        link_bluez.BluezLink(bus_address=bus_address, start_timeout_s=5.0)
    assert time.monotonic() - t < 5.0


def test_rejected_registration_raises_oserror(bluez, bus_address, monkeypatch):
    monkeypatch.setattr(link_bluez, "NUS_SERVICE", "0000180d-0000-1000-8000-00805f9b34fb")
    monkeypatch.setattr(link_bluez, "_classes", None)
    with pytest.raises(OSError, match="no primary NUS service"):
        link_bluez.BluezLink(bus_address=bus_address)
    assert bluez.apps == {} and bluez.advs == {}


def test_module_is_inert_on_micropython():
    """The module has no top-level CPython-only import: the MicroPython unix port imports it, and
    making a link raises ImportError (app then falls back to the serial link)."""
    with open(link_bluez.__file__) as f:
        src = f.read()
    assert "\nimport " not in src and "\nfrom " not in src
    try:
        from .mpy import micropython_exe, run_micropython

        micropython_exe()
    except Exception as e:  # noqa: BLE001
        pytest.skip("no MicroPython unix port: %s" % e)
    out = run_micropython(
        "import link_bluez\n"
        "try:\n"
        "    link_bluez.BluezLink()\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n", timeout=30)
    assert "ImportError: link_bluez needs CPython and dbus-next" in out
