"""BLE link of the helmet: a GATT peripheral with the Nordic UART Service (NUS).

Same interface as link_serial.SerialLink (``poll``, ``readinto``, ``write``, ``connected``,
``closed``, ``close``), and the same ``$base64\\n`` lines travel over it, so one
wire.LineParser serves both. A central (a phone, the treatment device,
``painhelm.host_tools.ble``) writes to RX and subscribes to TX notifications::

    service  6E400001-B5A3-F393-E0A9-E50E24DCCA9E  Nordic UART Service
    RX       6E400002-...  write, write without response   central -> helmet
    TX       6E400003-...  notify                          helmet -> central

Written against MicroPython's low-level ``bluetooth`` module (the API aioble itself is built
on), not aioble: aioble is asyncio-based and would make the helmet's synchronous serve loop
an asyncio program, and it allocates per event (tasks, futures, per-write bytes). Here the
IRQ handler only copies a write into a preallocated receive ring and records connection
state; the serve loop drains the ring with ``poll``/``readinto`` between windows, exactly
as it drains a UART. docs/protocol.md discusses the choice.

Behaviour:

* advertises ``name`` (adv data: flags + complete local name) with the NUS UUID in the scan
  response (31-byte limit each), connectable, every ``interval_us``;
* one central at a time: a second connection is refused (disconnected at once);
* received bytes go into a ring of ``rx_size`` bytes; when full, the excess is dropped and
  counted in ``rx_dropped``, and a newline is stored as soon as there is room again, so the
  LineParser sees one damaged line (ERR_BAD_FRAME) and the next frame arrives whole - the
  link never grows memory;
* ``write`` cuts the bytes into notifications of MTU - 3 bytes (20 until the central
  exchanges a bigger MTU; ``mtu`` asks for up to 247), retrying while the stack's buffers
  are full (OSError) for up to ``write_timeout_ms``; with no central the bytes are dropped
  (counted in ``tx_dropped``), as a UART with nothing attached drops them;
* on disconnect: a newline goes into the ring (a half-received line cannot merge with the
  next central's first line), the MTU goes back to 23 and advertising restarts.

``bt`` is the module that provides ``BLE`` and ``UUID``: ``bluetooth`` on a board (the
default), ``ble_sim`` in tests and on the virtual helmet. On a Raspberry Pi (CPython,
BlueZ) there is no ``bluetooth`` module; see docs/protocol.md.
"""

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x


try:  # one definition of the clock (clock.py)
    from .clock import ticks_ms as _ticks_ms, ticks_diff as _ticks_diff, sleep_ms as _sleep_ms
except ImportError:
    from clock import ticks_ms as _ticks_ms, ticks_diff as _ticks_diff, sleep_ms as _sleep_ms


_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)

_ADV_TYPE_FLAGS = const(0x01)
_ADV_TYPE_UUID128_COMPLETE = const(0x07)
_ADV_TYPE_NAME = const(0x09)
_ADV_FLAGS = const(0x06)  # LE general discoverable, BR/EDR not supported
_ADV_MAX = const(31)
_MTU_MIN = const(23)  # ATT default MTU; a notification carries MTU - 3 bytes
_ATT_HEADER = const(3)
_ENOTCONN = const(107)

NUS_SERVICE = "6E400001-B5A3-F393-E0A9-E50E24DCCA9E"
NUS_RX = "6E400002-B5A3-F393-E0A9-E50E24DCCA9E"
NUS_TX = "6E400003-B5A3-F393-E0A9-E50E24DCCA9E"


def uuid128_le(text):
    """The 16 little-endian bytes of a 128-bit UUID string (as carried in advertising)."""
    from binascii import unhexlify

    h = text.replace("-", "")
    if len(h) != 32:
        raise ValueError("UUID %r is not 128-bit" % text)
    return bytes(reversed(unhexlify(h)))


def adv_payload(name=None, uuids128=(), flags=False):
    """Advertising data: [flags], [complete local name], [complete list of 128-bit UUIDs]."""
    p = bytearray()
    if flags:
        p += bytes((2, _ADV_TYPE_FLAGS, _ADV_FLAGS))
    if name is not None:
        n = name.encode()
        p += bytes((len(n) + 1, _ADV_TYPE_NAME)) + n
    if uuids128:
        u = b"".join([uuid128_le(t) for t in uuids128])
        p += bytes((len(u) + 1, _ADV_TYPE_UUID128_COMPLETE)) + u
    if len(p) > _ADV_MAX:
        raise ValueError("advertising data is %d bytes, at most %d fit (shorten the name)" % (len(p), _ADV_MAX))
    return bytes(p)


