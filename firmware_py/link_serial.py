"""Serial link of the helmet: the console (UART / USB-CDC / a pty), a UART, or a tty device.

Frames travel as ``$base64\\n`` lines (wire.encode_line / wire.LineParser); this module only
moves bytes. The interface is shared with link_ble.BleLink, so the serve loop does not care
which link it has::

    link = SerialLink()           # the console: sys.stdin/sys.stdout (CPython: fds 0 and 1)
    data = link.poll()            # NON-BLOCKING: bytes received since the last call, or None
    n = link.readinto(buf)        # the same without allocating: bytes copied into buf
    link.write(line)              # send all bytes
    link.connected                # serial: always True (until close)
    link.closed                   # True after close(): a serve loop ends
    link.close()

Where the bytes come from:

* MicroPython, console (the default): ``select.poll`` on ``sys.stdin``, then
  ``sys.stdin.buffer``. On the unix port (the virtual helmet's pty) the tty is switched to
  VMIN=0 / VTIME=0 so one ``readinto`` returns whatever is waiting (100 KB in < 1 ms, against
  ~3 µs per byte one byte at a time); ``close`` restores the tty. On a board the console is
  read one byte per call while ``poll`` says more is ready, up to the receive buffer.
  Ctrl-C (0x03) keeps interrupting the firmware: base64 never contains it, so a host can
  always break in to flash.
* MicroPython, ``port`` a ``machine.UART``: ``any()`` and ``readinto``.
* CPython (Raspberry Pi): ``port`` a device path (``/dev/serial0``, ``/dev/ttyUSB0``) is
  opened with pyserial, non-blocking; ``port`` None uses fds 0 and 1 with select + os.read.
  ``port`` may also be an open pyserial-like object (``in_waiting``, ``read``, ``write``).
"""

import sys

try:
    import select
except ImportError:  # a port built without select: only UART objects work
    select = None

_LINUX_VTIME = 5  # termios c_cc indices on Linux (the unix port's termios exports no names)
_LINUX_VMIN = 6


class SerialLink:
    """Non-blocking byte link over a serial console, UART or tty device.

    Parameters: ``port`` None (the console), a device path (CPython, via pyserial), a
    ``machine.UART`` or a pyserial-like object; ``baudrate`` for a device path;
    ``rx_size`` the receive buffer (the most bytes one ``poll`` returns).
    """

    def __init__(self, port=None, baudrate=115200, rx_size=1024):
        if rx_size < 1:
            raise ValueError("rx_size must be at least 1, got %d" % rx_size)
        self.connected = True
        self.closed = False
        self._buf = bytearray(rx_size)
        self._mv = memoryview(self._buf)
        self._one = bytearray(1)
        self._tty = None  # saved termios of fd 0 (unix port console)
        self._poller = None
        self._fd_in = -1
        self._fd_out = -1
        self._in = None
        self._out = None
        self._ser = None  # pyserial-like or UART object
        self._own = False  # we opened it, we close it
        self._mpy = sys.implementation.name == "micropython"
        if port is None:
            self._open_console()
        elif isinstance(port, str):
            if self._mpy:
                raise ValueError("port %r: on MicroPython pass None (the console) or a machine.UART" % port)
            import serial  # pyserial

            self._ser = serial.Serial(port, baudrate, timeout=0, write_timeout=10)
            self._own = True
        else:
            self._ser = port

    def _open_console(self):
        if self._mpy:
            self._in = sys.stdin.buffer
            self._out = sys.stdout.buffer
            self._poller = select.poll()
            self._poller.register(sys.stdin, select.POLLIN)
            try:
                import termios

                saved = termios.tcgetattr(0)
                fast = termios.tcgetattr(0)
                fast[6][_LINUX_VMIN] = 0
                fast[6][_LINUX_VTIME] = 0
                termios.tcsetattr(0, termios.TCSANOW, fast)
                self._tty = saved
            except (ImportError, OSError, TypeError, IndexError):
                self._tty = None  # a board's console: read byte by byte
        else:
            import os

            self._os = os
            self._fd_in = sys.stdin.fileno()
            self._fd_out = sys.stdout.fileno()
            self._poller = select.poll()
            self._poller.register(self._fd_in, select.POLLIN)

    def readinto(self, buf):
        """Copy the bytes received since the last call into ``buf``; return how many (0: none)."""
        cap = len(buf)
        ser = self._ser
        if ser is not None:
            if hasattr(ser, "any"):  # machine.UART
                n = ser.any()
                if not n:
                    return 0
                return ser.readinto(buf, min(n, cap)) or 0
            n = ser.in_waiting
            if not n:
                return 0
            data = ser.read(min(n, cap))
            buf[: len(data)] = data
            return len(data)
        if not self._poller.poll(0):
            return 0
        if self._fd_in >= 0:  # CPython console
            data = self._os.read(self._fd_in, cap)
            buf[: len(data)] = data
            return len(data)
        if self._tty is not None:  # unix port: VMIN=0, one read returns what is waiting
            return self._in.readinto(buf) or 0
        one = self._one
        n = 0
        while n < cap:
            if not self._in.readinto(one):
                break
            buf[n] = one[0]
            n += 1
            if not self._poller.poll(0):
                break
        return n

    def poll(self):
        """NON-BLOCKING: the bytes received since the last call, or None."""
        n = self.readinto(self._buf)
        return bytes(self._mv[:n]) if n else None

    def write(self, data):
        """Send all of ``data``."""
        if self._ser is not None:
            self._ser.write(data)
            return
        if self._fd_out >= 0:  # CPython console: after any text print() left in sys.stdout
            sys.stdout.flush()
            mv = memoryview(data)
            while len(mv):
                mv = mv[self._os.write(self._fd_out, mv):]
            return
        n = self._out.write(data)
        if n is not None and n < len(data):
            mv = memoryview(data)
            while n < len(data):
                n += self._out.write(mv[n:]) or 0

    def close(self):
        """Restore the console tty, close a port this link opened."""
        if self._tty is not None:
            import termios

            termios.tcsetattr(0, termios.TCSANOW, self._tty)
            self._tty = None
        if self._own and self._ser is not None:
            self._ser.close()
        self._ser = None
        self.connected = False
        self.closed = True
