"""Simulated BLE radio: the part of MicroPython's ``bluetooth`` module that link_ble uses.

No radio exists where painhelm is tested, so this module stands in for ``bluetooth``:
``link_ble.BleLink(bt=ble_sim)`` runs the same code it runs on a board. Behind the API, the
"air" is a local TCP connection to a host-side simulated central (``SimAir`` in
``painhelm.host_tools.ble``), which scans, connects, exchanges the MTU, writes and receives
notifications like a phone or a treatment device would.

What is modelled, as MicroPython 1.29 documents and does it:

* ``BLE()`` returns one radio object; ``active(True)`` attaches it to the air (OSError when
  no air listens, as when a board has no controller); ``active(False)`` detaches.
* IRQs (``_IRQ_CENTRAL_CONNECT`` 1, ``_IRQ_CENTRAL_DISCONNECT`` 2, ``_IRQ_GATTS_WRITE`` 3,
  ``_IRQ_MTU_EXCHANGED`` 21) arrive asynchronously: on MicroPython a doorbell thread waits on
  the air socket and ``micropython.schedule``s the handler, so it runs between two bytecodes
  of the application, as a board's stack delivers its events; on CPython a radio thread
  calls it.
* ``gatts_register_services`` hands out value handles; ``gatts_set_buffer(h, size, append)``
  bounds what a central's write can store (default 20 bytes, longer writes are cut, as on a
  board); with ``append`` writes accumulate and ``gatts_read`` returns and clears them.
* ``gap_advertise(interval_us, adv_data, resp_data=, connectable=)``: payloads over 31 bytes
  raise OSError(EINVAL); a connection stops advertising (the application re-advertises).
* MTU: the central asks with its MTU, the peripheral answers with ``config('mtu')``, both use
  the smaller; ``_IRQ_MTU_EXCHANGED`` reports it. Until then the MTU is 23.
* ``gatts_notify`` of more than MTU - 3 bytes is cut to MTU - 3 (NimBLE does the same), so a
  link that forgets to chunk loses data here as it would on air; OSError(ENOTCONN) for a
  connection that is gone. ``sim_fail_notify(n)`` makes the next n notifications fail with
  OSError(ENOMEM), as a board does when its transmit buffers are full.

Where the air is: the module global ``AIR`` ("host:port"), else the environment variable
``PAINHELM_BLE_AIR``, else ``127.0.0.1:18540``. The air protocol (both ends): messages of
``<BH`` (type, body length) + body; see the _HELLO.._MTU_REQ constants.
"""

import os
import struct
import sys

try:
    import select
    import socket
except ImportError:  # a board: this module is for the unix port and CPython only
    select = socket = None

try:
    from micropython import const, schedule
    import _thread
    import time

    _MPY = True
except ImportError:  # CPython
    import threading
    import time

    _MPY = False

    def const(x):
        return x

try:
    from errno import EINVAL, ENOMEM, ENOTCONN, EPERM
except ImportError:
    EINVAL, ENOMEM, ENOTCONN, EPERM = 22, 12, 107, 1

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

# air messages, peripheral -> air
_HELLO = const(1)  # addr(6) + gap name
_GATT = const(2)  # entries: kind u8 (1 service, 2 characteristic), uuid len u8, uuid; char: flags u16, handle u16
_ADV = const(3)  # interval_us u32 (0: stop), connectable u8, len(adv) u8, adv, resp
_NOTIFY = const(4)  # conn u16, handle u16, data
_DISCONNECT = const(5)  # conn u16: the peripheral ends a connection
_MTU_RSP = const(6)  # conn u16, server mtu u16
_WRITE_RSP = const(7)  # conn u16, handle u16
_NAME = const(8)  # gap name
# air -> peripheral
_CONNECT = const(16)  # conn u16, addr type u8, addr(6)
_DISCONNECTED = const(17)  # conn u16, reason u8
_WRITE = const(18)  # conn u16, handle u16, wants response u8, data
_MTU_REQ = const(19)  # conn u16, client mtu u16

_MSG_HEADER = "<BH"
_ADV_MAX = const(31)
_MTU_MIN = const(23)
_MTU_MAX = const(517)
_DEFAULT_BUFFER = const(20)  # a characteristic's write buffer until gatts_set_buffer
_IN_SIZE = const(8192)  # air receive buffer; no air message is longer than ~530 bytes
DEFAULT_AIR = "127.0.0.1:18540"
AIR = None


