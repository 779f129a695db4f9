"""Where the helmet's samples come from: one small interface, four sources.

Every source has ``n_ch``, ``sfreq``, ``ch_names`` (a list, or None), ``start()``,
``stop()``, a ``dropped`` count (samples lost since ``start``) and a NON-BLOCKING
``read(buf, max_n)`` that writes up to ``max_n`` samples, sample-major float32 µV
(``s0c0 s0c1 ... s1c0 ...``), into the caller's ``array('f')`` and returns how many
(0 when none is ready). The caller pushes them into a ``ring.Ring``.

============  ===============================================================  =========
kind          samples from                                                      runs on
============  ===============================================================  =========
link          MSG_SAMPLES frames the host streams (``LinkSource.feed``)         anywhere
playback      a recording on the filesystem (``recording``), real time or fast  anywhere
ads1299       ADS1299 chips on SPI (``ads1299``), or their simulator            MicroPython
brainflow     any BrainFlow board (OpenBCI Cyton, Cyton+Daisy, synthetic, ...)  CPython
============  ===============================================================  =========

The link source is here; the others live in their own modules (``source_playback``,
``source_ads1299``, ``source_brainflow``), imported only when a config asks for them, so
a helmet carries in RAM just the code of the source it uses.

``make_source(cfg, n_ch, sfreq)`` builds one from the device config and checks that it
gives the bundle's channel count and rate. In steady state ``read`` allocates nothing on
MicroPython (link: a viper copy out of a FIFO; playback "f4": the file is read straight
into ``buf``; ads1299: see ``ads1299``).
"""

import struct

try:  # imported as painhelm.firmware.sources on a host
    from . import ring, wire
except ImportError:  # flat on the helmet's filesystem
    import ring
    import wire

try:
    import uctypes
except ImportError:
    uctypes = None

KINDS = ("link", "playback", "ads1299", "brainflow")
LINK_CAPACITY = wire.SAMPLES_PER_FRAME  # samples the link FIFO holds: one MSG_SAMPLES frame


def _check_option(name, value, allowed):
    if value not in allowed:
        raise ValueError("%s must be one of %s, got %r" % (name, ", ".join(repr(a) for a in allowed), value))


def _byte_view(arr):
    """A writable byte view of array ``arr``'s memory, or None where the port cannot make one."""
    if uctypes is not None:
        return uctypes.bytearray_at(uctypes.addressof(arr), len(arr) * 4)
    try:
        return memoryview(arr).cast("B")
    except AttributeError:  # MicroPython without uctypes
        return None


class Source:
    """The interface every source implements (this base class gives no samples)."""

    n_ch = 0
    sfreq = 0.0
    ch_names = None
    dropped = 0

    def start(self):
        """Begin acquiring; counters restart."""

    def stop(self):
        """Stop acquiring (a stopped source's ``read`` returns 0)."""

    def read(self, buf, max_n):
        """Write up to ``max_n`` samples, sample-major float32 µV, into ``buf``; return how many.

        Never waits. ``buf`` is an array('f') of at least ``max_n * n_ch`` values.
        """
        return 0

    def close(self):
        """Release what the source holds (a file, a board session)."""
        self.stop()

    def _check_buf(self, buf, max_n):
        if len(buf) < max_n * self.n_ch:
            raise ValueError("buf has %d values, %d samples x %d channels need %d"
                             % (len(buf), max_n, self.n_ch, max_n * self.n_ch))


