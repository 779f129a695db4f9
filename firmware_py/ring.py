"""Ring buffer of EEG samples between acquisition and the window step.

Samples arrive sample-major (``s0c0 s0c1 ... s1c0 ...``, as every source in ``sources``
writes them) and leave as channel-major windows (``x[ch * n_times + t]``, as
``dsp.BandPower.compute`` reads them). The ring stores them channel-major, one row of
``capacity`` float32 per channel, so the transpose is paid once per sample in ``push``
and a window is at most two contiguous copies per channel, however much windows overlap.

Samples have absolute indices: the first sample pushed after creation or ``reset`` is 0,
and ``total`` is the index the next one will get. The ring holds the ``filled()`` newest,
``[total - filled(), total)``; ``window(dst, n_times, end)`` copies ``[end - n_times, end)``.

Copies go through small viper kernels (32-bit word moves: float bits are copied, never
turned into float objects), so ``push``, ``push_channel_major`` and ``window`` allocate
nothing on MicroPython. The kernels are compiled from a string at import so that a port
without the viper emitter (and CPython) still imports this module and uses the plain
path, which copies the same values: memoryview slices (strided ones on CPython), and on
MicroPython a per-value loop for ``push`` that boxes each float; both make only garbage
the GC reclaims. ``copy_f32`` is shared with ``sources``.
"""

from array import array

_VIPER_SRC = """
import micropython

@micropython.viper
def copy_f32(src: ptr32, so: int, dst: ptr32, do: int, n: int):
    for i in range(n):
        dst[do + i] = src[so + i]

@micropython.viper
def push_sm(src: ptr32, so: int, n: int, n_ch: int, dst: ptr32, cap: int, head: int):
    for c in range(n_ch):
        row = c * cap
        d = row + head
        end = row + cap
        s = so + c
        for i in range(n):
            dst[d] = src[s]
            s += n_ch
            d += 1
            if d == end:
                d = row

@micropython.viper
def push_cm(src: ptr32, n_ch: int, n: int, dst: ptr32, cap: int, head: int):
    for c in range(n_ch):
        row = c * cap
        d = row + head
        end = row + cap
        s = c * n
        for i in range(n):
            dst[d] = src[s + i]
            d += 1
            if d == end:
                d = row

@micropython.viper
def window_cm(src: ptr32, cap: int, start: int, n_ch: int, n_times: int, dst: ptr32):
    for c in range(n_ch):
        row = c * cap
        s = row + start
        end = row + cap
        o = c * n_times
        for i in range(n_times):
            dst[o + i] = src[s]
            s += 1
            if s == end:
                s = row
"""


def load_viper(src):
    """Compile viper kernels from ``src``; None on CPython or a port without the emitter."""
    g = {}
    try:
        exec(src, g)
    except Exception:  # ImportError (CPython), SyntaxError (no emitter), NameError (a shim)
        return None
    return g


_V = load_viper(_VIPER_SRC)
KERNELS = ("auto", "plain", "viper")

try:  # CPython: strided memoryview slices copy a channel in one statement
    memoryview(array("f", bytes(8)))[0:1] = memoryview(array("f", bytes(8)))[0:2:2]
    _STRIDED = True
except (NotImplementedError, TypeError, ValueError):  # MicroPython: step 1 only
    _STRIDED = False


def _f32_view(buf):
    m = memoryview(buf)
    if _STRIDED and m.format != "f":
        m = m.cast("B").cast("f")
    return m


def _copy_f32_plain(src, so, dst, do, n):
    if n > 0:
        _f32_view(dst)[do:do + n] = _f32_view(src)[so:so + n]


def _push_sm_plain(src, so, n, n_ch, dst, cap, head):
    k = min(n, cap - head)  # samples before the rows wrap
    if _STRIDED:
        s = _f32_view(src)
        d = memoryview(dst)
        for c in range(n_ch):
            row = c * cap
            d[row + head:row + head + k] = s[so + c:so + k * n_ch:n_ch]
            if n > k:
                d[row:row + n - k] = s[so + k * n_ch + c:so + n * n_ch:n_ch]
        return
    for c in range(n_ch):
        row = c * cap
        d = row + head
        end = row + cap
        s = so + c
        for _ in range(n):
            dst[d] = src[s]
            s += n_ch
            d += 1
            if d == end:
                d = row


def _push_cm_plain(src, n_ch, n, dst, cap, head):
    k = min(n, cap - head)
    for c in range(n_ch):
        row = c * cap
        _copy_f32_plain(src, c * n, dst, row + head, k)
        _copy_f32_plain(src, c * n + k, dst, row, n - k)


