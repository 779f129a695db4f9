"""painhelm wire protocol v1: framed messages between the helmet and a host or treatment device.

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

Conversation (v1). The host sends requests with seq 1..65535; every reply carries the
request's seq. The device's unsolicited frames (ready announcement, streamed reports,
heartbeats) carry seq 0.

* PING -> PONG (device info json).
* INFER (one window) -> REPORT, or ERROR.
* SAMPLES (a chunk of streamed samples) -> nothing; a REPORT (seq 0) follows each time a
  window completes.
* COMMAND (u8 code + json arguments) -> ACK (u8 status + text). Commands are idempotent
  per seq: a repeated seq (the host retrying after a lost ACK) gets the stored ACK again
  and is not executed twice.
* HEARTBEAT (device -> host, seq 0) at a fixed period while the firmware runs, so a
  treatment device can tell silence from calm: HEARTBEAT_MS by default (CMD_CONFIG
  ``heartbeat_ms`` changes it); a treatment device that hears none for
  HEARTBEAT_TIMEOUT_MS ramps its output to zero.
* Anything else -> ERROR ERR_UNKNOWN_TYPE; a damaged frame -> ERROR ERR_BAD_FRAME (seq 0).
* At start, after the ready PONG: ERROR ERR_BUNDLE_REFUSED (seq 0) when a bundle was refused
  (the helmet runs the previous one, or none: the PONG's state says which).

Bounds: a payload is at most MAX_PAYLOAD bytes (a frame MAX_FRAME, a line MAX_LINE); the
text of an ACK or ERROR at most MAX_TEXT bytes. docs/protocol.md has the whole contract.
"""

import struct
from binascii import a2b_base64, b2a_base64, crc32

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

PROTOCOL_VERSION = const(1)

MSG_PING = const(0x01)  # host -> device, empty payload
MSG_PONG = const(0x02)  # device -> host, payload: INFO json
MSG_ACK = const(0x03)  # device -> host, payload: pack_ack()
MSG_HEARTBEAT = const(0x04)  # device -> host (seq 0), payload: pack_heartbeat()
MSG_INFER = const(0x10)  # host -> device, payload: pack_window()
MSG_REPORT = const(0x11)  # device -> host, payload: pack_report()
MSG_SAMPLES = const(0x12)  # host -> device, payload: pack_samples()
MSG_COMMAND = const(0x20)  # host -> device, payload: pack_command()
MSG_ERROR = const(0x7F)  # device -> host, payload: u8 code + utf-8 text

# MSG_COMMAND codes
CMD_START = const(1)  # start acquisition from the configured source
CMD_STOP = const(2)  # stop acquisition
CMD_CONFIG = const(3)  # json args: settings to change (source, hop, backend, heartbeat_ms...)
CMD_RESET = const(4)  # forget the decision state (smoothing) and the ring buffer
CMD_REBOOT = const(5)  # reload config and bundle (soft reset on a board)

# MSG_ACK status
ACK_OK = const(0)
ACK_FAILED = const(1)  # understood but not done; the text says why
ACK_UNKNOWN = const(2)  # unknown command code

# device states in MSG_HEARTBEAT
STATE_IDLE = const(0)  # bundle loaded, not acquiring
STATE_STREAMING = const(1)  # acquiring and reporting
STATE_NO_BUNDLE = const(2)  # no usable bundle: every INFER is refused

ERR_BAD_FRAME = const(1)
ERR_UNKNOWN_TYPE = const(2)
ERR_BAD_PAYLOAD = const(3)
ERR_NO_MODEL = const(4)
ERR_INTERNAL = const(5)
ERR_BAD_COMMAND = const(6)
ERR_BUNDLE_REFUSED = const(7)  # seq 0, after the ready PONG: a bundle was refused; the text says why