class LinkSource(Source):
    """Samples the host streams over the link (host-in-the-loop tests).

    The link handler calls ``feed(payload)`` for each MSG_SAMPLES frame; ``read`` drains a
    FIFO of ``capacity`` samples made once. A gap in ``first_index`` (frames lost on the
    link) adds the missing samples to ``dropped``; a FIFO overrun drops the oldest samples
    and counts them too. An index that goes backwards (the host restarted its stream) is
    taken as the new position and counted in ``resyncs``. Frames fed while stopped are
    ignored.
    """

    def __init__(self, n_ch, sfreq, capacity):
        if n_ch < 1 or capacity < 1:
            raise ValueError("n_ch and capacity must be >= 1, got n_ch=%r, capacity=%r" % (n_ch, capacity))
        self.n_ch = n_ch
        self.sfreq = sfreq
        self.capacity = capacity
        # with the viper copy the FIFO is raw bytes (made without a temporary copy)
        self._fifo = ring.new_f32(n_ch * capacity, ring._V is not None)
        self._bytes = self._fifo if isinstance(self._fifo, bytearray) else _byte_view(self._fifo)
        self.running = False
        self._reset()

    def _reset(self):
        self._r = 0  # FIFO slot of the oldest sample
        self._count = 0
        self._next = None  # first_index the next frame should carry
        self.dropped = 0
        self.resyncs = 0
        self.received = 0

    def start(self):
        self._reset()
        self.running = True

    def stop(self):
        self.running = False

    def available(self):
        """Samples waiting in the FIFO."""
        return self._count

    def feed(self, payload):
        """Take one MSG_SAMPLES payload (see ``SAMPLES_HEADER``); ValueError if it does not fit."""
        n_ch, n, first, off = wire.unpack_samples_header(payload)
        if n_ch != self.n_ch:
            raise ValueError("samples frame has %d channels, the source %d" % (n_ch, self.n_ch))
        if len(payload) < off + 4 * n_ch * n:
            raise ValueError("samples payload is %d bytes, %d samples x %d channels need %d"
                             % (len(payload), n, n_ch, off + 4 * n_ch * n))
        if not self.running:
            return
        if self._next is not None and first != self._next:
            gap = (first - self._next) % 4294967296
            if gap < 2147483648:
                self.dropped += gap
            else:
                self.resyncs += 1
        self._next = (first + n) % 4294967296
        self.received += n
        cap = self.capacity
        if n > cap:  # only the newest capacity samples fit
            self.dropped += n - cap
            off += 4 * n_ch * (n - cap)
            n = cap
        free = cap - self._count
        if n > free:  # overrun: the oldest go
            lost = n - free
            self.dropped += lost
            self._r = (self._r + lost) % cap
            self._count -= lost
        w = (self._r + self._count) % cap
        k = cap - w
        if k > n:
            k = n
        fb = 4 * n_ch
        self._put(w, payload, off, k)
        if n > k:
            self._put(0, payload, off + k * fb, n - k)
        self._count += n

    def _put(self, slot, payload, off, n):
        fb = 4 * self.n_ch
        if self._bytes is not None:
            self._bytes[slot * fb:(slot + n) * fb] = payload[off:off + n * fb]
        else:
            fifo = self._fifo
            o = slot * self.n_ch
            for i in range(n * self.n_ch):
                fifo[o + i] = struct.unpack_from("<f", payload, off + 4 * i)[0]

    def read(self, buf, max_n):
        n = self._count
        if max_n < n:
            n = max_n
        if n <= 0 or not self.running:
            return 0
        self._check_buf(buf, n)
        n_ch = self.n_ch
        cap = self.capacity
        r = self._r
        k = cap - r
        if k > n:
            k = n
        ring.copy_f32(self._fifo, r * n_ch, buf, 0, k * n_ch)
        if n > k:
            ring.copy_f32(self._fifo, 0, buf, k * n_ch, (n - k) * n_ch)
        self._r = (r + n) % cap
        self._count -= n
        return n


_CFG_KEYS = {
    "link": ("kind", "capacity"),
    "playback": ("kind", "path", "loop", "realtime", "max_backlog"),
    "ads1299": ("kind", "spi", "cs", "drdy", "n_devices", "gain", "sim", "baudrate", "srb2", "bias",
                "lead_off", "settle_ms", "fifo", "ch_names"),
    "brainflow": ("kind", "board_id", "serial_port", "buffer_size", "params"),
}


def _module(name):
    """Import a sibling source module on first use (flat on the device, a package on a host)."""
    try:
        return __import__("painhelm.firmware." + name, None, None, [name])
    except ImportError:
        return __import__(name)


def make_source(cfg, n_ch, sfreq):
    """Build the source the device config asks for and check it fits the bundle.

    Parameters
    ----------
    cfg : dict
        ``{"kind": "link"}`` (``capacity``: FIFO samples, default ``LINK_CAPACITY``);
        ``{"kind": "playback", "path": "rec.phr", "loop": true}`` (``realtime``,
        ``max_backlog``); ``{"kind": "ads1299", "spi": 1, "cs": 5, "drdy": 4,
        "n_devices": 4, "gain": 24, "sim": false}`` (``baudrate``, ``srb2``, ``bias``,
        ``lead_off``, ``settle_ms``, ``fifo``: samples the DRDY interrupt buffers, default
        half a second, 0 for polled reads; ``ch_names``); ``{"kind": "brainflow", "board_id": -1,
        "serial_port": ""}`` (``buffer_size``, ``params``).
    n_ch : int
        Channels the bundle expects.
    sfreq : float
        The bundle's sampling frequency.

    Raises ValueError for an unknown kind or key, and for a source whose channel count
    or rate differs from the bundle's.
    """
    kind = cfg.get("kind")
    _check_option("source kind", kind, KINDS)
    for key in cfg:
        if key not in _CFG_KEYS[kind]:
            raise ValueError("source %r takes %s, got unknown key %r"
                             % (kind, ", ".join(_CFG_KEYS[kind][1:]), key))
    if kind == "link":
        src = LinkSource(n_ch, sfreq, cfg.get("capacity", LINK_CAPACITY))
    elif kind == "playback":
        if "path" not in cfg:
            raise ValueError("source 'playback' needs 'path' (a recording on the device)")
        src = _module("source_playback").PlaybackSource(
            cfg["path"], realtime=cfg.get("realtime", True), loop=cfg.get("loop", False),
            max_backlog=cfg.get("max_backlog"))
    elif kind == "ads1299":
        src = _module("source_ads1299").make(cfg, sfreq)
    else:
        src = _module("source_brainflow").BrainFlowSource(
            cfg.get("board_id", -1), cfg.get("serial_port", ""), cfg.get("buffer_size", 45000),
            cfg.get("params"))
    if src.n_ch != n_ch or abs(src.sfreq - sfreq) > 1e-6 * sfreq:
        src.close()
        raise ValueError("source %r gives %d channels at %s Hz, the bundle expects %d channels at %s Hz"
                         % (kind, src.n_ch, src.sfreq, n_ch, sfreq))
    return src