def _window_cm_plain(src, cap, start, n_ch, n_times, dst):
    k = min(n_times, cap - start)
    for c in range(n_ch):
        row = c * cap
        _copy_f32_plain(src, row + start, dst, c * n_times, k)
        _copy_f32_plain(src, row, dst, c * n_times + k, n_times - k)


_PLAIN = (_push_sm_plain, _push_cm_plain, _window_cm_plain)
_VIPER = None if _V is None else (_V["push_sm"], _V["push_cm"], _V["window_cm"])

# copy_f32(src, src_off, dst, dst_off, n): copy n float32 values between float32 buffers
# (array('f'), or a memoryview of one); offsets in values. Allocation-free with viper.
copy_f32 = _copy_f32_plain if _V is None else _V["copy_f32"]


def new_f32(n, raw=False):
    """A zeroed buffer of ``n`` float32 values made in one allocation.

    ``raw=True`` (for the viper kernels, which move 32-bit words): a bytearray, with no
    temporary; otherwise an array('f'), built from a zeroed bytes object of the same size
    (briefly twice the memory).
    """
    if raw:
        return bytearray(4 * n)
    return array("f", bytes(4 * n))


def _pick_kernel(kernel):
    if kernel not in KERNELS:
        raise ValueError("kernel must be one of %s, got %r" % (", ".join(KERNELS), kernel))
    if kernel == "auto":
        return "plain" if _V is None else "viper"
    if kernel == "viper" and _V is None:
        raise ValueError("kernel 'viper' needs MicroPython with the viper emitter; use 'plain' or 'auto'")
    return kernel


class Ring:
    """``capacity`` samples of ``n_ch`` channels, float32, allocated once.

    Parameters
    ----------
    n_ch : int
        Number of channels.
    capacity : int
        Samples per channel the ring holds; at least the window length ``n_times``.
    kernel : "auto" | "plain" | "viper"
        Copy loops; ``"auto"`` is viper where the port has it (see the module notes).

    Attributes
    ----------
    total : int
        Samples pushed since creation or ``reset``: the absolute index of the next one.
        (On a 32-bit board it leaves the small-int range after 2**30 samples, 12 days at
        1 kHz; from then on each push allocates a few bytes for it.)
    """

    def __init__(self, n_ch, capacity, kernel="auto"):
        if n_ch < 1 or capacity < 1:
            raise ValueError("n_ch and capacity must be >= 1, got n_ch=%r, capacity=%r" % (n_ch, capacity))
        self.kernel = _pick_kernel(kernel)
        self._push_sm, self._push_cm, self._window_cm = _VIPER if self.kernel == "viper" else _PLAIN
        self.n_ch = n_ch
        self.capacity = capacity
        self._buf = new_f32(n_ch * capacity, self.kernel == "viper")
        self.reset()

    def reset(self):
        """Forget every sample; the next one pushed gets index 0."""
        self.total = 0
        self._head = 0  # row position of the next sample
        self._filled = 0

    def filled(self):
        """Number of samples held (at most ``capacity``)."""
        return self._filled

    def _advance(self, n):
        self.total += n
        cap = self.capacity
        self._head = (self._head + n) % cap
        f = self._filled + n
        self._filled = cap if f > cap else f

    def push(self, buf, n, offset=0):
        """Append ``n`` samples stored sample-major in ``buf`` from value ``offset`` on.

        ``buf`` is an array('f') (or a memoryview of one) holding at least
        ``offset + n * n_ch`` values in µV. When the ring is full the oldest samples are
        overwritten; of more than ``capacity`` samples only the newest are kept.
        """
        n_ch = self.n_ch
        if n <= 0:
            return
        if len(buf) < offset + n * n_ch:
            raise ValueError("buf has %d values, push of %d samples x %d channels from offset %d needs %d"
                             % (len(buf), n, n_ch, offset, offset + n * n_ch))
        cap = self.capacity
        if n > cap:  # only the newest capacity samples survive
            skip = n - cap
            self._advance(skip)
            offset += skip * n_ch
            n = cap
        self._push_sm(buf, offset, n, n_ch, self._buf, cap, self._head)
        self._advance(n)

    def push_channel_major(self, buf, n_ch, n):
        """As ``push`` for ``n`` samples stored channel-major (``buf[ch * n + t]``)."""
        if n_ch != self.n_ch:
            raise ValueError("buf has %d channels, the ring %d" % (n_ch, self.n_ch))
        if n <= 0:
            return
        if len(buf) < n_ch * n:
            raise ValueError("buf has %d values, %d channels x %d samples need %d" % (len(buf), n_ch, n, n_ch * n))
        cap = self.capacity
        if n > cap:  # only the newest capacity samples survive: they fill every row
            skip = n - cap
            for c in range(n_ch):
                copy_f32(buf, c * n + skip, self._buf, c * cap, cap)
            self.total += n
            self._head = 0
            self._filled = cap
            return
        self._push_cm(buf, n_ch, n, self._buf, cap, self._head)
        self._advance(n)

    def window(self, dst, n_times, end=None):
        """Copy samples ``[end - n_times, end)`` into ``dst``, channel-major; return ``dst``.

        Parameters
        ----------
        dst : array('f'), length >= n_ch * n_times
            Written as ``dst[ch * n_times + t]`` (what ``dsp.BandPower.compute`` reads).
        n_times : int
            Window length in samples.
        end : int | None
            Absolute index one past the window's last sample; None: ``total`` (the window
            ends with the newest sample). A window every ``hop`` samples is
            ``end = n_times + k * hop``.

        Raises ValueError when any of those samples is not held (not pushed yet, or
        already overwritten).
        """
        total = self.total
        if end is None:
            end = total
        start = end - n_times
        oldest = total - self._filled
        if n_times < 1 or start < oldest or end > total:
            raise ValueError("window [%d, %d) is not held: the ring holds samples [%d, %d)"
                             % (start, end, oldest, total))
        n_ch = self.n_ch
        if len(dst) < n_ch * n_times:
            raise ValueError("dst has %d values, a %d x %d window needs %d"
                             % (len(dst), n_ch, n_times, n_ch * n_times))
        cap = self.capacity
        # row position of `start`: the head is at `total`, and total - start <= filled <= cap
        pos = self._head - (total - start)
        if pos < 0:
            pos += cap
        self._window_cm(self._buf, cap, pos, n_ch, n_times, dst)
        return dst