def _air_address():
    air = AIR
    if air is None and hasattr(os, "getenv"):
        air = os.getenv("PAINHELM_BLE_AIR")
    host, port = (air or DEFAULT_AIR).rsplit(":", 1)
    return socket.getaddrinfo(host, int(port))[0][-1]


def _print_exception(e):
    if _MPY:
        sys.print_exception(e)
    else:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__)


class UUID:
    """``bluetooth.UUID``: from a 16-bit int or a 128-bit string; compares by value."""

    def __init__(self, value):
        if isinstance(value, UUID):
            self._b = value._b
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("invalid UUID")
            self._b = struct.pack("<H", value)
        else:
            h = str(value).replace("-", "")
            if len(h) != 32:
                raise ValueError("invalid UUID")
            from binascii import unhexlify

            self._b = bytes(reversed(unhexlify(h)))  # little-endian, like bytes(bluetooth.UUID)

    def __eq__(self, other):
        return isinstance(other, UUID) and self._b == other._b

    def __hash__(self):
        return hash(self._b)

    def __bytes__(self):
        return self._b

    def __repr__(self):
        if len(self._b) == 2:
            return "UUID(0x%04x)" % struct.unpack("<H", self._b)[0]
        h = "".join(["%02x" % c for c in reversed(self._b)])
        return "UUID('%s-%s-%s-%s-%s')" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Radio:
    """The one simulated ``bluetooth.BLE`` object."""

    def __init__(self):
        self._sock = None
        self._poller = None
        self._handler = None
        self._name = b"MPY SIM"
        self._mtu = _MTU_MIN
        self._addr = os.urandom(6)
        self._values = {}  # value handle -> [bytearray buffer, length, append]
        self._flags = {}
        self._next_handle = 16
        self._conns = {}  # conn handle -> [mtu, addr type, addr]
        self._adv = b""
        self._resp = b""
        self._in = bytearray(_IN_SIZE)
        self._in_mv = memoryview(self._in)
        self._n = 0
        self._pending = False
        self._stop = True
        self._lost = False  # the air closed on us
        self._thread_done = True
        self._fail_notify = 0
        self.sim_truncated = 0  # notifications cut to MTU - 3
        # MicroPython: the handler runs in the scheduler, never concurrently with itself or
        # with the application; CPython: the radio thread runs it, a lock keeps the air
        # socket and the value buffers consistent.
        self._lock = _NoLock() if _MPY else threading.RLock()

    # ------------------------------------------------------------------ bluetooth.BLE API
    def active(self, change=None):
        if change is None:
            return self._sock is not None
        if change and self._sock is None:
            s = socket.socket()
            try:
                s.connect(_air_address())
            except OSError:
                s.close()
                raise
            try:
                s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: one air message, one segment
            except OSError:
                pass
            self._sock = s
            self._poller = select.poll()
            self._poller.register(s, select.POLLIN)
            self._n = 0
            self._stop = False
            self._lost = False
            self._thread_done = False
            self._send(_HELLO, self._addr + self._name)
            if _MPY:
                _thread.start_new_thread(self._doorbell, ())
            else:
                threading.Thread(target=self._radio_thread, name="ble-sim", daemon=True).start()
        elif not change and self._sock is not None:
            self._stop = True
            for _ in range(100):  # the waiting thread wakes within 50 ms
                if self._thread_done:
                    break
                time.sleep(0.005)
            with self._lock:
                self._sock.close()
                self._sock = None
                self._conns = {}
        return self._sock is not None

    def config(self, *args, **kwargs):
        if args:
            if len(args) != 1 or kwargs:
                raise TypeError("config takes one name or keyword settings")
            key = args[0]
            if key == "mtu":
                return self._mtu
            if key == "gap_name":
                return self._name
            if key == "mac":
                return (0, self._addr)
            if key == "rxbuf":
                return _IN_SIZE
            raise ValueError("unknown config param")
        for key in kwargs:
            value = kwargs[key]
            if key == "mtu":
                if not _MTU_MIN <= value <= _MTU_MAX:
                    raise OSError(EINVAL)
                self._mtu = value
            elif key == "gap_name":
                self._name = value.encode() if isinstance(value, str) else bytes(value)
                if self._sock is not None:
                    self._send(_NAME, self._name)
            elif key == "rxbuf":
                pass
            else:
                raise ValueError("unknown config param")

    def irq(self, handler):
        self._handler = handler

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self._need_active()
        if adv_data is not None:
            self._adv = bytes(adv_data)
        if resp_data is not None:
            self._resp = bytes(resp_data)
        if len(self._adv) > _ADV_MAX or len(self._resp) > _ADV_MAX:
            raise OSError(EINVAL)
        interval = 0 if interval_us is None else max(1, int(interval_us))
        self._send(_ADV, struct.pack("<IBB", interval, 1 if connectable else 0, len(self._adv))
                   + self._adv + self._resp)

    def gap_disconnect(self, conn_handle):
        self._need_active()
        if conn_handle not in self._conns:
            return False
        self._send(_DISCONNECT, struct.pack("<H", conn_handle))
        return True

    def gatts_register_services(self, services):
        self._need_active()
        table = bytearray()
        result = []
        h = self._next_handle
        for service in services:
            suuid = UUID(service[0])._b
            table += struct.pack("<BB", 1, len(suuid)) + suuid
            h += 1  # service declaration
            handles = []
            for ch in service[1]:
                cuuid, flags = UUID(ch[0])._b, ch[1]
                h += 1  # characteristic declaration
                value = h
                h += 1
                if flags & (FLAG_NOTIFY | FLAG_INDICATE):
                    h += 1  # client characteristic configuration descriptor
                self._values[value] = [bytearray(_DEFAULT_BUFFER), 0, False]
                self._flags[value] = flags
                table += struct.pack("<BB", 2, len(cuuid)) + cuuid + struct.pack("<HH", flags, value)
                handles.append(value)
            result.append(tuple(handles))
        self._next_handle = h
        self._send(_GATT, bytes(table))
        return tuple(result)

    def gatts_read(self, value_handle):
        with self._lock:
            v = self._value(value_handle)
            data = bytes(memoryview(v[0])[: v[1]])
            if v[2]:
                v[1] = 0  # append mode: reading consumes
            return data

    def gatts_write(self, value_handle, data, send_update=False):
        with self._lock:
            v = self._value(value_handle)
            n = len(data)
            if n > len(v[0]):
                v[0] = bytearray(n)  # a local write grows the buffer, as on a board
            memoryview(v[0])[:n] = data
            v[1] = n
        if send_update:
            for conn in list(self._conns):
                self.gatts_notify(conn, value_handle)

    def gatts_set_buffer(self, value_handle, size, append=False):
        with self._lock:
            v = self._value(value_handle)
            v[0] = bytearray(size)
            v[1] = 0
            v[2] = bool(append)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        self._need_active()
        with self._lock:
            conn = self._conns.get(conn_handle)
            if conn is None:
                raise OSError(ENOTCONN)
            if self._fail_notify:
                self._fail_notify -= 1
                raise OSError(ENOMEM)
            if data is None:
                v = self._value(value_handle)
                data = memoryview(v[0])[: v[1]]
            n = len(data)
            if n > conn[0] - 3:
                n = conn[0] - 3
                self.sim_truncated += 1
            self._send(_NOTIFY, struct.pack("<HH", conn_handle, value_handle) + bytes(memoryview(data)[:n]))

    # ------------------------------------------------------------------ test hooks (not bluetooth API)
    def sim_fail_notify(self, count):
        """Make the next ``count`` gatts_notify calls fail with OSError(ENOMEM)."""
        self._fail_notify = count

    # ------------------------------------------------------------------ the air
    def _need_active(self):
        if self._sock is None:
            raise OSError(EPERM)

    def _value(self, handle):
        v = self._values.get(handle)
        if v is None:
            raise ValueError("invalid handle")
        return v

    def _send(self, kind, body):
        if self._lost:  # the air is gone: like a controller that vanished, nothing goes out
            return
        with self._lock:  # one sendall per message: a scheduled IRQ cannot split it
            self._sock.sendall(struct.pack(_MSG_HEADER, kind, len(body)) + body)

    def _doorbell(self):
        # MicroPython: wait for the air here, handle it in the scheduler (main thread).
        p = select.poll()
        p.register(self._sock, select.POLLIN)
        try:
            while not self._stop:
                if self._pending:
                    time.sleep_ms(1)
                    continue
                if p.poll(50) and not self._stop:
                    self._pending = True
                    try:
                        schedule(self._pump, None)
                    except RuntimeError:  # schedule queue full: try again
                        self._pending = False
                        time.sleep_ms(1)
        finally:
            self._thread_done = True

    def _radio_thread(self):
        p = select.poll()
        p.register(self._sock, select.POLLIN)
        try:
            while not self._stop:
                if p.poll(50) and not self._stop:
                    self._pump(None)
        finally:
            self._thread_done = True

    def _pump(self, _):
        try:
            with self._lock:
                while self._sock is not None and not self._stop and self._poller.poll(0):
                    data = self._sock.recv(min(2048, _IN_SIZE - self._n))
                    if not data:
                        self._air_lost()
                        return
                    self._in_mv[self._n : self._n + len(data)] = data
                    self._n += len(data)
                    self._parse()
        except Exception as e:  # noqa: BLE001 - an IRQ handler error must not stop the radio
            print("ble_sim: error in the radio:")
            _print_exception(e)
        finally:
            self._pending = False

    def _parse(self):
        buf, mv, n = self._in, self._in_mv, self._n
        i = 0
        while n - i >= 3:
            kind, length = struct.unpack_from(_MSG_HEADER, buf, i)
            if n - i - 3 < length:
                break
            self._on_message(kind, mv[i + 3 : i + 3 + length])
            i += 3 + length
        if i:
            mv[: n - i] = mv[i:n]
            self._n = n - i

    def _on_message(self, kind, body):
        if kind == _WRITE:
            conn, handle, rsp = struct.unpack_from("<HHB", body, 0)
            v = self._values.get(handle)
            if v is None or conn not in self._conns or not self._flags[handle] & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE):
                return
            data = body[5:]
            start = v[1] if v[2] else 0
            k = min(len(data), len(v[0]) - start)  # longer writes are cut to the buffer
            memoryview(v[0])[start : start + k] = data[:k]
            v[1] = start + k
            if rsp:
                self._send(_WRITE_RSP, struct.pack("<HH", conn, handle))
            self._irq(_IRQ_GATTS_WRITE, (conn, handle))
        elif kind == _CONNECT:
            conn, addr_type = struct.unpack_from("<HB", body, 0)
            addr = bytes(body[3:9])
            self._conns[conn] = [_MTU_MIN, addr_type, addr]
            self._irq(_IRQ_CENTRAL_CONNECT, (conn, addr_type, addr))
        elif kind == _DISCONNECTED:
            conn = struct.unpack_from("<H", body, 0)[0]
            c = self._conns.pop(conn, None)
            if c is not None:
                self._irq(_IRQ_CENTRAL_DISCONNECT, (conn, c[1], c[2]))
        elif kind == _MTU_REQ:
            conn, client_mtu = struct.unpack_from("<HH", body, 0)
            c = self._conns.get(conn)
            if c is None:
                return
            self._send(_MTU_RSP, struct.pack("<HH", conn, self._mtu))
            c[0] = max(_MTU_MIN, min(client_mtu, self._mtu))
            self._irq(_IRQ_MTU_EXCHANGED, (conn, c[0]))

    def _air_lost(self):
        """The air went away (host side closed): every connection drops."""
        conns, self._conns = self._conns, {}
        self._stop = True
        self._lost = True
        for conn in conns:
            self._irq(_IRQ_CENTRAL_DISCONNECT, (conn, conns[conn][1], conns[conn][2]))

    def _irq(self, event, data):
        handler = self._handler
        if handler is None:
            return
        try:
            handler(event, data)
        except Exception as e:  # noqa: BLE001 - as a board: print, keep the stack running
            print("ble_sim: uncaught exception in IRQ callback handler")
            _print_exception(e)


_radio = None


def BLE():
    """The radio singleton, like ``bluetooth.BLE()``."""
    global _radio
    if _radio is None:
        _radio = _Radio()
    return _radio
