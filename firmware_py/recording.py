"""Recorded EEG on the helmet's filesystem: the file format and its streaming reader.

One definition shared by the helmet (``PlaybackSource``) and the host writer
(``painhelm.host_tools.recording``). A recording (``.phr``) is::

    one line of JSON, ending in "\\n":
        {"magic": "painhelm-rec", "version": 1, "n_ch": 32, "sfreq": 250.0,
         "ch_names": ["Fp1", ...] or null, "n_samples": 75000,
         "dtype": "f4" or "i2", "scale": 1.0}
    then n_samples * n_ch samples, little-endian, SAMPLE-MAJOR (s0c0 s0c1 ... s1c0 ...):
        "f4": float32 µV (scale is 1.0)
        "i2": int16 codes, µV = code * scale

A file cut short (a power cut while copying) is read up to its last whole sample.
``Reader.readinto`` fills a caller's array('f'): for "f4" the file is read straight into
it (no allocation at all); "i2" goes through a small int16 buffer made once, and on
MicroPython the scaling boxes each float (garbage the GC reclaims).
"""

import json
import sys
from array import array

MAGIC = "painhelm-rec"
VERSION = 1
DTYPES = ("f4", "i2")
SUFFIX = ".phr"
MAX_HEADER = 16384  # bytes; the header line of a 256-channel recording fits
_CHUNK = 64  # samples per int16 read


class RecordingError(ValueError):
    """A file that is not a painhelm recording, or one this reader cannot read."""


def check_header(h):
    """Raise RecordingError unless ``h`` (the parsed header dict) is one this module reads."""
    if not isinstance(h, dict) or h.get("magic") != MAGIC:
        raise RecordingError("not a painhelm recording (magic must be %r)" % MAGIC)
    if h.get("version") != VERSION:
        raise RecordingError("recording version %r, this firmware reads version %d" % (h.get("version"), VERSION))
    for key in ("n_ch", "sfreq", "n_samples", "dtype"):
        if key not in h:
            raise RecordingError("recording header lacks %r" % key)
    if h["dtype"] not in DTYPES:
        raise RecordingError("dtype must be one of %s, got %r" % (", ".join(DTYPES), h["dtype"]))
    if h["n_ch"] < 1 or h["sfreq"] <= 0:
        raise RecordingError("n_ch must be >= 1 and sfreq > 0, got n_ch=%r, sfreq=%r" % (h["n_ch"], h["sfreq"]))
    names = h.get("ch_names")
    if names is not None and len(names) != h["n_ch"]:
        raise RecordingError("ch_names has %d names for n_ch=%d" % (len(names), h["n_ch"]))


def header_line(n_ch, sfreq, n_samples, ch_names=None, dtype="f4", scale=1.0):
    """The header line (bytes, ending in newline) of a recording with these properties."""
    h = {"magic": MAGIC, "version": VERSION, "n_ch": n_ch, "sfreq": float(sfreq),
         "ch_names": list(ch_names) if ch_names is not None else None,
         "n_samples": n_samples, "dtype": dtype, "scale": float(scale)}
    check_header(h)
    return (json.dumps(h) + "\n").encode()


def _f32_bytes(buf):
    """A byte view of an array('f') for CPython's one-argument readinto."""
    return memoryview(buf).cast("B")


class Reader:
    """Stream a recording's samples into caller buffers, one file handle, no per-read allocation.

    Parameters
    ----------
    path : str
        The recording file.

    Attributes
    ----------
    n_ch, sfreq, ch_names, dtype, scale
        From the header.
    n_samples : int
        Whole samples in the file (the header's count, or fewer if the file is cut short).
    pos : int
        Index of the next sample ``readinto`` returns.
    """

    def __init__(self, path):
        self._f = f = open(path, "rb")
        try:
            # in pieces: MicroPython's readline(n) reserves n bytes up front
            line = f.readline(512)
            while line and not line.endswith(b"\n") and len(line) < MAX_HEADER:
                more = f.readline(512)
                if not more:
                    break
                line += more
            if not line.endswith(b"\n"):
                raise RecordingError("%s: no header line (a recording starts with a line of JSON)" % path)
            try:
                h = json.loads(line)
            except ValueError:
                raise RecordingError("%s: the header line is not JSON" % path)
            check_header(h)
            self.header = h
            self.n_ch = h["n_ch"]
            self.sfreq = h["sfreq"]
            self.ch_names = h.get("ch_names")
            self.dtype = h["dtype"]
            self.scale = h.get("scale", 1.0)
            self._item = 4 if self.dtype == "f4" else 2
            self.frame_bytes = self._item * self.n_ch
            self.data_offset = len(line)
            size = f.seek(0, 2)
            if size is None:  # a stream whose seek returns nothing
                size = f.tell()
            self.n_samples = min(h["n_samples"], (size - self.data_offset) // self.frame_bytes)
        except Exception:
            f.close()
            raise
        # CPython and big-endian hosts read through a view or the int16 path
        self._direct = self.dtype == "f4" and sys.byteorder == "little"
        self._mpy = sys.implementation.name == "micropython"
        self._raw = None
        if not self._direct:
            self._raw = array("h" if self.dtype == "i2" else "f", bytes(self._item * _CHUNK * self.n_ch))
        self.pos = 0
        self.seek(0)

    def seek(self, index):
        """Make sample ``index`` (0 <= index <= n_samples) the next one read."""
        if not 0 <= index <= self.n_samples:
            raise ValueError("index must be in [0, %d], got %r" % (self.n_samples, index))
        self._f.seek(self.data_offset + index * self.frame_bytes)
        self.pos = index

    def readinto(self, buf, max_n):
        """Read up to ``max_n`` samples (fewer at the end of the file) into ``buf``.

        ``buf`` is an array('f') of at least ``max_n * n_ch`` values; samples are written
        sample-major from index 0, in µV. Returns the number of samples read (0 at the end).
        """
        n = self.n_samples - self.pos
        if max_n < n:
            n = max_n
        if n <= 0:
            return 0
        if len(buf) < n * self.n_ch:
            raise ValueError("buf has %d values, %d samples x %d channels need %d"
                             % (len(buf), n, self.n_ch, n * self.n_ch))
        if self._direct:
            nbytes = n * self.frame_bytes
            if self._mpy:
                got = self._f.readinto(buf, nbytes)
            else:
                got = self._f.readinto(_f32_bytes(buf)[:nbytes])
            n = (got or 0) // self.frame_bytes
        else:
            n = self._read_converted(buf, n)
        self.pos += n
        return n

    def _read_converted(self, buf, n):
        raw = self._raw
        n_ch = self.n_ch
        scale = self.scale
        done = 0
        while done < n:
            k = n - done
            if k > _CHUNK:
                k = _CHUNK
            nbytes = k * self.frame_bytes
            if self._mpy:
                got = self._f.readinto(raw, nbytes)
            else:
                got = self._f.readinto(memoryview(raw).cast("B")[:nbytes])
            k = (got or 0) // self.frame_bytes
            if k == 0:
                break
            if sys.byteorder != "little":
                raw.byteswap()
            o = done * n_ch
            for i in range(k * n_ch):
                buf[o + i] = raw[i] * scale
            done += k
        return done

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