class Slider:
    """The window buffer itself as the only store: what the helmet runs with.

    Samples pushed (sample-major, at most ``room() + skip`` at a time) are transposed
    straight into ``x``, the channel-major window ``dsp.BandPower.compute`` reads. When
    ``full()``, the caller processes ``x`` and calls ``slide(hop)``: the newest
    ``n_times - hop`` samples move to the front (overlapping windows), or, for ``hop >
    n_times``, the next ``hop - n_times`` samples are skipped as they arrive. Unlike
    ``Ring`` it keeps no second copy of the signal, the largest buffer a small board would
    otherwise hold (32 ch x 1 s = 32 KB). ``total`` is the absolute index of the next
    sample, so a full window ends at ``total``.
    """

    def __init__(self, x, n_ch, n_times, kernel="auto"):
        if n_ch < 1 or n_times < 1 or len(x) < n_ch * n_times:
            raise ValueError("x must hold n_ch * n_times values")
        self.kernel = _pick_kernel(kernel)
        self._push_sm = (_VIPER if self.kernel == "viper" else _PLAIN)[0]
        self._copy = _V["copy_f32"] if self.kernel == "viper" else _copy_f32_plain
        self.x = x
        self.n_ch = n_ch
        self.n_times = n_times
        self.reset()

    def reset(self):
        """Empty the window; the next sample gets index 0."""
        self.total = 0
        self.fill = 0
        self.skip = 0

    def room(self):
        """Samples that still fit before the window is full."""
        return self.n_times - self.fill

    def full(self):
        return self.fill == self.n_times

    def push(self, buf, n, offset=0):
        """Take ``n`` samples (sample-major in ``buf`` from value ``offset``); the first
        ``skip`` of them are dropped (hop > window). ValueError if they overflow."""
        n_ch = self.n_ch
        self.total += n
        s = self.skip
        if s:
            k = s if s < n else n
            self.skip = s - k
            n -= k
            offset += k * n_ch
        if n <= 0:
            return
        if n > self.n_times - self.fill:
            raise ValueError("push of %d samples overflows the window (room %d)" % (n, self.n_times - self.fill))
        if len(buf) < offset + n * n_ch:
            raise ValueError("buf has %d values, %d samples x %d channels from offset %d need %d"
                             % (len(buf), n, n_ch, offset, offset + n * n_ch))
        self._push_sm(buf, offset, n, n_ch, self.x, self.n_times, self.fill)
        self.fill += n

    def slide(self, hop):
        """After a full window: keep the newest ``n_times - hop`` samples (or skip ahead)."""
        t = self.n_times
        if hop >= t:
            self.fill = 0
            self.skip = hop - t
            return
        keep = t - hop
        x = self.x
        for c in range(self.n_ch):  # an ascending copy: the overlap is safe
            self._copy(x, c * t + hop, x, c * t, keep)
        self.fill = keep