class BleLink:
    """Nordic UART Service peripheral with the serial link's non-blocking interface.

    Parameters: ``name`` advertised (up to 26 utf-8 bytes); ``bt`` the bluetooth module
    (default: ``import bluetooth``); ``rx_size`` the receive ring; ``mtu`` the ATT MTU offered
    in an exchange (23..517); ``interval_us`` the advertising interval; ``rx_buf`` the stack's
    buffer for writes not yet handled; ``write_timeout_ms`` how long ``write`` waits for the
    stack's transmit buffers.
    """

    def __init__(self, name="painhelm", bt=None, rx_size=4096, mtu=247, interval_us=100000,
                 rx_buf=1024, write_timeout_ms=2000):
        if rx_size < 2:
            raise ValueError("rx_size must be at least 2, got %d" % rx_size)
        if not _MTU_MIN <= mtu <= 517:
            raise ValueError("mtu must be within 23..517, got %d" % mtu)
        if bt is None:
            import bluetooth as bt
        self._adv = adv_payload(name, flags=True)
        self._resp = adv_payload(uuids128=(NUS_SERVICE,))  # the service goes in the scan response
        self.name = name
        self.connected = False  # a central is connected
        self.closed = False  # close() was called: a serve loop ends
        self.mtu = _MTU_MIN
        self.connections = 0  # centrals that connected so far
        self.rx_dropped = 0  # bytes lost because the ring was full
        self.tx_dropped = 0  # bytes not sent (no central, or its buffers stayed full)
        self._conn = None
        self._chunk = _MTU_MIN - _ATT_HEADER
        self._interval_us = interval_us
        self._write_timeout_ms = write_timeout_ms
        self._size = rx_size
        self._ring = bytearray(rx_size)
        self._rmv = memoryview(self._ring)
        self._head = 0  # written by the IRQ handler only
        self._tail = 0  # written by poll/readinto only
        self._cut = False  # bytes were lost: a newline goes in first when room returns
        self._ble = ble = bt.BLE()
        ble.active(True)
        ble.config(gap_name=name)
        try:
            ble.config(mtu=mtu)
        except (ValueError, OSError):  # a port that cannot set it keeps its default
            pass
        ble.irq(self._irq)
        service = (bt.UUID(NUS_SERVICE), ((bt.UUID(NUS_TX), _FLAG_NOTIFY),
                                          (bt.UUID(NUS_RX), _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE)))
        ((self._tx, self._rx),) = ble.gatts_register_services((service,))
        ble.gatts_set_buffer(self._rx, rx_buf, True)
        self._advertise()

    # ------------------------------------------------------------------ IRQ side
    def _irq(self, event, data):
        if event == _IRQ_GATTS_WRITE:
            if data[1] == self._rx:
                self._put(self._ble.gatts_read(self._rx))
        elif event == _IRQ_CENTRAL_CONNECT:
            if self._conn is None:
                self._conn = data[0]
                self.mtu = _MTU_MIN
                self._chunk = _MTU_MIN - _ATT_HEADER
                self.connections += 1
                self.connected = True
            else:  # one central at a time
                self._ble.gap_disconnect(data[0])
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] == self._conn:
                self._conn = None
                self.connected = False
                self.mtu = _MTU_MIN
                self._chunk = _MTU_MIN - _ATT_HEADER
                self._cut = True  # end a half-received line before the next central's data
                self._put(b"")
                self._advertise()
        elif event == _IRQ_MTU_EXCHANGED:
            if data[0] == self._conn:
                self.mtu = data[1]
                self._chunk = data[1] - _ATT_HEADER

    def _put(self, data):
        """Copy ``data`` into the ring (IRQ side); what does not fit is dropped and counted.

        After a loss the next byte stored is a newline, so the damaged line ends where the
        loss happened (the parser reports it) instead of swallowing the next good frame."""
        size = self._size
        h = self._head
        free = (self._tail - h - 1) % size
        if self._cut:
            if not free:
                self.rx_dropped += len(data)
                return
            self._ring[h] = 0x0A
            h = (h + 1) % size
            free -= 1
            self._cut = False
        n = len(data)
        if n > free:
            self.rx_dropped += n - free
            n = free
            self._cut = True
        if n:
            src = memoryview(data)
            first = size - h if n > size - h else n
            self._rmv[h : h + first] = src[:first]
            if n > first:
                self._rmv[: n - first] = src[first:n]
            h = (h + n) % size
        self._head = h

    def _advertise(self):
        self._ble.gap_advertise(self._interval_us, adv_data=self._adv, resp_data=self._resp)

    # ------------------------------------------------------------------ application side
    def any(self):
        """Bytes waiting in the receive ring."""
        return (self._head - self._tail) % self._size

    def readinto(self, buf):
        """Copy the bytes received since the last call into ``buf``; return how many (0: none)."""
        size = self._size
        t = self._tail
        n = (self._head - t) % size
        if n > len(buf):
            n = len(buf)
        if not n:
            return 0
        dst = memoryview(buf)
        first = size - t if n > size - t else n
        dst[:first] = self._rmv[t : t + first]
        if n > first:
            dst[first:n] = self._rmv[: n - first]
        self._tail = (t + n) % size
        return n

    def poll(self):
        """NON-BLOCKING: the bytes received since the last call, or None."""
        size = self._size
        t = self._tail
        n = (self._head - t) % size
        if not n:
            return None
        if t + n <= size:
            data = bytes(self._rmv[t : t + n])
        else:
            data = bytes(self._rmv[t:size]) + bytes(self._rmv[: t + n - size])
        self._tail = (t + n) % size
        return data

    def write(self, data):
        """Notify ``data`` to the central in MTU - 3 byte pieces; return the bytes sent."""
        n = len(data)
        if self._conn is None:
            self.tx_dropped += n
            return 0
        mv = memoryview(data)
        i = 0
        start = _ticks_ms()
        while i < n:
            conn = self._conn
            if conn is None:  # the central left while we were sending
                break
            k = self._chunk if n - i > self._chunk else n - i
            try:
                self._ble.gatts_notify(conn, self._tx, mv[i : i + k])
                i += k
            except OSError as e:
                if e.args and e.args[0] == _ENOTCONN:
                    break
                if _ticks_diff(_ticks_ms(), start) >= self._write_timeout_ms:
                    break
                _sleep_ms(2)  # the stack's transmit buffers are full: let them drain
        if i < n:
            self.tx_dropped += n - i
        return i

    def close(self):
        """Stop advertising, drop the central, switch the radio off."""
        ble = self._ble
        if ble is None:
            return
        self._ble = None
        try:
            ble.gap_advertise(None)
            if self._conn is not None:
                ble.gap_disconnect(self._conn)
        except OSError:
            pass
        ble.irq(None)
        ble.active(False)
        self._conn = None
        self.connected = False
        self.closed = True
