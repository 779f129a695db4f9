"""painhelm wire protocol v0: framed messages between the helmet and a host or treatment device.

This module is the single definition of the protocol; the host imports it as
``painhelm.firmware.wire``. It runs unchanged on MicroPython and CPython.

Frame (little-endian)::

    0  version     u8   (PROTOCOL_VERSION)
    1  msg type    u8   (MSG_*)
    2  seq         u16  (a reply carries the seq of the request it answers)
    4  length      u16  (payload bytes, at most MAX_PAYLOAD)
    6  payload     length bytes
    .. crc32       u32  (binascii.crc32 of everything before it)

On a serial console (UART, USB-CDC, a pty) the same UART also carries the REPL, so each
frame travels as one text line: ``$`` + base64(frame) + ``\\n``. Base64 never contains
Ctrl-A..Ctrl-E (which drive the raw REPL) nor Ctrl-C (which interrupts the firmware), so a
host can always break in to flash. Anything on the line that is not a frame (boot banner,
prints, tracebacks) is handed to a separate text hook, never mistaken for a frame.
"""

import struct
from binascii import a2b_base64, b2a_base64, crc32

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

PROTOCOL_VERSION = const(0)

MSG_PING = const(0x01)  # host -> device, empty payload
MSG_PONG = const(0x02)  # device -> host, payload: INFO json
MSG_INFER = const(0x10)  # host -> device, payload: pack_window()
MSG_REPORT = const(0x11)  # device -> host, payload: pack_report()
MSG_ERROR = const(0x7F)  # device -> host, payload: u8 code + utf-8 text

ERR_BAD_FRAME = const(1)
ERR_UNKNOWN_TYPE = const(2)
ERR_BAD_PAYLOAD = const(3)
ERR_NO_MODEL = const(4)
ERR_INTERNAL = const(5)