MAX_PAYLOAD = const(32768)
# most samples one MSG_SAMPLES frame carries, and what the helmet's link FIFO holds: 2 KB
# pieces for 16 channels, which a 256 KB heap still has free after the model loads
SAMPLES_PER_FRAME = const(32)
HEADER_SIZE = const(6)
CRC_SIZE = const(4)
MAX_FRAME = const(HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE)
MAX_TEXT = const(200)  # bytes of text in an ACK or ERROR payload (cut on a character boundary)
HEARTBEAT_MS = const(250)  # default heartbeat period
HEARTBEAT_TIMEOUT_MS = const(1000)  # a treatment device ramps to zero after this long without one
_LINE_START = const(0x24)  # '$'
_NL = const(0x0A)
# base64 of a full frame plus '$' and '\n'
MAX_LINE = const(((HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE + 2) // 3) * 4 + 2)

WINDOW_HEADER = "<HHf"  # n_ch, n_times, sfreq; then n_ch*n_times float32, channel-major
SAMPLES_HEADER = "<HHI"  # n_ch, n_samples, first_index; then n_samples*n_ch float32, sample-major
# report_seq, t_ms, sample_index, level, location, level_conf, location_conf, reasons, quality,
# ood (x100), bad channels (bit mask), dsp_us, infer_us, n_level, n_location; then the logits
REPORT_HEADER = "<IIIbbBBBBHQIIBB"
HEARTBEAT_FORMAT = "<IIIBH"  # t_ms, reports sent, samples dropped, state, free heap in KiB
UNCERTAIN = const(-1)  # a gate failed: see the report's reasons
NO_HEAD = const(-2)  # the model has no such head (a single-task bundle)
OOD_SCALE = const(100)  # the report carries round(ood * OOD_SCALE), saturated to u16


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
    # b2a_base64 ends its output with the newline: two allocations, not four (a 256 KB
    # helmet's heap may have no other piece as big as a line)
    return b"$" + b2a_base64(encode_frame(msg_type, seq, payload))


class LineParser:
    """Feed it bytes from a serial console; it calls ``handle_frame(msg_type, seq, payload)``.

    Bytes that are not part of a ``$...`` frame line go to ``handle_text(line_bytes)`` (at
    most ``TEXT_MAX`` bytes of a line); a line that looks like a frame but fails to decode
    goes to ``handle_error(exc)``. The base64 is decoded as it arrives, a few hundred
    characters at a time, into one frame buffer allocated here: no copy of the text line
    is kept, and a frame bigger than ``max_line`` allows is dropped whole (and reported),
    so a corrupted stream can never grow memory. ``payload`` is a memoryview into that
    buffer, valid until the next ``feed``.
    """

    TEXT_MAX = 512
    _CHUNK = 384  # base64 characters decoded at once (a multiple of 4)

    def __init__(self, handle_frame, handle_text=None, handle_error=None, max_line=MAX_LINE):
        self.handle_frame = handle_frame
        self.handle_text = handle_text
        self.handle_error = handle_error
        self.max_line = max_line
        self._frame = bytearray(((max_line - 2) // 4) * 3 + 3)
        self._fmv = memoryview(self._frame)
        self._b64 = bytearray(self._CHUNK)
        self._bmv = memoryview(self._b64)
        self._text = bytearray(self.TEXT_MAX)
        self._reset()
        self.frames = 0
        self.errors = 0

    def _reset(self):
        self._in_frame = False
        self._nt = 0  # text bytes of the current line
        self._nb = 0  # base64 characters waiting in _b64
        self._nf = 0  # frame bytes decoded
        self._chars = 0  # base64 characters of this frame line
        self._bad = None  # why this frame line is already lost

    def feed(self, data, n=None):
        """Consume ``data`` (bytes or bytearray; only its first ``n`` bytes when ``n`` is
        given, so a caller can reuse one receive buffer); dispatch every complete line."""
        start = 0
        end = len(data) if n is None else n
        while start < end:
            nl = data.find(b"\n", start, end)
            stop = end if nl < 0 else nl
            if not self._in_frame:
                i = data.find(b"$", start, stop)
                text_end = stop if i < 0 else i
                self._add_text(data, start, text_end)
                if i >= 0:
                    if self._nt and self.handle_text is not None:  # REPL noise before the frame
                        self.handle_text(bytes(self._text[:self._nt]))
                    self._nt = 0
                    self._in_frame = True
                    start = i + 1
                    continue
            else:
                self._add_b64(data, start, stop)
            if nl < 0:
                return
            self._line_done()
            start = nl + 1

    def _add_text(self, data, start, stop):
        k = stop - start
        room = self.TEXT_MAX - self._nt
        if k > room:
            k = room
        if k > 0:
            self._text[self._nt:self._nt + k] = data[start:start + k]
            self._nt += k

    def _add_b64(self, data, start, stop):
        self._chars += stop - start
        if self._bad is not None:
            return
        if self._chars + 2 > self.max_line:
            self._bad = FrameError("line longer than %d bytes dropped" % self.max_line)
            return
        b = self._b64
        while start < stop:
            k = self._CHUNK - self._nb
            if k > stop - start:
                k = stop - start
            b[self._nb:self._nb + k] = data[start:start + k]
            self._nb += k
            start += k
            if self._nb == self._CHUNK:
                self._decode(self._CHUNK)

    def _decode(self, n):
        """Decode the first ``n`` waiting characters (a multiple of 4, or the line's end)."""
        self._nb = 0
        if self._bad is not None or not n:
            return
        try:
            raw = a2b_base64(self._bmv[:n])
        except ValueError as e:  # binascii.Error is a ValueError
            self._bad = FrameError("bad base64: %s" % e)
            return
        k = len(raw)
        if self._nf + k > len(self._frame):
            self._bad = FrameError("line longer than %d bytes dropped" % self.max_line)
            return
        self._fmv[self._nf:self._nf + k] = raw
        self._nf += k

    def _line_done(self):
        if not self._in_frame:
            n = self._nt
            if n and self._text[n - 1] == 0x0D:  # tolerate CRLF from consoles
                n -= 1
            if n and self.handle_text is not None:
                self.handle_text(bytes(self._text[:n]))
            self._reset()
            return
        nb = self._nb
        if nb and self._b64[nb - 1] == 0x0D:
            nb -= 1
        self._decode(nb)
        bad = self._bad
        nf = self._nf
        self._reset()
        if bad is None:
            try:
                msg_type, seq, payload = decode_frame(self._fmv[:nf])
            except FrameError as e:
                bad = e
        if bad is not None:
            self._error(bad)
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


def pack_report(report_seq, t_ms, sample_index, level, location, level_conf, location_conf,
                reasons, quality, ood, bad, dsp_us, infer_us, level_q, location_q):
    """Payload of MSG_REPORT.

    ``report_seq`` counts reports (u32; a gap means a lost report); ``t_ms`` is the device
    clock at the window's end and ``sample_index`` the absolute index of its last sample + 1
    (0 for INFER windows). ``level``/``location`` are class indices, UNCERTAIN or NO_HEAD;
    confidences are 0..255; ``reasons`` is the decide.REASON_* bit field (0 = certain);
    ``quality`` the quality.QF_* bit field; ``ood`` the out-of-distribution score (float);
    ``bad`` the bit mask of bad channels (channel i = bit i, up to 64); ``level_q`` and
    ``location_q`` are the model's raw int8 output logits, so a host can check the device
    bit for bit.
    """
    o = int(ood * OOD_SCALE + 0.5) if ood > 0 else 0
    return (struct.pack(REPORT_HEADER, report_seq & 0xFFFFFFFF, t_ms & 0xFFFFFFFF,
                        sample_index & 0xFFFFFFFF, level, location, level_conf, location_conf,
                        reasons, quality, o if o < 0xFFFF else 0xFFFF,
                        bad & 0xFFFFFFFFFFFFFFFF, dsp_us & 0xFFFFFFFF, infer_us & 0xFFFFFFFF,
                        len(level_q), len(location_q))
            + bytes([v & 0xFF for v in level_q]) + bytes([v & 0xFF for v in location_q]))


REPORT_KEYS = ("report_seq", "t_ms", "sample_index", "level", "location", "level_conf",
               "location_conf", "reasons", "quality", "ood", "bad", "dsp_us", "infer_us")


def unpack_report(payload):
    """Return a dict of a MSG_REPORT payload (keys: REPORT_KEYS, level_q, location_q)."""
    size = struct.calcsize(REPORT_HEADER)
    if len(payload) < size:
        raise ValueError("report payload is %d bytes, header needs %d" % (len(payload), size))
    fields = struct.unpack_from(REPORT_HEADER, payload, 0)
    n_lv, n_loc = fields[-2], fields[-1]
    if len(payload) != size + n_lv + n_loc:
        raise ValueError("report payload is %d bytes, expected %d" % (len(payload), size + n_lv + n_loc))
    d = {}
    for k, v in zip(REPORT_KEYS, fields):
        d[k] = v
    d["ood"] = d["ood"] / OOD_SCALE
    raw = bytes(payload[size:])
    d["level_q"] = [b - 256 if b > 127 else b for b in raw[:n_lv]]
    d["location_q"] = [b - 256 if b > 127 else b for b in raw[n_lv:]]
    return d


def pack_samples(data, n_ch, n_samples, first_index):
    """Payload of MSG_SAMPLES: ``data`` is the bytes of n_samples*n_ch little-endian float32
    µV, sample-major (s0c0 s0c1 ... s1c0 ...); ``first_index`` is the absolute index of
    the first sample (u32, wraps), so the device can count gaps."""
    if len(data) != 4 * n_ch * n_samples:
        raise ValueError("samples have %d bytes, expected 4*n_ch*n_samples = %d"
                         % (len(data), 4 * n_ch * n_samples))
    return struct.pack(SAMPLES_HEADER, n_ch, n_samples, first_index & 0xFFFFFFFF) + bytes(data)


def unpack_samples_header(payload):
    """Return ``(n_ch, n_samples, first_index, offset)``; samples start at ``offset``."""
    size = struct.calcsize(SAMPLES_HEADER)
    if len(payload) < size:
        raise ValueError("samples payload is %d bytes, header needs %d" % (len(payload), size))
    n_ch, n, first = struct.unpack_from(SAMPLES_HEADER, payload, 0)
    if len(payload) != size + 4 * n_ch * n:
        raise ValueError("samples payload is %d bytes, expected %d for %d samples x %d ch"
                         % (len(payload), size + 4 * n_ch * n, n, n_ch))
    return n_ch, n, first, size


def pack_heartbeat(t_ms, reports, dropped, state, mem_free_kb):
    """Payload of MSG_HEARTBEAT."""
    return struct.pack(HEARTBEAT_FORMAT, t_ms & 0xFFFFFFFF, reports & 0xFFFFFFFF,
                       dropped & 0xFFFFFFFF, state, min(mem_free_kb, 0xFFFF))


def unpack_heartbeat(payload):
    """Return a dict of a MSG_HEARTBEAT payload."""
    if len(payload) != struct.calcsize(HEARTBEAT_FORMAT):
        raise ValueError("heartbeat payload is %d bytes" % len(payload))
    t_ms, reports, dropped, state, kb = struct.unpack(HEARTBEAT_FORMAT, payload)
    return {"t_ms": t_ms, "reports": reports, "dropped": dropped, "state": state, "mem_free_kb": kb}


def pack_command(code, args=None):
    """Payload of MSG_COMMAND: u8 code + utf-8 json of ``args`` (may be empty)."""
    if args is None:
        return bytes((code,))
    import json
    return bytes((code,)) + json.dumps(args).encode()


def unpack_command(payload):
    """Return ``(code, args)`` of a MSG_COMMAND payload; ValueError if it is malformed."""
    payload = bytes(payload)
    if not payload:
        raise ValueError("empty command")
    if len(payload) == 1:
        return payload[0], None
    import json
    return payload[0], json.loads(payload[1:])


def _clip(text):
    """utf-8 of ``text``, at most MAX_TEXT bytes, never cut inside a character."""
    b = str(text).encode()
    n = MAX_TEXT
    if len(b) <= n:
        return b
    while n > 0 and (b[n] & 0xC0) == 0x80:  # b[n] continues the character that b[n-1] starts
        n -= 1
    return b[:n]


def _unclip(b):
    """Text of an ACK or ERROR payload; a foreign device's bad utf-8 becomes '?', not an error."""
    try:
        return b.decode()
    except UnicodeError:
        return "".join([chr(c) if c < 128 else "?" for c in b])


def pack_ack(status, text=""):
    """Payload of MSG_ACK: u8 status (ACK_*) + utf-8 text (at most MAX_TEXT bytes)."""
    return bytes((status,)) + _clip(text)


def unpack_ack(payload):
    """Return ``(status, text)`` of a MSG_ACK payload."""
    payload = bytes(payload)
    return (payload[0] if payload else 0), _unclip(payload[1:])


def pack_error(code, text):
    """Payload of MSG_ERROR: u8 code (ERR_*) + utf-8 text (at most MAX_TEXT bytes)."""
    return bytes((code,)) + _clip(text)


def unpack_error(payload):
    """Return ``(code, text)`` of a MSG_ERROR payload."""
    payload = bytes(payload)
    return (payload[0] if payload else 0), _unclip(payload[1:])


class CommandLog:
    """The ACKs of the last ``size`` commands, so that a retried command runs only once.

    The host resends a COMMAND with the SAME seq when its ACK was lost; the device looks
    the seq up first and, when found, sends the stored ACK again instead of executing the
    command a second time. An entry matches on seq and on the CRC of the command payload,
    so a new host session that happens to reuse a seq for a different command is not
    mistaken for a retry. Storage is allocated once (``size`` slots, oldest overwritten).

    Typical use in the serve loop::

        log = wire.CommandLog()
        ...
        elif msg_type == wire.MSG_COMMAND:
            reply_type, reply = log.answer(seq, payload, execute)
            link.write(wire.encode_line(reply_type, seq, reply))

    where ``execute(code, args)`` returns None (done: ACK_OK), or ``(status, text)``
    (ACK_FAILED / ACK_UNKNOWN / ACK_OK with a text), or raises (ACK_FAILED + the message).
    """

    def __init__(self, size=8):
        if size < 1:
            raise ValueError("size must be at least 1, got %d" % size)
        self._seq = [-1] * size
        self._key = [0] * size
        self._ack = [None] * size
        self._next = 0
        self.executed = 0  # commands run
        self.replays = 0  # retries answered from the log

    def lookup(self, seq, payload=None):
        """The stored ACK payload for ``seq`` (and ``payload``, when given), else None."""
        key = -1 if payload is None else crc32(payload) & 0xFFFFFFFF
        seqs = self._seq
        for i in range(len(seqs)):
            if seqs[i] == seq and (key < 0 or self._key[i] < 0 or self._key[i] == key):
                return self._ack[i]
        return None

    def store(self, seq, ack, payload=None):
        """Remember ``ack`` (a pack_ack payload) as the answer to command ``seq``."""
        i = self._next
        self._seq[i] = seq
        self._key[i] = -1 if payload is None else crc32(payload) & 0xFFFFFFFF
        self._ack[i] = ack
        self._next = (i + 1) % len(self._seq)

    def clear(self):
        """Forget every stored answer."""
        for i in range(len(self._seq)):
            self._seq[i] = -1
            self._ack[i] = None

    def answer(self, seq, payload, execute):
        """Return ``(msg_type, reply_payload)`` for a MSG_COMMAND: the stored ACK of a retried
        seq, ERROR ERR_BAD_COMMAND for a malformed payload, else the ACK of ``execute``."""
        ack = self.lookup(seq, payload)
        if ack is not None:
            self.replays += 1
            return MSG_ACK, ack
        try:
            code, args = unpack_command(payload)
        except ValueError as e:  # json errors and UnicodeError are ValueErrors too
            return MSG_ERROR, pack_error(ERR_BAD_COMMAND, "bad command payload: %s" % e)
        self.executed += 1
        try:
            result = execute(code, args)
        except Exception as e:  # noqa: BLE001 - the host gets the reason, the loop goes on
            result = (ACK_FAILED, "%s: %s" % (type(e).__name__, e))
        if result is None:
            result = (ACK_OK, "")
        ack = pack_ack(result[0], result[1])
        self.store(seq, ack, payload)
        return MSG_ACK, ack
