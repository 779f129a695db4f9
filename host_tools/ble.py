"""Host end of the helmet's BLE link: a central that looks like a pyserial port.

The helmet is a GATT peripheral with the Nordic UART Service (firmware_py/link_ble.py); the
host writes frame lines to RX and receives notifications from TX. Both backends below give a
pyserial-like object (``read(size)`` with ``timeout``, ``write``, ``in_waiting``, ``close``),
so ``HelmetLink(port)`` works over BLE unchanged:

* ``SimAir`` - the simulated radio: a local TCP "air" that firmware_py/ble_sim.py (the
  stand-in for MicroPython's ``bluetooth``) attaches to, plus the central that scans it,
  connects, exchanges the MTU, writes and collects notifications. It runs the real
  link_ble code under the real MicroPython unix port in the tests.
* ``BleakSerial`` - real hardware through ``bleak`` (BlueZ on Linux, CoreBluetooth, WinRT).
  Imported lazily; it cannot be tested here (no radio) and is kept to the few calls the
  simulated central also makes: scan by name or address, connect, subscribe to TX, write
  RX in MTU - 3 byte pieces without response.

    with SimAir() as air:                      # tests: ble_sim.AIR = air.address
        port = air.connect("painhelm")
    port = BleakSerial("painhelm")             # a real helmet
    link = HelmetLink(port)
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import serial

from painhelm.firmware import ble_sim as _sim
from painhelm.firmware.link_ble import NUS_RX, NUS_SERVICE, NUS_TX, uuid128_le

__all__ = ["Advertisement", "BleDisconnectedError", "BleError", "BleakSerial", "SimAir",
           "SimBleSerial", "open_ble", "parse_adv"]

_MTU_MIN = 23
_ATT_HEADER = 3
_REASON_REMOTE_USER = 0x13  # HCI: remote user terminated connection
_REASON_TIMEOUT = 0x08  # HCI: connection timeout (link loss)
RX_LIMIT = 1 << 20  # bytes kept for a host that is not reading (the oldest are dropped)


class BleError(serial.SerialException):
    """The BLE link failed: no such helmet, no Nordic UART Service, no radio, no bleak."""


class BleDisconnectedError(BleError):
    """The helmet is no longer connected (it left, went out of range, or was closed)."""


@dataclass
class Advertisement:
    """One advertising peripheral as a scan sees it."""

    address: str
    name: str | None
    services: list[str] = field(default_factory=list)
    connectable: bool = True
    adv_data: bytes = b""
    resp_data: bytes = b""


def parse_adv(data: bytes) -> dict[int, list[bytes]]:
    """AD structures of an advertising payload: {AD type: [values]}; ValueError if malformed."""
    out: dict[int, list[bytes]] = {}
    i = 0
    while i < len(data):
        n = data[i]
        if n == 0:
            break
        if i + 1 + n > len(data):
            raise ValueError(f"AD structure at byte {i} is {n} bytes, only {len(data) - i - 1} remain")
        out.setdefault(data[i + 1], []).append(bytes(data[i + 2:i + 1 + n]))
        i += 1 + n
    return out


def _uuid_str(le: bytes) -> str:
    h = le[::-1].hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" if len(le) == 16 else f"{h}"


def _describe(adv: bytes, resp: bytes) -> tuple[str | None, list[str]]:
    name, services = None, []
    for payload in (adv, resp):
        ad = parse_adv(payload)
        for t in (0x09, 0x08):  # complete / shortened local name
            if t in ad and name is None:
                name = ad[t][0].decode(errors="replace")
        for t in (0x06, 0x07):  # 128-bit UUID lists
            for v in ad.get(t, []):
                services += [_uuid_str(v[k:k + 16]) for k in range(0, len(v) - 15, 16)]
        for t in (0x02, 0x03):  # 16-bit UUID lists
            for v in ad.get(t, []):
                services += [f"{struct.unpack_from('<H', v, k)[0]:04X}" for k in range(0, len(v) - 1, 2)]
    return name, services


class _BleSerialBase:
    """Receive buffer and pyserial-style reads shared by the simulated and the bleak port."""

    def __init__(self, timeout: float | None = 0.05) -> None:
        self.timeout = timeout
        self.mtu = _MTU_MIN
        self.connected = True
        self.is_open = True
        self.rx_dropped = 0
        self._rx = bytearray()
        self._cond = threading.Condition()

    def _on_data(self, data: bytes) -> None:
        with self._cond:
            self._rx += data
            if len(self._rx) > RX_LIMIT:
                self.rx_dropped += len(self._rx) - RX_LIMIT
                del self._rx[: len(self._rx) - RX_LIMIT]
            self._cond.notify_all()

    def _on_lost(self) -> None:
        with self._cond:
            self.connected = False
            self._cond.notify_all()

    @property
    def in_waiting(self) -> int:
        """Bytes received and not read yet."""
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes: waits until that many arrived or ``timeout`` passed.

        Raises BleDisconnectedError once the connection is gone and nothing is left to read.
        """
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._cond:
            while len(self._rx) < size and self.connected:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            if not self._rx and not self.connected:
                raise BleDisconnectedError("the helmet is no longer connected over BLE")
            data = bytes(self._rx[:size])
            del self._rx[:size]
            return data

    def reset_input_buffer(self) -> None:
        """Forget what was received and not read."""
        with self._cond:
            self._rx.clear()

    def chunks(self, data: bytes):
        """``data`` cut into writes of MTU - 3 bytes."""
        step = self.mtu - _ATT_HEADER
        mv = memoryview(bytes(data))
        return [mv[i:i + step] for i in range(0, len(mv), step)]

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# ---------------------------------------------------------------------- simulated radio
class _Peripheral:
    """One ble_sim radio attached to the air (a helmet process)."""

    def __init__(self, air: "SimAir", sock: socket.socket) -> None:
        self.air = air
        self.sock = sock
        self.address = "??"
        self.name = ""
        self.gatt: list[tuple[int, bytes, int, int]] = []  # kind, uuid (LE), flags, value handle
        self.adv: tuple[int, bool, bytes, bytes] | None = None  # interval, connectable, adv, resp
        self.conns: dict[int, SimBleSerial] = {}
        self.alive = True
        self._send_lock = threading.Lock()
        self._replies: dict[tuple[int, int], list] = {}  # (kind, conn) -> waiting replies
        threading.Thread(target=self._run, name="ble-air-peripheral", daemon=True).start()

    def send(self, kind: int, body: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(struct.pack(_sim._MSG_HEADER, kind, len(body)) + body)
            except OSError:
                pass  # the peripheral is gone; its reader thread reports it

    def expect(self, kind: int, conn: int) -> threading.Event:
        ev = threading.Event()
        ev.value = None  # type: ignore[attr-defined]
        with self.air._cond:
            self._replies.setdefault((kind, conn), []).append(ev)
        return ev

    def _resolve(self, kind: int, conn: int, value) -> None:
        with self.air._cond:
            waiting = self._replies.get((kind, conn))
            ev = waiting.pop(0) if waiting else None
        if ev is not None:
            ev.value = value  # type: ignore[attr-defined]
            ev.set()

    def _run(self) -> None:
        buf = bytearray()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 3:
                    kind, n = struct.unpack_from(_sim._MSG_HEADER, buf, 0)
                    if len(buf) < 3 + n:
                        break
                    body = bytes(buf[3:3 + n])
                    del buf[:3 + n]
                    self._on_message(kind, body)
        except OSError:
            pass
        finally:
            self._gone()

    def _on_message(self, kind: int, body: bytes) -> None:
        air = self.air
        if kind == _sim._HELLO:
            self.address = ":".join(f"{b:02X}" for b in body[:6])
            self.name = body[6:].decode(errors="replace")
        elif kind == _sim._NAME:
            self.name = body.decode(errors="replace")
        elif kind == _sim._GATT:
            i = 0
            while i < len(body):
                k, n = body[i], body[i + 1]
                uuid = body[i + 2:i + 2 + n]
                i += 2 + n
                flags = handle = 0
                if k == 2:
                    flags, handle = struct.unpack_from("<HH", body, i)
                    i += 4
                self.gatt.append((k, uuid, flags, handle))
        elif kind == _sim._ADV:
            interval, connectable, n = struct.unpack_from("<IBB", body, 0)
            with air._cond:
                self.adv = None if interval == 0 else (interval, bool(connectable), body[6:6 + n], body[6 + n:])
                air.adverts += interval != 0
                air._cond.notify_all()
        elif kind == _sim._NOTIFY:
            conn, handle = struct.unpack_from("<HH", body, 0)
            central = self.conns.get(conn)
            if central is not None and handle == central._tx:
                central._on_data(body[4:])
        elif kind == _sim._DISCONNECT:  # the helmet ends the connection
            conn = struct.unpack_from("<H", body, 0)[0]
            central = self.conns.pop(conn, None)
            self.send(_sim._DISCONNECTED, struct.pack("<HB", conn, 0x16))
            if central is not None:
                central._on_lost()
        elif kind == _sim._MTU_RSP:
            conn, server_mtu = struct.unpack_from("<HH", body, 0)
            self._resolve(kind, conn, server_mtu)
        elif kind == _sim._WRITE_RSP:
            conn, _ = struct.unpack_from("<HH", body, 0)
            self._resolve(kind, conn, True)

    def _gone(self) -> None:
        self.alive = False
        with self.air._cond:
            self.adv = None
            if self in self.air._peripherals:
                self.air._peripherals.remove(self)
            self.air._cond.notify_all()
            waiting = [ev for evs in self._replies.values() for ev in evs]
        for ev in waiting:
            ev.set()
        for central in list(self.conns.values()):
            central._on_lost()
        self.conns.clear()
        try:
            self.sock.close()
        except OSError:
            pass

    def advertisement(self) -> Advertisement | None:
        if self.adv is None:
            return None
        _, connectable, adv, resp = self.adv
        name, services = _describe(adv, resp)
        return Advertisement(self.address, name, services, connectable, adv, resp)


class SimAir:
    """The simulated radio medium and the host's central on it.

    Start it, point the helmet's ``ble_sim`` at ``address`` (``ble_sim.AIR = ...`` or the
    environment variable ``PAINHELM_BLE_AIR``), then ``scan`` and ``connect``. ``rate``
    paces the central's writes like a radio link does (a TCP socket on one machine would
    deliver a burst at once, far faster than any BLE connection).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, rate: float | None = 64000.0) -> None:
        self.rate = rate  # bytes/s a central writes at most (None: no limit); BLE 1M PHY carries ~20-90 kB/s
        self._server = socket.create_server((host, port))
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self._cond = threading.Condition()
        self._peripherals: list[_Peripheral] = []
        self._next_conn = 64
        self._central_addr = os.urandom(6)
        self.adverts = 0  # advertising starts seen (a re-advertise after a disconnect counts)
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="ble-air", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self._peripherals.append(_Peripheral(self, sock))
                self._cond.notify_all()

    def close(self) -> None:
        """Switch the air off: every peripheral loses its radio."""
        self._closed = True
        try:
            self._server.close()
        except OSError:
            pass
        with self._cond:
            peripherals = list(self._peripherals)
        for p in peripherals:
            try:
                p.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> "SimAir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find(self, target: str | Advertisement) -> _Peripheral | None:
        want = target.address if isinstance(target, Advertisement) else target
        for p in self._peripherals:
            a = p.advertisement()
            if a is not None and (a.address == want or a.name == want):
                return p
        return None

    def scan(self, timeout: float = 2.0, name: str | None = None,
             service: str | None = None) -> list[Advertisement]:
        """Advertising peripherals (with ``name`` / ``service`` when given); waits up to
        ``timeout`` for at least one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [a for a in (p.advertisement() for p in self._peripherals) if a is not None
                         and (name is None or a.name == name)
                         and (service is None or service.upper() in a.services)]
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                self._cond.wait(left)

    def connect(self, target: str | Advertisement, mtu: int = 247, timeout: float = 5.0,
                read_timeout: float | None = 0.05) -> "SimBleSerial":
        """Connect to an advertising helmet (name, address or Advertisement), find the Nordic
        UART Service, exchange the MTU; return the connection as a pyserial-like port."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (p := self._find(target)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [a.name or a.address for a in (q.advertisement() for q in self._peripherals) if a]
                    raise BleError(f"no helmet {target!r} advertising within {timeout:.1f} s"
                                   f" (advertising: {', '.join(seen) or 'none'})")
                self._cond.wait(left)
            if not p.adv[1]:
                raise BleError(f"{target!r} advertises as not connectable")
            conn = self._next_conn
            self._next_conn += 1
            p.adv = None  # a connectable advertisement ends when a central connects
        rx = tx = None
        in_nus = False
        for kind, uuid, flags, handle in p.gatt:
            if kind == 1:
                in_nus = uuid == uuid128_le(NUS_SERVICE)
            elif in_nus and uuid == uuid128_le(NUS_RX):
                rx = handle
            elif in_nus and uuid == uuid128_le(NUS_TX):
                tx = handle
        central = SimBleSerial(p, conn, rx, tx, read_timeout)
        p.conns[conn] = central
        p.send(_sim._CONNECT, struct.pack("<HB", conn, 0) + self._central_addr)
        if rx is None or tx is None:
            central.close()
            raise BleError(f"{target!r} has no Nordic UART Service ({NUS_SERVICE})")
        if mtu > _MTU_MIN:
            ev = p.expect(_sim._MTU_RSP, conn)
            p.send(_sim._MTU_REQ, struct.pack("<HH", conn, mtu))
            if not ev.wait(max(0.0, deadline - time.monotonic())) or ev.value is None:
                central.close()
                raise BleError(f"{target!r} did not answer the MTU exchange")
            central.mtu = max(_MTU_MIN, min(mtu, ev.value))
        return central


class SimBleSerial(_BleSerialBase):
    """A central's connection to a helmet on the simulated air (pyserial-like)."""

    def __init__(self, peripheral: _Peripheral, conn: int, rx: int | None, tx: int | None,
                 timeout: float | None) -> None:
        super().__init__(timeout)
        self._p = peripheral
        self.conn = conn
        self._rx_handle = rx
        self._tx = tx
        self.name = peripheral.name
        self.address = peripheral.address
        self._air_free = time.monotonic()  # when the pacing lets the next write go

    def write(self, data: bytes, response: bool = False) -> int:
        """Write ``data`` to RX in MTU - 3 byte pieces (``response``: wait for each write's
        acknowledgement, which paces the host to the helmet's stack)."""
        if not self.connected:
            raise BleDisconnectedError("the helmet is no longer connected over BLE")
        rate = self._p.air.rate
        for piece in self.chunks(data):
            if rate:
                now = time.monotonic()
                self._air_free = max(self._air_free, now) + len(piece) / rate
                if self._air_free - now > 0.002:
                    time.sleep(self._air_free - now)
            ev = self._p.expect(_sim._WRITE_RSP, self.conn) if response else None
            self._p.send(_sim._WRITE, struct.pack("<HHB", self.conn, self._rx_handle, int(response)) + bytes(piece))
            if ev is not None and not ev.wait(5.0):
                raise BleError("the helmet did not acknowledge a write within 5 s")
        return len(data)

    def flush(self) -> None:
        """Writes go out at once; nothing to flush."""

    def _end(self, reason: int) -> None:
        if self.connected:
            self._p.conns.pop(self.conn, None)
            self._p.send(_sim._DISCONNECTED, struct.pack("<HB", self.conn, reason))
            self._on_lost()

    def drop(self) -> None:
        """Simulate link loss (out of range): both ends see the connection time out."""
        self._end(_REASON_TIMEOUT)

    def close(self) -> None:
        """Disconnect (the helmet sees the central leave and advertises again)."""
        self._end(_REASON_REMOTE_USER)
        self.is_open = False


# ---------------------------------------------------------------------- real radio (bleak)
class BleakSerial(_BleSerialBase):
    """A real helmet over BLE through ``bleak`` (not testable here: no radio).

    ``target`` is the advertised name or the address (``AA:BB:..`` / a CoreBluetooth UUID).
    bleak's asyncio calls run on a private event loop thread; this object is synchronous.
    """

    def __init__(self, target: str, timeout: float | None = 0.05, connect_timeout: float = 10.0) -> None:
        try:
            import bleak
        except ImportError:
            raise BleError("BLE needs the 'bleak' package on the host: pip install bleak") from None
        import asyncio

        super().__init__(timeout)
        self._asyncio = asyncio
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="bleak", daemon=True).start()

        async def connect():
            by_address = target.count(":") == 5 or target.count("-") == 4
            find = bleak.BleakScanner.find_device_by_address if by_address else bleak.BleakScanner.find_device_by_name
            device = await find(target, timeout=connect_timeout)
            if device is None:
                raise BleError(f"no helmet {target!r} found within {connect_timeout:.0f} s")
            client = bleak.BleakClient(device, disconnected_callback=lambda _: self._on_lost(),
                                       timeout=connect_timeout)
            await client.connect()
            await client.start_notify(NUS_TX, lambda _, data: self._on_data(bytes(data)))
            return client

        try:
            self._client = self._run(connect(), connect_timeout * 2 + 5)
        except BleError:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        except Exception as e:  # bleak's own errors: BleakError, TimeoutError, DBus errors
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise BleError(f"cannot connect to {target!r} over BLE: {e}") from None
        self.mtu = self._client.mtu_size
        self.name = target

    def _run(self, coro, timeout: float):
        return self._asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def write(self, data: bytes) -> int:
        """Write ``data`` to RX in MTU - 3 byte pieces, without response."""
        if not self.connected:
            raise BleDisconnectedError("the helmet is no longer connected over BLE")
        self.mtu = self._client.mtu_size
        for piece in self.chunks(data):
            self._run(self._client.write_gatt_char(NUS_RX, bytes(piece), response=False), 10.0)
        return len(data)

    def flush(self) -> None:
        """Writes are sent before ``write`` returns."""

    def close(self) -> None:
        """Disconnect and stop the event loop thread."""
        if self.is_open:
            self.is_open = False
            try:
                self._run(self._client.disconnect(), 10.0)
            except Exception:  # noqa: BLE001 - closing a link that already failed
                pass
            self._on_lost()
            self._loop.call_soon_threadsafe(self._loop.stop)


def open_ble(target: str, air: SimAir | None = None, mtu: int = 247, timeout: float = 10.0):
    """A pyserial-like port to the helmet ``target`` (name or address): on the simulated
    ``air`` when given, else on the host's real radio through bleak."""
    if air is not None:
        return air.connect(target, mtu=mtu, timeout=timeout)
    return BleakSerial(target, connect_timeout=timeout)