MAX_PAYLOAD = const(32768)
HEADER_SIZE = const(6)
CRC_SIZE = const(4)
_LINE_START = const(0x24)  # '$'
_NL = const(0x0A)
# base64 of a full frame plus '$' and '\n'
MAX_LINE = const(((HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE + 2) // 3) * 4 + 2)

WINDOW_HEADER = "<HHf"  # n_ch, n_times, sfreq; then n_ch*n_times float32, channel-major
REPORT_HEADER = "<bbBBHIIBB"  # level, location, level_conf, location_conf, quality, t_ms, infer_us, n_level, n_location
UNCERTAIN = const(-1)
NO_HEAD = const(-2)  # the model has no such head (a single-task bundle)


class FrameError(ValueError):
    """A frame that cannot be decoded: bad base64, length, version or CRC."""


def encode_frame(msg_type, seq, payload=b""):
    """Return the binary frame for one message."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError("payload is %d bytes, MAX_PAYLOAD is %d" % (n, MAX_PAYLOAD))
    body = struct.pack("<BBHH", PROTOCOL_VERSION, msg_type, seq & 0xFFFF, n) + bytes(payload)
    return body + struct.pack("<I", crc32(body) & 0xFFFFFFFF)


def decode_frame(frame):
    """Return ``(msg_type, seq, payload)`` of a binary frame; raise FrameError if it is bad."""
    n = len(frame)
    if n < HEADER_SIZE + CRC_SIZE:
        raise FrameError("frame is %d bytes, shorter than header and crc" % n)
    version, msg_type, seq, length = struct.unpack_from("<BBHH", frame, 0)
    if version != PROTOCOL_VERSION:
        raise FrameError("protocol version %d, expected %d" % (version, PROTOCOL_VERSION))
    if length > MAX_PAYLOAD or HEADER_SIZE + length + CRC_SIZE != n:
        raise FrameError("length field %d does not match frame of %d bytes" % (length, n))
    mv = memoryview(frame)
    crc = struct.unpack_from("<I", frame, n - CRC_SIZE)[0]
    if crc32(mv[: n - CRC_SIZE]) & 0xFFFFFFFF != crc:
        raise FrameError("crc mismatch")
    return msg_type, seq, mv[HEADER_SIZE : n - CRC_SIZE]


def encode_line(msg_type, seq, payload=b""):
    """Return the serial-console form of a message: ``$`` + base64(frame) + newline."""
    return b"$" + b2a_base64(encode_frame(msg_type, seq, payload)).rstrip(b"\n") + b"\n"


class LineParser:
    """Feed it bytes from a serial console; it calls ``handle_frame(msg_type, seq, payload)``.

    Bytes that are not part of a ``$...`` frame line go to ``handle_text(line_bytes)``; a
    line that looks like a frame but fails to decode goes to ``handle_error(exc)``. The line
    buffer is allocated once; an over-long line is dropped whole (and reported), so a
    corrupted stream can never grow memory.
    """

    def __init__(self, handle_frame, handle_text=None, handle_error=None, max_line=MAX_LINE):
        self.handle_frame = handle_frame
        self.handle_text = handle_text
        self.handle_error = handle_error
        self._buf = bytearray(max_line)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._overflow = False
        self.frames = 0
        self.errors = 0

    def feed(self, data):
        """Consume ``data`` (bytes or bytearray); dispatch every complete line in it."""
        buf = self._buf
        cap = len(buf)
        start = 0
        end = len(data)
        while start < end:
            nl = data.find(b"\n", start)
            stop = end if nl < 0 else nl
            take = stop - start
            if not self._overflow:
                if self._n + take > cap:
                    self._overflow = True
                else:
                    self._mv[self._n : self._n + take] = data[start:stop]
                    self._n += take
            if nl < 0:
                return
            self._line_done()
            start = nl + 1

    def _line_done(self):
        n = self._n
        self._n = 0
        if self._overflow:
            self._overflow = False
            self._error(FrameError("line longer than %d bytes dropped" % len(self._buf)))
            return
        line = self._mv[:n]
        if n and line[n - 1] == 0x0D:  # tolerate CRLF from consoles
            n -= 1
            line = self._mv[:n]
        # a frame may follow REPL noise on the same line (e.g. after a prompt); the common
        # case, a line that starts with '$', is decided without copying the line
        if n and line[0] == _LINE_START:
            i = 0
        else:
            i = bytes(line).find(b"$") if n else -1
        if i < 0:
            if self.handle_text is not None and n:
                self.handle_text(bytes(line))
            return
        if i > 0 and self.handle_text is not None:
            self.handle_text(bytes(line[:i]))
        try:
            frame = a2b_base64(line[i + 1 : n])
            msg_type, seq, payload = decode_frame(frame)
        except (ValueError, FrameError) as e:  # binascii.Error is a ValueError
            self._error(e if isinstance(e, FrameError) else FrameError("bad base64: %s" % e))
            return
        self.frames += 1
        self.handle_frame(msg_type, seq, payload)

    def _error(self, exc):
        self.errors += 1
        if self.handle_error is not None:
            self.handle_error(exc)


def pack_window(data, n_ch, n_times, sfreq):
    """Payload of MSG_INFER: ``data`` is the bytes of n_ch*n_times little-endian float32
    samples, channel-major, in µV."""
    if len(data) != 4 * n_ch * n_times:
        raise ValueError("window has %d bytes, expected 4*n_ch*n_times = %d" % (len(data), 4 * n_ch * n_times))
    return struct.pack(WINDOW_HEADER, n_ch, n_times, sfreq) + bytes(data)


def unpack_window_header(payload):
    """Return ``(n_ch, n_times, sfreq, offset)``; samples start at ``offset``."""
    size = struct.calcsize(WINDOW_HEADER)
    if len(payload) < size:
        raise ValueError("window payload is %d bytes, header needs %d" % (len(payload), size))
    n_ch, n_times, sfreq = struct.unpack_from(WINDOW_HEADER, payload, 0)
    if len(payload) != size + 4 * n_ch * n_times:
        raise ValueError("window payload is %d bytes, expected %d for %d x %d samples"
                         % (len(payload), size + 4 * n_ch * n_times, n_ch, n_times))
    return n_ch, n_times, sfreq, size


def pack_report(level, location, level_conf, location_conf, quality, t_ms, infer_us,
                level_q, location_q):
    """Payload of MSG_REPORT.

    ``level``/``location`` are class indices, UNCERTAIN or NO_HEAD; confidences are 0..255;
    ``quality`` is a bit field of signal-quality flags (0 = good); ``level_q`` and
    ``location_q`` are the model's raw int8 output logits, so a host can check the device
    bit for bit.
    """
    return (struct.pack(REPORT_HEADER, level, location, level_conf, location_conf, quality,
                        t_ms & 0xFFFFFFFF, infer_us & 0xFFFFFFFF, len(level_q), len(location_q))
            + bytes([v & 0xFF for v in level_q]) + bytes([v & 0xFF for v in location_q]))


def unpack_report(payload):
    """Return a dict of a MSG_REPORT payload (see pack_report)."""
    size = struct.calcsize(REPORT_HEADER)
    if len(payload) < size:
        raise ValueError("report payload is %d bytes, header needs %d" % (len(payload), size))
    lv, loc, lc, oc, q, t_ms, infer_us, n_lv, n_loc = struct.unpack_from(REPORT_HEADER, payload, 0)
    if len(payload) != size + n_lv + n_loc:
        raise ValueError("report payload is %d bytes, expected %d" % (len(payload), size + n_lv + n_loc))
    raw = bytes(payload[size:])
    return {
        "level": lv, "location": loc, "level_conf": lc, "location_conf": oc,
        "quality": q, "t_ms": t_ms, "infer_us": infer_us,
        "level_q": [b - 256 if b > 127 else b for b in raw[:n_lv]],
        "location_q": [b - 256 if b > 127 else b for b in raw[n_lv:]],
    }


def pack_error(code, text):
    """Payload of MSG_ERROR."""
    return bytes((code,)) + str(text).encode()[:200]


def unpack_error(payload):
    """Return ``(code, text)`` of a MSG_ERROR payload."""
    payload = bytes(payload)
    return (payload[0] if payload else 0), payload[1:].decode()
